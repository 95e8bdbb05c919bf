"""Cancel a waiting job (nothing made, nothing charged; refused once it runs) and the queue's time estimate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import JobCancelledError, TooLateToCancelError
from bot.jobs import JobService
from bot.limits import Admission
from bot.models import GenerateRequest, JobContext, JobStatus, Progress, Spend
from bot.ports import JobStore
from bot.service import ImageService
from bot.settings import JobSettings, load_settings
from bot.store import ResultFiles, SQLiteJobStore
from bot.store_pg import PostgresJobStore
from tests.fakes.provider import FakeImages

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1")
BOB = JobContext("discord", "bob", workspace="guild1", channel="c1")
START = dt.datetime(2026, 11, 25, 22, 0, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """The cancelled status and run times are stored by both job stores."""
    return str(request.getfixturevalue("postgres_url")) if request.param == "postgresql" else None


@contextlib.asynccontextmanager
async def one_at_a_time(
    folder: Path, database: str | None, provider: FakeImages, clock: Clock, jobs: JobSettings | None = None
) -> AsyncIterator[JobService]:
    """A JobService whose admission runs one job at a time, so the next ones wait in line."""
    settings = load_settings()
    images = ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=1, images_per_minute=0, per_user_jobs=10, max_queue=50),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store: JobStore
    if database is not None:
        store = await PostgresJobStore.open(database)
    else:
        store = await SQLiteJobStore.open(folder / "jobs.sqlite3")
    service = JobService(
        images=images,
        store=store,
        files=ResultFiles(folder / "results"),
        jobs=jobs or JobSettings(),
        budgets=settings.budgets,
        clock=clock,
    )
    try:
        await service.start()
        yield service
    finally:
        await store.close()


async def _until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_cancelling_a_queued_job_makes_no_call_and_costs_nothing(tmp_path: Path, database: str | None) -> None:
    provider, clock = FakeImages(), Clock()
    provider.gate = asyncio.Event()
    async with one_at_a_time(tmp_path, database, provider, clock) as jobs:
        first = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="a fox", quality="low")))
        await _until(lambda: len(provider.calls) == 1)
        updates: list[Progress] = []

        async def seen(update: Progress) -> None:
            updates.append(update)

        second = asyncio.create_task(jobs.submit(BOB, GenerateRequest(prompt="an owl", quality="low"), seen))
        await _until(lambda: any(u.status is JobStatus.QUEUED for u in updates))
        queued = updates[-1]
        assert queued.position == 1 and queued.job_id is not None

        cancelled = await jobs.cancel(queued.job_id)

        assert cancelled.status is JobStatus.CANCELLED
        with pytest.raises(JobCancelledError) as raised:
            await second
        assert raised.value.friendly() == "Cancelled — nothing was made or charged."
        assert jobs.images.admission.queue_length == 0 and jobs.images.admission.jobs_of("discord:bob") == 0
        provider.gate.set()
        await first
        assert len(provider.calls) == 1  # the cancelled job never reached the image service
        stored = await jobs.store.get(queued.job_id)
        assert stored is not None and stored.status is JobStatus.CANCELLED and stored.cost == 0.0
        usage = {row.key: row.dollars for row in await jobs.store.usage(START - 1)}
        assert usage.get("discord:bob", 0.0) == 0.0 and usage["discord:alice"] > 0
        assert await jobs.store.spend(START - 1, context=BOB, per="user") == Spend(0, 0.0)


async def test_cancel_is_refused_once_the_image_is_being_made(tmp_path: Path, database: str | None) -> None:
    provider, clock = FakeImages(), Clock()
    provider.gate = asyncio.Event()
    async with one_at_a_time(tmp_path, database, provider, clock) as jobs:
        running = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="a fox")))
        await _until(lambda: len(provider.calls) == 1)
        (job,) = await jobs.store.history()

        with pytest.raises(TooLateToCancelError) as raised:
            await jobs.cancel(job.id)

        assert raised.value.user_message == "Too late to cancel: the image is being made."
        provider.gate.set()
        outcome = await running
        assert outcome.job.status is JobStatus.DONE and outcome.result is not None


async def test_cancelling_a_held_job_marks_it_cancelled(tmp_path: Path, database: str | None) -> None:
    provider, clock = FakeImages(), Clock()
    async with one_at_a_time(tmp_path, database, provider, clock, JobSettings(confirm_above_usd=0.001)) as jobs:
        held = await jobs.submit(ALICE, GenerateRequest(prompt="a fox", quality="high"))
        assert held.needs_confirmation

        cancelled = await jobs.cancel(held.job.id)

        assert cancelled.status is JobStatus.CANCELLED and cancelled.cost == 0.0
        assert provider.calls == []


async def test_the_queue_estimate_is_the_place_times_the_median_run(tmp_path: Path, database: str | None) -> None:
    provider, clock = FakeImages(), Clock()
    async with one_at_a_time(tmp_path, database, provider, clock) as jobs:
        for seconds in (10.0, 30.0, 20.0):  # three runs of gpt-image-2 at low quality: median 20 s
            provider.gate = asyncio.Event()
            task = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt=f"fox {seconds}", quality="low")))
            await _until(lambda: len(provider.calls) == 1)  # it is running: its start time is stored
            clock.now += seconds
            provider.gate.set()
            await task
            provider.calls.clear()
        provider.gate = asyncio.Event()
        blocker = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="a blocker", quality="high")))
        await _until(lambda: len(provider.calls) == 1)
        updates: list[Progress] = []

        async def seen(update: Progress) -> None:
            updates.append(update)

        waiting = [
            asyncio.create_task(jobs.submit(BOB, GenerateRequest(prompt=f"owl {i}", quality="low"), seen))
            for i in range(2)
        ]
        await _until(lambda: {u.position for u in updates if u.status is JobStatus.QUEUED} >= {1, 2})

        etas = {u.position: u.eta_seconds for u in updates if u.status is JobStatus.QUEUED}
        assert etas[1] == pytest.approx(20.0) and etas[2] == pytest.approx(40.0)
        provider.gate.set()
        await asyncio.gather(blocker, *waiting)


async def test_admission_cancel_takes_one_ticket_out_and_keeps_the_others_order() -> None:
    admission = Admission(max_concurrent=1, images_per_minute=0, per_user_jobs=5, max_queue=10)
    release = asyncio.Event()
    granted: list[str] = []

    async def job(user: str, key: str) -> None:
        async with admission.slot(user, 1, key=key):
            granted.append(key)
            await release.wait()

    tasks = {
        key: asyncio.create_task(job(user, key)) for user, key in [("a", "a1"), ("b", "b1"), ("c", "c1"), ("b", "b2")]
    }
    await _until(lambda: granted == ["a1"] and admission.queue_length == 3)

    assert admission.cancel("c1") is True
    with pytest.raises(JobCancelledError):
        await tasks["c1"]
    assert admission.queue_length == 2 and admission.jobs_of("c") == 0
    assert admission.cancel("a1") is False  # it has its turn: too late
    assert admission.cancel("c1") is False and admission.cancel("nobody") is False
    release.set()
    await asyncio.gather(tasks["a1"], tasks["b1"], tasks["b2"])
    assert granted == ["a1", "b1", "b2"] and admission.queue_length == 0 and admission.running == 0
