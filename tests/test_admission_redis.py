"""Admission shared through a real Redis: the scripts' properties on a simulated clock (pace, fairness), then
two admissions standing for two processes (caps, order, places in line, the shared pause), a killed process and
a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.admission_redis import (
    AdmissionRules,
    AdmissionScripts,
    QueueUnavailableError,
    RedisAdmission,
    connect,
    redis_location,
)
from bot.errors import BusyError, TooManyJobsError
from bot.models import JobStatus, Progress
from tests.redis_server import PASSWORD, RedisServer
from tests.test_cli import CLI, assert_clean
from tests.test_web import _harness

WINDOW = 60.0


def _admission(url: str, **overrides: Any) -> RedisAdmission:
    options: dict[str, Any] = {
        "max_concurrent": 1,
        "images_per_minute": 0,
        "per_user_jobs": 10,
        "max_queue": 100,
        "lease": 3.0,
    }
    options.update(overrides)
    return RedisAdmission(connect(url), **options)


@contextlib.asynccontextmanager
async def _processes(url: str, count: int = 2, **overrides: Any) -> AsyncIterator[list[RedisAdmission]]:
    """``count`` admissions on one Redis, as ``count`` processes would hold them."""
    admissions = [_admission(url, **overrides) for _ in range(count)]
    try:
        yield admissions
    finally:
        for admission in admissions:
            await admission.aclose()


class Recorder:
    def __init__(self) -> None:
        self.updates: list[Progress] = []

    async def __call__(self, update: Progress) -> None:
        self.updates.append(update)

    @property
    def positions(self) -> list[int | None]:
        return [u.position for u in self.updates if u.status is JobStatus.QUEUED]


async def _job(
    admission: RedisAdmission,
    user: str,
    order: list[str],
    name: str,
    gate: asyncio.Event | None = None,
    progress: Recorder | None = None,
) -> None:
    async with admission.slot(user, 1, progress):
        order.append(name)
        if gate is not None:
            await gate.wait()


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        await asyncio.sleep(0.01)


# --- the scripts on a simulated clock ---------------------------------------------------------------------


class Simulation:
    """Drives the real scripts with ``now`` given: zero-length jobs, each given back as soon as it is granted."""

    def __init__(self, scripts: AdmissionScripts):
        self.scripts = scripts
        self.waiting: dict[str, tuple[str, int]] = {}  # ticket -> (user, images)
        self.grants: list[tuple[float, str, int, str]] = []  # (when, user, images, ticket)
        self.wake = -1.0

    async def arrive(self, now: float, ticket: str, user: str, images: int) -> str:
        answer = await self.scripts("enqueue", ticket, user, images, now=now)
        if answer.status == "ok":
            self.waiting[ticket] = (user, images)
        await self.settle(now)
        return answer.status

    async def settle(self, now: float) -> None:
        """Collect every grant at ``now`` (giving each back at once, which may grant the next)."""
        while True:
            answer = await self.scripts("heartbeat", *self.waiting, now=now)
            self.wake = answer.wake
            states = answer.extra[0::2]
            granted = [t for t, state in zip(list(self.waiting), states, strict=True) if state == "r"]
            if not granted:
                return
            for ticket in granted:
                user, images = self.waiting.pop(ticket)
                self.grants.append((now, user, images, ticket))
                answer = await self.scripts("release", ticket, now=now)
                self.wake = answer.wake


def _run(work: Any) -> Any:
    return asyncio.run(work)


async def _simulate_pace(url: str, allowance: int, asks: list[tuple[float, int]]) -> list[tuple[float, int, int]]:
    """(when, images, index of the ask) of each grant."""
    client = connect(url)
    rules = AdmissionRules(1000, allowance, 1000, 10_000, WINDOW, 0.0, lease=1e9, prefix=f"t{uuid.uuid4().hex}:")
    sim = Simulation(AdmissionScripts(client, rules, "p1"))
    now = 0.0
    try:
        for index, (gap, images) in enumerate(asks):
            due = now + gap
            while sim.waiting and sim.wake >= 0 and now + sim.wake < due:  # let waiting jobs go in between
                now += sim.wake
                await sim.settle(now)
            now = due
            await sim.arrive(now, f"t{index}", f"u{index % 3}", images)
        while sim.waiting:
            assert sim.wake >= 0, "jobs wait with no time set to try again"
            now += sim.wake
            await sim.settle(now)
    finally:
        await client.aclose()
    return [(when, images, int(ticket[1:])) for when, _, images, ticket in sim.grants]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.tuples(st.floats(0, 30), st.integers(1, 4)), min_size=1, max_size=40),
)
def test_no_rolling_window_ever_holds_more_than_the_allowance(
    redis_server: RedisServer, allowance: int, asks: list[tuple[float, int]]
) -> None:
    grants = _run(_simulate_pace(redis_server.url(), allowance, asks))
    assert len(grants) == len(asks)
    for start, _, _ in grants:
        in_window = [n for t, n, _ in grants if start <= t < start + WINDOW - 1e-6]
        assert sum(in_window) <= allowance or len(in_window) == 1
    arrivals = list(itertools.accumulate(gap for gap, _ in asks))
    for when, _, index in grants:  # and no job waited past the moment the window had room again
        assert abs(when - arrivals[index]) < 1e-6 or any(abs(t + WINDOW - when) < 1e-6 for t, _, _ in grants)


async def _simulate_backlog(url: str, users: list[str]) -> list[str]:
    client = connect(url)
    rules = AdmissionRules(1, 0, 1000, 10_000, lease=1e9, prefix=f"t{uuid.uuid4().hex}:")
    sim = Simulation(AdmissionScripts(client, rules, "p1"))
    try:
        for index, user in enumerate(users):
            await sim.scripts("enqueue", f"t{index}", user, 1, now=0.0)
            sim.waiting[f"t{index}"] = (user, 1)
        await sim.settle(0.0)
    finally:
        await client.aclose()
    return [user for _, user, _, _ in sim.grants]


def _round_robin(users: list[str]) -> list[str]:
    """The order a fair queue serves a backlog: by first arrival, one job per user per round."""
    queues: dict[str, int] = {}
    for user in users:
        queues[user] = queues.get(user, 0) + 1
    order: list[str] = []
    while queues:
        for user in list(queues):
            order.append(user)
            queues[user] -= 1
            if not queues[user]:
                del queues[user]
    return order


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=40))
def test_a_backlog_is_served_round_robin_by_first_arrival(redis_server: RedisServer, users: list[str]) -> None:
    assert _run(_simulate_backlog(redis_server.url(), users)) == _round_robin(users)


# --- two processes on one Redis ---------------------------------------------------------------------------


async def test_the_concurrency_cap_holds_across_processes(redis_url: str) -> None:
    async with _processes(redis_url, max_concurrent=2) as (a, b):
        gate = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_job(side, f"u{i}", order, f"j{i}", gate)) for i, side in enumerate([a, b] * 3)]
        await _until(lambda: len(order) == 2)
        await asyncio.sleep(0.2)
        assert len(order) == 2 and a.running + b.running == 2
        await _until(lambda: a.queue_length == b.queue_length == 4)  # both see the whole line (by the heartbeat)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert sorted(order) == [f"j{i}" for i in range(6)]
        assert a.running == b.running == 0


async def test_users_take_turns_across_processes(redis_url: str) -> None:
    async with _processes(redis_url) as (a, b):
        gate = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_job(a, "alice", order, "alice1", gate))
        await _until(lambda: order == ["alice1"])
        tasks = [asyncio.create_task(_job(a, "alice", order, f"alice{i}")) for i in (2, 3)]
        await _until(lambda: a.queue_length == 2)
        for user, line in (("bob", 3), ("carol", 4)):  # one after the other: simultaneous arrivals have no order
            tasks.append(asyncio.create_task(_job(b, user, order, f"{user}1")))
            await _until(lambda line=line: b.queue_length == line)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *tasks), 10)
        assert order == ["alice1", "bob1", "carol1", "alice2", "alice3"]


async def test_per_user_caps_count_every_process(redis_url: str) -> None:
    async with _processes(redis_url, per_user_jobs=2) as (a, b):
        gate = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_job(side, "alice", order, name, gate)) for side, name in ((a, "1"), (b, "2"))]
        await _until(lambda: len(order) == 1 and a.jobs_of("alice") == b.jobs_of("alice") == 1)  # one runs, one waits
        with pytest.raises(TooManyJobsError) as refused:
            async with a.slot("alice", 1):
                pass
        assert "maximum number of images in progress" in refused.value.user_message
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        async with a.slot("alice", 1):  # both finished: room again
            pass


async def test_a_full_queue_is_busy_in_every_process(redis_url: str) -> None:
    async with _processes(redis_url, max_queue=1) as (a, b):
        gate = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_job(a, "u1", order, "running", gate))]
        await _until(lambda: order == ["running"])
        tasks.append(asyncio.create_task(_job(a, "u2", order, "waiting")))
        await _until(lambda: a.queue_length == 1)
        with pytest.raises(BusyError):
            async with b.slot("u3", 1):
                pass
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_places_in_line_span_processes(redis_url: str) -> None:
    async with _processes(redis_url, position_interval=0.0) as (a, b):
        gate = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_job(a, "u0", order, "first", gate))
        await _until(lambda: order == ["first"])
        recorders = [Recorder() for _ in range(3)]
        waiting = []
        for index, side in enumerate((a, b, a)):
            waiting.append(asyncio.create_task(_job(side, f"w{index}", order, f"w{index}", progress=recorders[index])))
            await _until(lambda i=index: bool(recorders[i].positions))
        assert [r.positions[0] for r in recorders] == [1, 2, 3]
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), 10)
        assert order == ["first", "w0", "w1", "w2"]


async def test_a_429_in_one_process_pauses_the_others(redis_url: str) -> None:
    async with _processes(redis_url, max_concurrent=4) as (a, b):
        async with b.slot("warm-up", 1):  # b has talked to Redis once
            pass
        a.throttle(0.8)
        await _until(lambda: not a._tasks)  # the pause reached Redis
        started = time.monotonic()
        async with b.slot("bob", 1):
            waited = time.monotonic() - started
        assert 0.6 <= waited < 3.0


_HOLDER = """
import asyncio, sys
from bot.admission_redis import RedisAdmission, connect

async def main():
    admission = RedisAdmission(connect(sys.argv[1]), max_concurrent=1, images_per_minute=0, per_user_jobs=5,
                               max_queue=10, lease=1.5)
    async with admission.slot("holder", 1):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_process_gives_back_its_turn_once_its_lease_ends(redis_url: str) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, redis_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 20) == b"held\n"
        async with _processes(redis_url, count=1) as (other,):
            waiting = asyncio.create_task(_job(other, "bob", [], "bob"))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # the holder is alive and heartbeating: its turn stays held
            holder.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(waiting, 10)
            assert time.monotonic() - killed < 1.5 + 1.5  # the lease, plus a heartbeat of ours
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


async def test_a_redis_outage_is_a_friendly_error_and_passes(redis_url: str, redis_server: RedisServer) -> None:
    async with _processes(redis_url, count=1) as (admission,):
        async with admission.slot("alice", 1):
            pass
        redis_server.stop()
        try:
            with pytest.raises(QueueUnavailableError) as failed:
                async with admission.slot("alice", 1):
                    pass
            assert failed.value.user_message.startswith("I can't reach my job queue right now")
            assert "redis" not in failed.value.friendly().lower()  # no technology, no address, no password
        finally:
            redis_server.start()
        async with admission.slot("alice", 1):  # the same admission works again
            pass


async def test_a_job_waiting_while_redis_restarts_empty_keeps_its_turn(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with _processes(redis_url, count=1, lease=2.0) as (admission,):
        gate = asyncio.Event()
        order: list[str] = []
        holder = asyncio.create_task(_job(admission, "alice", order, "running", gate))
        await _until(lambda: order == ["running"])
        waiting = asyncio.create_task(_job(admission, "bob", order, "waiting"))
        await _until(lambda: admission.queue_length == 1)
        redis_server.restart()  # everything Redis knew is gone, including the turn "running" holds
        await asyncio.wait_for(waiting, 10)  # the heartbeat finds bob's ticket missing and queues it again
        gate.set()
        await asyncio.wait_for(holder, 10)  # giving back a turn Redis no longer knows is harmless
        assert order == ["running", "waiting"]
        async with admission.slot("carol", 1):  # and the cap counts right afterwards
            assert admission.running == 1


def test_the_location_never_shows_the_password(redis_server: RedisServer) -> None:
    url = redis_server.url(db=3)
    assert redis_location(url) == f"127.0.0.1:{redis_server.port}/3"
    assert redis_location("redis://localhost") == "localhost:6379/0"
    assert redis_location("unix:///run/redis.sock?db=2") == "/run/redis.sock"


# --- imagebot check, and a bot that loses Redis while serving --------------------------------------------


async def test_check_says_where_redis_is_without_its_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    run = await CLI(capsys)("check", cwd=tmp_path, env={"IMAGEBOT_REDIS_URL": redis_url})
    assert run.code == 0, run.stderr
    assert f"redis: 127.0.0.1:{redis_server.port}/0 reachable\n" in run.stdout
    assert_clean(run, PASSWORD)


async def test_check_with_an_unreachable_redis_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, unused_tcp_port: int
) -> None:
    url = f"redis://:Sup3r-secret-rd@127.0.0.1:{unused_tcp_port}/2"
    run = await CLI(capsys)("check", cwd=tmp_path, env={"IMAGEBOT_REDIS_URL": url})
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        f"imagebot: IMAGEBOT_REDIS_URL: cannot connect to 127.0.0.1:{unused_tcp_port}/2 "
        "(connection refused: is Redis running there?)."
    ]
    assert_clean(run, "Sup3r-secret-rd")


async def test_check_with_a_wrong_redis_password_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url(password="not-the-password-0")
    run = await CLI(capsys)("check", cwd=tmp_path, env={"IMAGEBOT_REDIS_URL": url})
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [
        f"imagebot: IMAGEBOT_REDIS_URL: Redis at 127.0.0.1:{redis_server.port}/0 refused the password."
    ]
    assert_clean(run, "not-the-password-0")


async def test_a_bot_that_loses_redis_answers_kindly_and_recovers(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    async for bot in _harness(tmp_path, redis_url=redis_url):
        assert isinstance(bot.core.admission, RedisAdmission)
        assert (await bot.imagine("a fox"))["status"] == "done"

        redis_server.stop()
        try:
            refused = await bot.post("/api/imagine", {"text": "a cat"}, status=503)
        finally:
            redis_server.start()
        message = refused["error"]["message"]
        assert message.startswith("I can't reach my job queue right now, so your request was not started.")
        assert "Traceback" not in message and PASSWORD not in json.dumps(refused)

        assert (await bot.imagine("a dog"))["status"] == "done"  # Redis is back (empty): the bot works again
