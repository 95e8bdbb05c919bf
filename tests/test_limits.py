"""Admission: concurrency cap, fair order across users, per-user caps, pacing, positions, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import BusyError, TooManyJobsError
from bot.limits import Admission
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


async def test_pacing_spaces_out_images_per_minute() -> None:
    now = [0.0]
    admission = Admission(
        max_concurrent=10, images_per_minute=600, per_user_jobs=10, max_queue=10, clock=lambda: now[0]
    )
    # A full bucket (a minute's worth: 600 images) is spent by one big job; the next must wait for a refill.
    async with admission.slot("a", 600):
        pass
    started = asyncio.Event()

    async def second() -> None:
        async with admission.slot("b", 1):
            started.set()

    task = asyncio.create_task(second())
    await _settle()
    assert not started.is_set()
    now[0] = 0.1  # 0.1 s later the bucket holds one image again (10 per second)
    await asyncio.sleep(0.15)  # the pump's timer fires on the real loop clock
    assert started.is_set()
    await task


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
