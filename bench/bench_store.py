"""10,000 jobs recorded and delivered through the job store (SQLite, WAL; or PostgreSQL) with an instant provider.

Prints jobs per second end to end and the store's work per job (SQL executed on the store's thread, and
result files written), measured inside the worker threads. The provider answers at once with a tiny PNG,
so what is left is the core's own overhead.

    python bench/bench_store.py [--jobs 10000] [--concurrency 50] [--postgres]

``--postgres`` starts a throw-away PostgreSQL server (Debian's binaries, as the tests do) and runs the same
jobs through ``PostgresJobStore``; its "database calls" time is the awaited round trips (no worker thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.jobs import JobService  # noqa: E402
from bot.limits import Admission  # noqa: E402
from bot.models import GenerateRequest, JobContext  # noqa: E402
from bot.service import ImageService  # noqa: E402
from bot.settings import BudgetSettings, JobSettings, load_settings  # noqa: E402
from bot.store import ResultFiles, SQLiteJobStore  # noqa: E402
from bot.store_pg import PostgresJobStore  # noqa: E402
from tests.fakes.provider import FakeImages  # noqa: E402
from tests.images import png  # noqa: E402


class Timed:
    """Wraps an object; accumulates the wall time spent in its coroutine methods."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


class Busy:
    """Time the store's worker thread actually spends executing SQL (not waiting in its queue)."""

    seconds = 0.0

    @classmethod
    def install(cls, store: SQLiteJobStore) -> None:
        run = store._run

        async def timed_run(fn: Any, *args: Any) -> Any:
            def measured(*inner: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*inner)
                finally:
                    cls.seconds += time.perf_counter() - started

            return await run(measured, *args)

        store._run = timed_run  # type: ignore[method-assign]


class TimedFiles(ResultFiles):
    seconds = 0.0

    def write(self, job_id: str, files: dict[str, bytes]) -> None:
        started = time.perf_counter()
        super().write(job_id, files)
        TimedFiles.seconds += time.perf_counter() - started


async def main(jobs: int, concurrency: int, budgets: bool, database_url: str | None = None) -> None:
    settings = load_settings()
    provider = FakeImages()
    provider.answer = png(8, 8)
    with tempfile.TemporaryDirectory() as folder:
        store: SQLiteJobStore | PostgresJobStore
        if database_url is None:
            store = await SQLiteJobStore.open(Path(folder) / "jobs.sqlite3")
            Busy.install(store)
        else:
            store = await PostgresJobStore.open(database_url, max_connections=concurrency)
        timed_store = Timed(store)
        service = JobService(
            images=ImageService(
                provider=provider,
                catalog=settings.catalog(),
                admission=Admission(
                    max_concurrent=concurrency, images_per_minute=0, per_user_jobs=jobs, max_queue=jobs
                ),
                imaging_settings=settings.imaging,
                variation_prompt=settings.variation_prompt,
            ),
            store=timed_store,  # type: ignore[arg-type]
            files=TimedFiles(Path(folder) / "results"),
            jobs=JobSettings(),
            budgets=BudgetSettings(images_per_user_per_day=10**9, dollars_per_month=10**9)
            if budgets
            else BudgetSettings(),
        )
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(jobs):
            queue.put_nowait(index)

        async def worker(number: int) -> None:
            context = JobContext("bench", f"user{number}", workspace="w1", channel="c1")
            while not queue.empty():
                index = queue.get_nowait()
                outcome = await service.submit(context, GenerateRequest(prompt=f"job {index}"))
                await service.mark_delivered(outcome.job.id)

        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        size = await _database_size(database_url) if database_url else (Path(folder) / "jobs.sqlite3").stat().st_size
        await store.close()
    store_work = Busy.seconds + TimedFiles.seconds
    checks = "budget checks (user/day + all/month), " if budgets else ""
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    engine = "PostgreSQL (asyncpg, loopback)" if database_url else "SQLite (WAL)"
    print(f"{jobs} jobs ({concurrency} at a time) on {engine}, each: {checks}insert, running, done + file, delivered")
    print(f"wall {wall:.2f}s -> {jobs / wall:.0f} jobs/s; process CPU {cpu:.2f}s ({cpu / jobs * 1000:.2f} ms/job)")
    if database_url:
        store_work = timed_store.seconds / concurrency + TimedFiles.seconds
        Busy.seconds = timed_store.seconds / concurrency  # round trips overlap: per connection on average
    print(
        f"store work: {timed_store.calls} database calls executing {Busy.seconds:.2f}s"
        f" + {TimedFiles.seconds:.2f}s writing result files = {store_work / jobs * 1000:.2f} ms/job"
        + (
            " (database: awaited round trips divided by the workers, as they overlap; files: worker-thread time)"
            if database_url
            else " (wall time inside the worker threads, GIL waits included)"
        )
    )
    print(f"database size: {size / 1024:.0f} KiB")


async def _database_size(url: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--budgets", action="store_true", help="also run the budget queries for every job")
    parser.add_argument("--postgres", action="store_true", help="a throw-away PostgreSQL server instead of SQLite")
    options = parser.parse_args()
    if options.postgres:
        from tests.postgres import running_server

        with running_server() as server:
            asyncio.run(main(options.jobs, options.concurrency, options.budgets, server.url()))
    else:
        asyncio.run(main(options.jobs, options.concurrency, options.budgets))
