"""`prune`: after the retention period every stored image goes — results, and the uploads of jobs that failed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import ProviderOutageError
from bot.jobs import JobService
from bot.limits import Admission
from bot.models import EditRequest, GenerateRequest, JobContext, JobStatus, VaryRequest
from bot.ports import JobStore
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings, load_settings
from bot.store import ResultFiles, SQLiteJobStore
from bot.store_pg import PostgresJobStore
from tests.fakes.provider import FakeImages
from tests.images import jpeg, png

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1")
DAY = 86_400


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 22, 0, tzinfo=dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the SQLite store; else a fresh database on the session's real PostgreSQL server."""
    return str(request.getfixturevalue("postgres_url")) if request.param == "postgresql" else None


@contextlib.asynccontextmanager
async def job_service(
    data: Path, provider: FakeImages, clock: Clock, *, jobs: JobSettings, database_url: str | None
) -> AsyncIterator[JobService]:
    """A JobService with its files in ``data`` and its rows in SQLite there or in PostgreSQL at ``database_url``."""
    settings = load_settings()
    images = ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=4, images_per_minute=0, per_user_jobs=10, max_queue=50),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store: JobStore
    if database_url is not None:
        store = await PostgresJobStore.open(database_url)
    else:
        store = await SQLiteJobStore.open(data / "jobs.sqlite3")
    service = JobService(
        images=images,
        store=store,
        files=ResultFiles(data / "results"),
        jobs=jobs,
        budgets=BudgetSettings(),
        clock=clock,
    )
    try:
        await service.start()
        yield service
    finally:
        await store.close()


async def test_prune_deletes_the_uploads_of_failed_and_interrupted_jobs(
    tmp_path: Path, database_url: str | None
) -> None:
    provider, clock = FakeImages(), Clock()
    settings = JobSettings(retention_days=30)
    async with job_service(tmp_path, provider, clock, jobs=settings, database_url=database_url) as jobs:
        provider.fail_with = ProviderOutageError()
        with pytest.raises(ProviderOutageError):
            await jobs.submit(ALICE, EditRequest(images=(png(),), prompt="a hat"))
        provider.fail_with = None
        provider.gate = asyncio.Event()  # a vary that the process stops mid-call
        task = asyncio.create_task(jobs.submit(ALICE, VaryRequest(image=jpeg())))
        while len(provider.calls) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        failed, interrupted = sorted(await jobs.store.history(), key=lambda job: job.kind)
        assert (failed.status, interrupted.status) == (JobStatus.FAILED, JobStatus.INTERRUPTED)
        folders = [tmp_path / "results" / job.id for job in (failed, interrupted)]
        assert all(folder.is_dir() for folder in folders)  # each holds the user's upload

        clock.now += 29 * DAY
        assert await jobs.prune() == 0  # not old enough yet
        clock.now += 2 * DAY
        assert await jobs.prune() == 2
        assert not any(folder.exists() for folder in folders)
        assert await jobs.prune() == 0  # done once


async def test_prune_leaves_failed_jobs_without_files_alone(tmp_path: Path, database_url: str | None) -> None:
    provider, clock = FakeImages(), Clock()
    settings = JobSettings(retention_days=30)
    async with job_service(tmp_path, provider, clock, jobs=settings, database_url=database_url) as jobs:
        provider.fail_with = ProviderOutageError()
        with pytest.raises(ProviderOutageError):
            await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
        clock.now += 31 * DAY
        assert await jobs.prune() == 0  # a failed generation stored nothing
