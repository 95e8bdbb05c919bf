"""Admission: concurrency cap, fair order across users, per-user caps, pacing, positions, shutdown."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import BusyError, TooManyJobsError
from bot.limits import Admission, ByteBudget, PacingWindow
from bot.models import JobStatus, Progress


def _admission(**overrides: float) -> Admission:
    options = {"max_concurrent": 1, "images_per_minute": 0, "per_user_jobs": 10, "max_queue": 100}
    options.update(overrides)
    return Admission(**options)  # type: ignore[arg-type]


class Recorder:
    """A ProgressSink that keeps every update."""

    def __init__(self) -> None:
        self.updates: list[Progress] = []

    async def __call__(self, update: Progress) -> None:
        self.updates.append(update)

    @property
    def positions(self) -> list[int | None]:
        return [u.position for u in self.updates if u.status is JobStatus.QUEUED]


async def _job(
    admission: Admission, user: str, order: list[str], gate: asyncio.Event, name: str, progress=None
) -> None:
    async with admission.slot(user, 1, progress):
        order.append(name)
        await gate.wait()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_concurrency_cap_holds() -> None:
    admission = _admission(max_concurrent=2)
    gate = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(_job(admission, f"u{i}", order, gate, f"j{i}")) for i in range(5)]
    await _settle()
    assert len(order) == 2
    assert admission.running == 2
    assert admission.queue_length == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert len(order) == 5
    assert admission.running == 0


async def test_a_burst_from_one_user_does_not_starve_another() -> None:
    admission = _admission()
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1")}
    tasks = [asyncio.create_task(_job(admission, "alice", order, gates[n], n)) for n in ("a1", "a2", "a3", "a4")]
    await _settle()
    tasks.append(asyncio.create_task(_job(admission, "bob", order, gates["b1"], "b1")))
    await _settle()
    for name in ("a1", "b1", "a2", "a3", "a4"):
        gates[name].set()
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "a2", "a3", "a4"]


async def test_waiting_jobs_hear_their_place_in_line_as_it_moves() -> None:
    admission = _admission()
    gates = [asyncio.Event() for _ in range(4)]
    order: list[str] = []
    first = asyncio.create_task(_job(admission, "u0", order, gates[0], "first"))
    await _settle()
    recorders = [Recorder() for _ in range(3)]
    waiting = [
        asyncio.create_task(_job(admission, f"u{i + 1}", order, gates[i + 1], f"w{i}", recorders[i])) for i in range(3)
    ]
    await _settle()
    assert [r.positions[-1] for r in recorders] == [1, 2, 3]
    for gate in gates:
        gate.set()
        await _settle()
    await asyncio.gather(first, *waiting)
    assert recorders[2].positions == [3, 2, 1]


async def test_per_user_cap_refuses_the_extra_job_with_a_friendly_message() -> None:
    admission = _admission(per_user_jobs=2)
    gate = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(_job(admission, "alice", order, gate, f"a{i}")) for i in range(2)]
    await _settle()
    with pytest.raises(TooManyJobsError) as caught:
        async with admission.slot("alice", 1):
            pass
    assert "2 image requests in progress" in caught.value.user_message
    async with asyncio.timeout(1):  # someone else is still welcome (they wait in line)
        other = asyncio.create_task(_job(admission, "bob", order, gate, "b"))
        gate.set()
        await asyncio.gather(*tasks, other)
    assert admission.jobs_of("alice") == 0


async def test_full_queue_is_busy() -> None:
    admission = _admission(max_queue=1)
    gate = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(_job(admission, f"u{i}", order, gate, f"j{i}")) for i in range(2)]
    await _settle()
    with pytest.raises(BusyError):
        async with admission.slot("late", 1):
            pass
    gate.set()
    await asyncio.gather(*tasks)


async def test_cancelled_waiter_leaves_the_line_and_frees_its_place() -> None:
    admission = _admission()
    gate = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(_job(admission, "u0", order, gate, "first"))
    await _settle()
    quitter = asyncio.create_task(_job(admission, "u1", order, gate, "quitter"))
    patient_progress = Recorder()
    patient = asyncio.create_task(_job(admission, "u2", order, gate, "patient", patient_progress))
    await _settle()
    assert patient_progress.positions[-1] == 2
    quitter.cancel()
    await _settle()
    assert patient_progress.positions[-1] == 1
    assert admission.jobs_of("u1") == 0
    gate.set()
    await asyncio.gather(first, patient)
    assert order == ["first", "patient"]


async def test_pacing_holds_the_next_job_until_the_window_has_room() -> None:
    # Changed by issue 12: the pace used to start with a full minute's worth (a 600-image job, then the next
    # job 0.1 s later), which let the first minute overshoot the upstream's allowance. Now the allowance is
    # counted over a rolling window: after 600 images the next one waits for the window (plus margin) to pass.
    now = [0.0]
    admission = Admission(
        max_concurrent=10,
        images_per_minute=600,
        per_user_jobs=10,
        max_queue=10,
        clock=lambda: now[0],
        pacing_window=0.05,
    )
    async with admission.slot("a", 600):
        pass
    started = asyncio.Event()

    async def second() -> None:
        async with admission.slot("b", 1):
            started.set()

    task = asyncio.create_task(second())
    await _settle()
    assert not started.is_set()
    now[0] = 0.5  # still inside the window and its 1 s margin
    await asyncio.sleep(0.01)
    assert not started.is_set()
    now[0] = 1.06
    await asyncio.wait_for(task, 2)  # the pump's timer fires on the real loop clock
    assert started.is_set()


# (seconds since start, images asked) -> seconds the job waits; allowance 3 per 60 s window, 1 s margin
PACING_TABLE = [
    ([(0, 1), (0, 1), (0, 1), (0, 1)], [0, 0, 0, 61]),
    ([(0, 2), (30, 2)], [0, 31]),
    ([(0, 1), (59, 1), (60, 1), (61, 1)], [0, 0, 0, 0]),
    ([(0, 3), (100, 1)], [0, 0]),
    ([(0, 5), (1, 1)], [0, 60]),  # bigger than the allowance: goes alone, then the window must empty
]


@pytest.mark.parametrize(("asks", "waits"), PACING_TABLE)
def test_pacing_window_table(asks: list[tuple[float, int]], waits: list[float]) -> None:
    window = PacingWindow(3, 60.0, margin=1.0)
    got = []
    for at, images in asks:
        wait = window.wait(images, at)
        window.take(images, at + wait)
        got.append(wait)
    assert got == pytest.approx(waits)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.tuples(st.floats(0, 5), st.integers(1, 4)), min_size=1, max_size=60),
)
def test_pacing_never_lets_more_than_the_allowance_through_in_any_rolling_window(
    allowance: int, asks: list[tuple[float, int]]
) -> None:
    window = PacingWindow(allowance, 60.0, margin=0.0)
    now = 0.0
    grants: list[tuple[float, int]] = []
    for gap, images in asks:
        now += gap
        now += window.wait(images, now)
        window.take(images, now)
        grants.append((now, images))
    for start, _ in grants:
        in_window = [n for t, n in grants if start <= t < start + 60 - 1e-6]
        assert sum(in_window) <= allowance or len(in_window) == 1


async def test_places_in_line_are_coalesced_and_only_sent_when_changed() -> None:
    admission = _admission(max_concurrent=1, position_interval=0.2)
    gates = [asyncio.Event() for _ in range(6)]
    order: list[str] = []
    first = asyncio.create_task(_job(admission, "u0", order, gates[0], "first"))
    await _settle()
    recorders = [Recorder() for _ in range(5)]
    waiting = [
        asyncio.create_task(_job(admission, f"u{i + 1}", order, gates[i + 1], f"w{i}", recorders[i])) for i in range(5)
    ]
    await asyncio.sleep(0.3)
    assert [r.positions for r in recorders] == [[1], [2], [3], [4], [5]]
    for gate in gates[:3]:  # three turns pass within one interval: one update each, not three
        gate.set()
        await _settle()
    await asyncio.sleep(0.3)
    assert recorders[4].positions == [5, 2]
    assert recorders[3].positions == [4, 1]
    for gate in gates:
        gate.set()
    await asyncio.gather(first, *waiting)


async def test_the_byte_budget_bounds_what_results_hold_at_once() -> None:
    budget = ByteBudget(10)
    peak = 0
    done: list[int] = []

    async def result(size: int) -> None:
        nonlocal peak
        async with budget.hold(size):
            peak = max(peak, budget.held)
            await asyncio.sleep(0.01)
            done.append(size)

    await asyncio.gather(*(result(size) for size in (4, 4, 4, 4, 25, 1)))
    assert peak <= 10
    assert sorted(done) == [1, 4, 4, 4, 4, 25]  # bigger than the budget: went alone, not refused
    assert budget.held == 0


async def test_a_cancelled_wait_for_the_byte_budget_gives_nothing_away() -> None:
    budget = ByteBudget(10)
    release = asyncio.Event()

    async def hog() -> None:
        async with budget.hold(8):
            await release.wait()

    holder = asyncio.create_task(hog())
    await _settle()
    waiter = asyncio.create_task(budget.hold(5).__aenter__())
    await _settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert budget.held == 0
    async with budget.hold(10):
        assert budget.held == 10


async def test_a_grant_does_not_walk_the_whole_line() -> None:
    """With places coalesced, admitting a job costs about the same with 4000 jobs waiting as with 400.

    The cost is counted, not timed: the lines of bot/limits.py executed per job (a trace hook), which does not
    depend on the machine's load. Walking the line at every grant would be ~10x per job at 4000.
    """
    import sys

    import bot.limits

    module_file = bot.limits.__file__

    async def lines_per_job(queued: int) -> float:
        admission = _admission(max_concurrent=1, max_queue=queued, position_interval=60)
        executed = 0

        def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
            nonlocal executed
            if frame.f_code.co_filename != module_file:
                return None
            if event == "line":
                executed += 1
            return tracer

        async def job(i: int) -> None:
            async with admission.slot(f"u{i % (queued // 4)}", 1, Recorder()):
                await asyncio.sleep(0)

        sys.settrace(tracer)
        try:
            await asyncio.gather(*(job(i) for i in range(queued)))
        finally:
            sys.settrace(None)
        return executed / queued

    small, large = await lines_per_job(400), await lines_per_job(4000)
    assert small > 0
    assert large < small * 1.5, (small, large)


async def test_throttle_pauses_new_calls() -> None:
    now = [0.0]
    admission = Admission(max_concurrent=10, images_per_minute=0, per_user_jobs=10, max_queue=10, clock=lambda: now[0])
    admission.throttle(0.05)
    started = asyncio.Event()

    async def job() -> None:
        async with admission.slot("a", 1):
            started.set()

    task = asyncio.create_task(job())
    await _settle()
    assert not started.is_set()
    now[0] = 0.06
    await asyncio.wait_for(task, 1)
    assert started.is_set()


async def test_close_fails_waiting_jobs_and_refuses_new_ones() -> None:
    admission = _admission()
    gate = asyncio.Event()
    order: list[str] = []
    running = asyncio.create_task(_job(admission, "u0", order, gate, "running"))
    await _settle()
    waiting = asyncio.create_task(_job(admission, "u1", order, gate, "waiting"))
    await _settle()
    admission.close()
    with pytest.raises(BusyError, match="restarting"):
        await waiting
    with pytest.raises(BusyError):
        async with admission.slot("u2", 1):
            pass
    gate.set()
    await running
    assert order == ["running"]
