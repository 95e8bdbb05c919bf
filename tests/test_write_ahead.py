"""Write-ahead results and a true ledger: a paid answer survives any crash, and only paid jobs cost money.

In-process tests build the crash states exactly (a committed spool with an unfinished job row, a half-written
spool, a job that never left the queue) from the real provider, store and fake Images API; the subprocess
tests kill ``imagebot run`` with SIGKILL at set moments after the fake API's 200 and restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot.jobs import JobService
from bot.limits import Admission
from bot.models import GenerateRequest, Job, JobContext, JobStatus, ProviderGenerate, Spend, WriteAhead
from bot.ports import JobStore
from bot.providers.openai import OpenAIImages, spool_part
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings, OpenAISettings, load_settings
from bot.store import ResultFiles, SQLiteJobStore
from bot.store_pg import PostgresJobStore
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.images import decode
from tests.test_run import run_env, running_bot

ALICE = JobContext("slack", "alice", workspace="T1", channel="C1")
ONE_CALL = (50 * 5 + 1056 * 30) / 1_000_000  # the fake's usage body priced for gpt-image-2: $0.03193
WHOLE_ANSWER_MS = 50  # by then the bot has read and spooled the whole answer, even on a loaded 2-core machine
LOW_ESTIMATE = 0.00588  # gpt-image-2, 1024x1024, low quality
MONTH_START = 0.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that picks the job store of ``imagebot run``: SQLite (default) or a real PostgreSQL."""
    if request.param == "postgresql":
        # Another process may be alive on PostgreSQL: a restart takes a dead one's jobs when their lease runs out.
        return {
            "IMAGEBOT_DATABASE_URL": str(request.getfixturevalue("postgres_url")),
            "IMAGEBOT_JOBS__LEASE_SECONDS": "2",
            "IMAGEBOT_JOBS__HEARTBEAT_SECONDS": "0.5",
        }
    return {}


async def open_store(data: Path, database: dict[str, str]) -> JobStore:
    """The job store ``database`` names (PostgreSQL by its URL), else SQLite in ``data``."""
    url = database.get("IMAGEBOT_DATABASE_URL")
    if url is not None:
        return await PostgresJobStore.open(url)
    return await SQLiteJobStore.open(data / "jobs.sqlite3")


@contextlib.asynccontextmanager
async def core(
    data: Path,
    fake: FakeOpenAI,
    http: aiohttp.ClientSession,
    database: dict[str, str],
    *,
    dollars_per_month: float = 0.0,
) -> AsyncIterator[JobService]:
    """The real core (OpenAI provider, job store, result files) on ``data``: opening it again is a restart."""
    settings = load_settings()
    provider = OpenAIImages(http, base_url=fake.base_url, api_key=DEFAULT_KEY, settings=OpenAISettings())
    images = ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=1, images_per_minute=0, per_user_jobs=10, max_queue=10),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store = await open_store(data, database)
    jobs = JobService(
        images=images,
        store=store,
        files=ResultFiles(data / "results"),
        jobs=JobSettings(),
        budgets=BudgetSettings(dollars_per_month=dollars_per_month),
    )
    try:
        await jobs.start()
        yield jobs
    finally:
        await store.close()


def running_job(job_id: str, **options: object) -> Job:
    now = time.time()
    return Job(
        id=job_id,
        kind="generate",
        context=ALICE,
        request={"prompt": "a lighthouse at dusk", "n": 1, "size": "1024x1024", "quality": None, **options},
        request_hash=job_id,
        status=JobStatus.RUNNING,
        created_at=now,
        updated_at=now,
        images_requested=1,
        estimated_cost=0.2,
        model="gpt-image-2",
    )


async def ignore(cost: float | None) -> None:
    """The dying process never got to record the cost."""


async def leave_spooled_answer(
    data: Path, fake: FakeOpenAI, http: aiohttp.ClientSession, database: dict[str, str], *, stream: bool
) -> str:
    """What a process killed right after the upstream's 200 leaves: a running job and its committed spool."""
    job = running_job("spooled01")
    store = await open_store(data, database)
    try:
        await store.submit(job, dedupe_since=0)
    finally:
        await store.close()
    provider = OpenAIImages(http, base_url=fake.base_url, api_key=DEFAULT_KEY, settings=OpenAISettings())
    call = ProviderGenerate(
        model="gpt-image-2",
        prompt="a lighthouse at dusk",
        n=1,
        size="1024x1024",
        quality=None,
        partial_images=1 if stream else 0,
        spool=WriteAhead(ResultFiles(data / "results").spool(job.id), paid=ignore),
    )
    await provider.generate(call)  # the answer reached the spool; the process "dies" before anything else
    return job.id


@pytest.mark.parametrize("stream", [False, True], ids=["json", "event-stream"])
async def test_a_spooled_answer_is_finished_charged_once_and_delivered_after_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession, database: dict[str, str], stream: bool
) -> None:
    async with FakeOpenAI(photo_like=True) as fake:
        job_id = await leave_spooled_answer(tmp_path, fake, http, database, stream=stream)
        async with core(tmp_path, fake, http, database) as jobs:
            job = await jobs.store.get(job_id)
            assert job is not None and job.status is JobStatus.DONE
            assert job.paid_at is not None and job.actual_cost == pytest.approx(ONE_CALL)
            ((pending, result),) = await jobs.undelivered("slack")  # the adapter posts it at start-up
            assert pending.id == job_id and decode(result.images[0].data).size == (1024, 1024)
            assert not jobs.files.spool(job_id).exists()
            (row,) = await jobs.store.usage(MONTH_START)
            assert (row.jobs, row.images, row.dollars) == (1, 1, pytest.approx(ONE_CALL))
        assert len(fake.image_requests) == 1  # finished from the spool: nothing was asked (or paid) twice
        async with core(tmp_path, fake, http, database) as again:  # a second restart changes nothing
            (row,) = await again.store.usage(MONTH_START)
            assert row.dollars == pytest.approx(ONE_CALL)


async def test_a_job_cut_off_while_its_answer_arrived_is_interrupted_and_charged_its_estimate(
    tmp_path: Path, http: aiohttp.ClientSession, database: dict[str, str]
) -> None:
    """The 200 came (the generation is billed) but the body never completed: the images are lost, the
    charge is not; the ledger says so at the estimate."""
    async with FakeOpenAI() as fake:
        async with core(tmp_path, fake, http, database) as jobs:
            job = running_job("halfway01")
            await jobs.store.submit(job, dedupe_since=0)
            await jobs._write_ahead(job).answered()  # what the provider does when the 2xx status arrives
            part = spool_part(jobs.files.spool(job.id))
            part.parent.mkdir(parents=True)
            part.write_bytes(b'{"created": 1, "data": [{"b64_json": "iVBORw0KGgo')  # the body stops here
        async with core(tmp_path, fake, http, database) as restarted:
            cut = await restarted.store.get(job.id)
            assert cut is not None and cut.status is JobStatus.INTERRUPTED
            assert cut.paid_at is not None and cut.actual_cost == job.estimated_cost
            (row,) = await restarted.store.usage(MONTH_START)
            assert (row.jobs, row.dollars) == (1, pytest.approx(0.2))
            assert [j.id for j in await restarted.cut_off("slack")] == [job.id]  # the adapter tells the user
            assert not part.exists()
        assert fake.image_requests == []


async def test_jobs_cut_off_before_any_answer_cost_nothing_in_usage_or_budgets(
    tmp_path: Path, http: aiohttp.ClientSession, database: dict[str, str]
) -> None:
    # room for the two jobs' estimates ($0.00588 each at low quality) and a little more, not for a third
    budget = 3 * LOW_ESTIMATE - 0.001
    async with FakeOpenAI(latency=30.0) as fake:
        async with core(tmp_path, fake, http, database, dollars_per_month=budget) as jobs:
            running = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="slow one", quality="low")))
            queued = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="second", quality="low")))
            while len(await jobs.store.history()) < 2 or not fake.image_requests:
                await asyncio.sleep(0.01)
            # while they wait and run, their estimates are reserved against the budget
            assert (await jobs.store.spend(MONTH_START)).dollars == pytest.approx(2 * LOW_ESTIMATE)
            for task in (running, queued):  # the process stops (graceful shutdown cancels the jobs)
                task.cancel()
            await asyncio.gather(running, queued, return_exceptions=True)
        async with core(tmp_path, fake, http, database, dollars_per_month=budget) as restarted:
            statuses = {job.status for job in await restarted.store.history()}
            assert statuses == {JobStatus.INTERRUPTED}
            assert await restarted.store.usage(MONTH_START) == []
            assert await restarted.store.spend(MONTH_START) == Spend(0, 0.0)
            fake.latency = 0.0
            # had the interrupted jobs been charged, this one would be over the budget
            outcome = await restarted.submit(ALICE, GenerateRequest(prompt="after the restart", quality="low"))
            assert outcome.job.status is JobStatus.DONE
            (row,) = await restarted.store.usage(MONTH_START)
            assert (row.jobs, row.dollars) == (1, pytest.approx(ONE_CALL))


async def test_an_answer_without_usage_is_charged_at_the_estimate_for_what_was_asked(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with FakeOpenAI() as fake:
        fake.usage = None
        async with core(tmp_path, fake, http, {}) as jobs:
            low = await jobs.submit(ALICE, GenerateRequest(prompt="cheap", quality="LOW", size="1024x1024"))
            high = await jobs.submit(ALICE, GenerateRequest(prompt="dear", quality="high", size="1024x1024"))
        assert low.job.estimated_cost is not None and high.job.estimated_cost is not None
        assert low.job.actual_cost == pytest.approx(low.job.estimated_cost)  # "LOW" prices as low, not worst case
        assert high.job.actual_cost == pytest.approx(high.job.estimated_cost)
        assert low.job.estimated_cost < high.job.estimated_cost


# --- kill -9 of the real process ------------------------------------------------------------------------------


async def job_rows(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every job row, read straight from the database the bot in ``env`` uses."""
    url = env.get("IMAGEBOT_DATABASE_URL")
    if url is not None:
        connection = await asyncpg.connect(url)
        try:
            return [dict(row) for row in await connection.fetch("SELECT * FROM jobs")]
        finally:
            await connection.close()
    with contextlib.closing(sqlite3.connect(Path(env["IMAGEBOT_DATA_DIR"]) / "jobs.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM jobs")]


async def settled_row(env: dict[str, str]) -> dict[str, Any]:
    """The one job row, once a process has taken it over (at once on SQLite, after its lease on PostgreSQL)."""
    async with asyncio.timeout(20):
        while True:
            (row,) = await job_rows(env)
            if row["status"] not in {"queued", "running"}:
                return row
            await asyncio.sleep(0.05)


def playground(env: dict[str, str]) -> aiohttp.ClientSession:
    """A browser on the playground: one cookie session, the header the page sends."""
    base = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
    jar = aiohttp.CookieJar(unsafe=True)
    return aiohttp.ClientSession(base_url=base, cookie_jar=jar, headers={"X-Imagebot": "1"})


async def kill_during_imagine(
    browser: aiohttp.ClientSession, process: asyncio.subprocess.Process, moment: Awaitable[object]
) -> None:
    """Ask for an image, SIGKILL the bot once ``moment`` has come, and let the dead request go."""
    async with browser.get("/") as response:  # the page: its session
        assert response.status == 200
    posted = asyncio.create_task(browser.post("/api/imagine", json={"text": "a lighthouse"}))
    await asyncio.wait_for(moment, 30)
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()
    with contextlib.suppress(aiohttp.ClientError):
        (await posted).release()


async def usage_total(env: dict[str, str], cwd: Path) -> str:
    """The dollars on the last line of ``imagebot usage``."""
    usage = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bot", "usage"), env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await usage.communicate()
    total = out.decode().strip().splitlines()[-1].split()
    assert total[0] == "total", out.decode()
    return total[-1]


async def after(event: asyncio.Event, delay: float) -> None:
    await event.wait()
    await asyncio.sleep(delay)


@pytest.mark.parametrize("delay_ms", [0, 5, 20, 50, 100])
async def test_kill_after_the_upstream_answered_loses_no_paid_image(
    tmp_path: Path, delay_ms: int, database: dict[str, str]
) -> None:
    """SIGKILL ``imagebot run`` ``delay_ms`` after the fake API sent its last byte, restart, look again."""
    async with FakeOpenAI(photo_like=True) as fake:
        env = run_env(tmp_path, OPENAI_API_KEY=DEFAULT_KEY, OPENAI_BASE_URL=fake.base_url, **database)
        async with playground(env) as browser:
            async with running_bot(env, tmp_path) as process:
                await kill_during_imagine(browser, process, after(fake.answered_event, delay_ms / 1000))
            assert len(fake.image_requests) == 1
            async with running_bot(env, tmp_path):
                row = await settled_row(env)
                async with browser.get("/api/history") as response:
                    history = (await response.json())["jobs"]
                if row["status"] == "interrupted":
                    # killed before the answer was all in: the images are lost; if the bot had seen the 200, the
                    # generation was billed and the ledger charges the estimate. Reading a 3.2 MB answer takes the
                    # bot 10-30 ms on this 2-core machine (more under load), so only right after the fake's last
                    # byte may it still be arriving.
                    assert delay_ms < WHOLE_ANSWER_MS, f"a complete answer was lost {delay_ms} ms after the 200"
                    seen = row["paid_at"] is not None
                    assert row["actual_cost"] == (row["estimated_cost"] if seen else None)
                    assert [entry["status"] for entry in history] == ["interrupted"]  # the page tells them
                    assert not any(job.get("images") for job in history)
                    charged = row["estimated_cost"] if seen else 0.0
                else:
                    assert row["status"] in {"done", "delivered"}
                    assert row["actual_cost"] == pytest.approx(ONE_CALL)
                    (shown,) = [job for job in history if job.get("images")]
                    async with browser.get(shown["images"][0]["url"]) as response:
                        assert decode(await response.read()).size == (1024, 1024)
                    charged = ONE_CALL
            assert len(fake.image_requests) == 1, "the restart asked (and paid) again"
    assert await usage_total(env, tmp_path) == f"${charged:.4f}"  # counted once


async def test_kill_while_the_upstream_is_still_working_costs_nothing(tmp_path: Path, database: dict[str, str]) -> None:
    async with FakeOpenAI(latency=30.0) as fake:
        env = run_env(tmp_path, OPENAI_API_KEY=DEFAULT_KEY, OPENAI_BASE_URL=fake.base_url, **database)

        async def upstream_called() -> None:
            while not fake.image_requests:
                await asyncio.sleep(0.01)

        async with playground(env) as browser:
            async with running_bot(env, tmp_path) as process:
                await kill_during_imagine(browser, process, upstream_called())
            async with running_bot(env, tmp_path):
                row = await settled_row(env)
                assert row["status"] == "interrupted" and row["paid_at"] is None
    assert await usage_total(env, tmp_path) == "$0.0000"
