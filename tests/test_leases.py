"""Leases between live processes (two JobServices on one PostgreSQL database, each a process of its own): a job
whose owner keeps renewing its lease is never taken over, however long it runs. (A job whose owner died is taken
over: tests/test_many_processes.py, with real processes and kill -9.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bot.jobs import JobService
from bot.models import GenerateRequest, JobStatus
from bot.settings import JobSettings
from tests.fakes.provider import FakeImages
from tests.test_jobs import ALICE, Clock, Place, job_service

SHORT = JobSettings(lease_seconds=0.6, heartbeat_seconds=0.1)


@contextlib.asynccontextmanager
async def serving(place: Place, provider: FakeImages) -> AsyncIterator[JobService]:
    """A JobService renewing its leases and taking over expired ones, as ``imagebot run`` does."""
    async with job_service(place, provider, Clock(), jobs=SHORT) as jobs:
        leases = asyncio.create_task(jobs.keep_leases())
        try:
            yield jobs
        finally:
            leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leases


async def test_a_job_running_longer_than_its_lease_is_not_taken_over_while_its_owner_renews_it(
    postgres_url: str, tmp_path: Path
) -> None:
    place = Place(tmp_path, postgres_url)
    slow, other = FakeImages(), FakeImages()
    slow.gate = asyncio.Event()
    async with serving(place, slow) as owner, serving(place, other):
        running = asyncio.create_task(owner.submit(ALICE, GenerateRequest(prompt="a slow fox")))
        while not slow.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(5 * SHORT.lease_seconds)  # five leases long: only the heartbeats keep it
        slow.gate.set()
        outcome = await running
    assert outcome.job.status is JobStatus.DONE and outcome.job.owner == owner.owner
    assert (len(slow.calls), len(other.calls)) == (1, 0)  # nobody took it over, nothing was asked twice
