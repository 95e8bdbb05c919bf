"""Jobs: nothing paid for is lost, nothing is charged twice, budgets hold, buttons survive restarts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.budgets import BudgetExceededError
from bot.errors import ProviderOutageError
from bot.jobs import JobNotFoundError, JobService
from bot.limits import Admission
from bot.models import EditRequest, GenerateRequest, JobContext, JobStatus, ProviderEdit, ProviderGenerate
from bot.ports import JobStore
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings, load_settings
from bot.store import MIGRATIONS, SCHEMA_VERSION, ResultFiles, SQLiteJobStore, StoreError
from bot.store_pg import PostgresJobStore
from tests.fakes.provider import FakeImages
from tests.images import decode, jpeg, png

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1")
BOB = JobContext("discord", "bob", workspace="guild1", channel="c1")
START = dt.datetime(2026, 11, 25, 22, 0, tzinfo=dt.UTC).timestamp()
LOW = {"quality": "low"}  # estimate $0.00588 per 1024x1024 image on gpt-image-2
ONE_CALL = (50 * 5 + 1056 * 30) / 1_000_000  # the fake's usage body, priced: $0.03193


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Place:
    """Where a JobService keeps its state: the data folder, and a PostgreSQL database when one is given."""

    folder: Path
    database_url: str | None = None


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """Every main flow runs on both job stores (PostgreSQL: a fresh database on the session's real server)."""
    if request.param == "postgresql":
        return Place(tmp_path, str(request.getfixturevalue("postgres_url")))
    return Place(tmp_path)


@contextlib.asynccontextmanager
async def job_service(
    place: Place,
    provider: FakeImages,
    clock: Clock,
    *,
    budgets: BudgetSettings | None = None,
    jobs: JobSettings | None = None,
) -> AsyncIterator[JobService]:
    """A JobService on a real store at ``place``: opening another on the same place is a restart."""
    settings = load_settings()
    images = ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=4, images_per_minute=0, per_user_jobs=10, max_queue=50),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store: JobStore
    if place.database_url is not None:
        store = await PostgresJobStore.open(place.database_url)
    else:
        store = await SQLiteJobStore.open(place.folder / "jobs.sqlite3", busy_timeout=0.2)
    service = JobService(
        images=images,
        store=store,
        files=ResultFiles(place.folder / "results"),
        jobs=jobs or JobSettings(),
        budgets=budgets or BudgetSettings(),
        clock=clock,
    )
    try:
        await service.start()
        yield service
        await service.stop()  # a clean exit hands its leases back: the next service (a restart) takes over at once
    finally:
        await store.close()


@pytest.fixture
def provider() -> FakeImages:
    return FakeImages()


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- restarts ------------------------------------------------------------------------------------------------


async def test_a_job_running_when_the_process_stops_is_interrupted_after_restart(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    provider.gate = asyncio.Event()
    async with job_service(place, provider, clock) as jobs:
        task = asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="a fox")))
        while not provider.calls:
            await asyncio.sleep(0.01)
        (job,) = await jobs.store.history()
        assert job.status is JobStatus.RUNNING
        task.cancel()  # the process stops mid-call
        with pytest.raises(asyncio.CancelledError):
            await task
    async with job_service(place, FakeImages(), clock) as restarted:
        again = await restarted.store.get(job.id)
        assert again is not None and again.status is JobStatus.INTERRUPTED


async def test_stale_running_rows_become_interrupted_at_start(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock) as jobs:
        outcome = await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
        await jobs.store.update(outcome.job.id, status=JobStatus.RUNNING)  # as a killed process leaves it
    async with job_service(place, provider, clock) as restarted:
        interrupted = await restarted.store.get(outcome.job.id)
        assert interrupted is not None and interrupted.status is JobStatus.INTERRUPTED


async def test_a_paid_result_not_yet_delivered_is_delivered_once_after_restart(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    async with job_service(place, provider, clock) as jobs:
        outcome = await jobs.submit(ALICE, GenerateRequest(prompt="a fox", n=2))
        assert outcome.job.status is JobStatus.DONE  # stored; the adapter crashed before posting
    async with job_service(place, FakeImages(), clock) as restarted:
        pending = await restarted.undelivered("discord")
        assert [job.id for job, _ in pending] == [outcome.job.id]
        job, result = pending[0]
        assert [image.data for image in result.images] == [image.data for image in outcome.result.images]  # type: ignore[union-attr]
        assert await restarted.undelivered("slack") == []
        await restarted.mark_delivered(job.id)
    async with job_service(place, FakeImages(), clock) as again:
        assert await again.undelivered("discord") == []
        delivered = await again.store.get(outcome.job.id)
        assert delivered is not None and delivered.status is JobStatus.DELIVERED and delivered.delivered_at == START


async def test_buttons_work_after_a_restart(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock) as jobs:
        first = await jobs.submit(ALICE, GenerateRequest(prompt="a fox", n=2, size="1536x1024", quality="low"))
    second_provider = FakeImages()
    async with job_service(place, second_provider, clock) as restarted:
        reroll = await restarted.reroll(first.job.id, ALICE)
        remix = await restarted.remix(first.job.id, "a fox in the snow", ALICE)
        varied = await restarted.vary_result(first.job.id, 2, ALICE, n=1)
        upscale = await restarted.result_image(first.job.id, 1)
    generate, remixed, vary = second_provider.calls
    assert isinstance(generate, ProviderGenerate) and isinstance(remixed, ProviderGenerate)
    assert (generate.prompt, generate.n, generate.size, generate.quality) == ("a fox", 2, "1536x1024", "low")
    assert remixed.prompt == "a fox in the snow"
    assert isinstance(vary, ProviderEdit)
    assert decode(vary.images[0]).size == decode(first.result.images[1].data).size  # type: ignore[union-attr]
    assert {reroll.job.id, remix.job.id, varied.job.id}.isdisjoint({first.job.id})
    assert upscale.data == first.result.images[0].data  # type: ignore[union-attr]


async def test_an_edit_reroll_reuses_the_stored_input_and_mask(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    async with job_service(place, provider, clock) as jobs:
        first = await jobs.submit(ALICE, EditRequest(images=(jpeg(80, 60),), prompt="a moon", region="A1:B2"))
        await jobs.reroll(first.job.id, ALICE)
    original, rerolled = provider.calls
    assert isinstance(original, ProviderEdit) and isinstance(rerolled, ProviderEdit)
    assert rerolled.images == original.images and rerolled.mask == original.mask


async def test_an_unknown_job_id_is_a_friendly_error(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock) as jobs:
        with pytest.raises(JobNotFoundError):
            await jobs.reroll("nosuchjob1", ALICE)
        with pytest.raises(JobNotFoundError):
            await jobs.result_image("../../etc", 1)


# --- idempotency ----------------------------------------------------------------------------------------------


async def test_concurrent_duplicates_make_one_job_and_one_charge(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    provider.gate = asyncio.Event()
    async with job_service(place, provider, clock) as jobs:
        tasks = [asyncio.create_task(jobs.submit(ALICE, GenerateRequest(prompt="a fox"))) for _ in range(3)]
        while not provider.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        provider.gate.set()
        outcomes = await asyncio.gather(*tasks)
        assert len(provider.calls) == 1
        assert len({o.job.id for o in outcomes}) == 1
        assert sorted(o.duplicate for o in outcomes) == [False, True, True]
        assert all(o.result is not None and len(o.result.images) == 1 for o in outcomes)
        assert len(await jobs.store.history()) == 1


async def test_the_same_request_from_someone_else_is_its_own_job(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    async with job_service(place, provider, clock) as jobs:
        await asyncio.gather(
            jobs.submit(ALICE, GenerateRequest(prompt="a fox")), jobs.submit(BOB, GenerateRequest(prompt="a fox"))
        )
    assert len(provider.calls) == 2


async def test_a_repeat_after_the_first_finished_is_a_new_job(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock) as jobs:
        first = await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
        second = await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
    assert first.job.id != second.job.id and not second.duplicate
    assert len(provider.calls) == 2


# --- budgets ----------------------------------------------------------------------------------------------------


async def test_images_per_user_per_day_refuses_then_resets_at_midnight_utc(
    place: Place, provider: FakeImages, clock: Clock
) -> None:
    async with job_service(place, provider, clock, budgets=BudgetSettings(images_per_user_per_day=3)) as jobs:
        await jobs.submit(ALICE, GenerateRequest(prompt="one", n=2))
        await jobs.submit(ALICE, GenerateRequest(prompt="two", n=1))
        with pytest.raises(BudgetExceededError) as caught:
            await jobs.submit(ALICE, GenerateRequest(prompt="three", n=1))
        assert "limit of 3 images per day" in caught.value.user_message
        assert "00:00 UTC (in 2 h 0 min)" in caught.value.user_message
        assert len(provider.calls) == 2  # refused before any API call
        await jobs.submit(BOB, GenerateRequest(prompt="three", n=1))  # others are not affected
        clock.now = dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC).timestamp()
        await jobs.submit(ALICE, GenerateRequest(prompt="three", n=1))
    assert len(provider.calls) == 4


async def test_dollars_per_user_per_day_counts_actual_costs(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock, budgets=BudgetSettings(dollars_per_user_per_day=0.10)) as jobs:
        for index in range(3):  # 3 x $0.03193 actual = $0.0958
            await jobs.submit(ALICE, GenerateRequest(prompt=f"p{index}", **LOW))
        with pytest.raises(BudgetExceededError) as caught:  # + $0.00588 estimate > $0.10
            await jobs.submit(ALICE, GenerateRequest(prompt="p3", **LOW))
    assert "daily image budget of $0.10 (used $0.10" in caught.value.user_message
    assert len(provider.calls) == 3


async def test_failed_jobs_cost_nothing(place: Place, provider: FakeImages, clock: Clock) -> None:
    provider.fail_with = ProviderOutageError(detail="500")
    async with job_service(place, provider, clock, budgets=BudgetSettings(images_per_user_per_day=1)) as jobs:
        with pytest.raises(ProviderOutageError) as caught:
            await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
        (failed,) = await jobs.store.history()
        assert failed.status is JobStatus.FAILED and failed.error_ref == caught.value.ref
        provider.fail_with = None
        await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))


async def test_workspace_budget_per_month_resets_on_the_first(place: Place, provider: FakeImages, clock: Clock) -> None:
    budgets = BudgetSettings(dollars_per_workspace_per_month=0.05)
    async with job_service(place, provider, clock, budgets=budgets) as jobs:
        await jobs.submit(ALICE, GenerateRequest(prompt="one", **LOW))  # $0.03193
        with pytest.raises(BudgetExceededError) as caught:
            await jobs.submit(BOB, GenerateRequest(prompt="two", n=4, **LOW))  # + 4 x $0.00588
        assert "monthly image budget ($0.05)" in caught.value.user_message
        assert "on 2026-12-01 at 00:00 UTC" in caught.value.user_message
        other_guild = JobContext("discord", "carol", workspace="guild2")
        await jobs.submit(other_guild, GenerateRequest(prompt="two", n=4, **LOW))
        clock.now = dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp()
        await jobs.submit(BOB, GenerateRequest(prompt="two", n=4, **LOW))


async def test_overall_monthly_budget(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock, budgets=BudgetSettings(dollars_per_month=0.04)) as jobs:
        await jobs.submit(ALICE, GenerateRequest(prompt="one", **LOW))
        with pytest.raises(BudgetExceededError, match="The bot has used its monthly image budget"):
            await jobs.submit(JobContext("slack", "dave", workspace="T1"), GenerateRequest(prompt="x", n=2, **LOW))


async def test_costs_add_up_from_usage_in_the_ledger(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock) as jobs:
        await jobs.submit(ALICE, GenerateRequest(prompt="one", n=2))
        await jobs.submit(ALICE, GenerateRequest(prompt="two"))
        await jobs.submit(BOB, GenerateRequest(prompt="three"))
        by_user = {row.key: row for row in await jobs.store.usage(START - 1, by="user")}
        by_workspace = await jobs.store.usage(START - 1, by="workspace")
    assert by_user["discord:alice"].images == 3 and by_user["discord:alice"].jobs == 2
    assert by_user["discord:alice"].dollars == pytest.approx(2 * ONE_CALL)
    assert by_user["discord:bob"].dollars == pytest.approx(ONE_CALL)
    assert [(r.key, r.images) for r in by_workspace] == [("discord:guild1", 4)]


# --- confirmation -------------------------------------------------------------------------------------------


async def test_expensive_jobs_wait_for_confirmation(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock, jobs=JobSettings(confirm_above_usd=0.10)) as jobs:
        held = await jobs.submit(ALICE, GenerateRequest(prompt="a fox", quality="high", n=2))  # ≈ $0.42
        assert held.needs_confirmation and held.result is None
        assert held.job.estimated_cost == pytest.approx(2 * 0.210_72)
        assert provider.calls == []
        confirmed = await jobs.confirm(held.job.id, ALICE)
        assert confirmed.result is not None and len(provider.calls) == 1
        cheap = await jobs.submit(ALICE, GenerateRequest(prompt="a fox", quality="low"))
        assert not cheap.needs_confirmation


async def test_a_held_job_can_be_cancelled(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock, jobs=JobSettings(confirm_above_usd=0.01)) as jobs:
        held = await jobs.submit(ALICE, GenerateRequest(prompt="a fox"))
        cancelled = await jobs.cancel(held.job.id)
    assert cancelled.status is JobStatus.CANCELLED and provider.calls == []


# --- retention --------------------------------------------------------------------------------------------------


async def test_prune_deletes_old_files_but_keeps_the_ledger(place: Place, provider: FakeImages, clock: Clock) -> None:
    async with job_service(place, provider, clock, jobs=JobSettings(retention_days=30)) as jobs:
        old = await jobs.submit(ALICE, GenerateRequest(prompt="old"))
        clock.now += 31 * 86_400
        new = await jobs.submit(ALICE, GenerateRequest(prompt="new"))
        assert await jobs.prune() == 1
        with pytest.raises(JobNotFoundError):
            await jobs.result_image(old.job.id, 1)
        assert (await jobs.result_image(new.job.id, 1)).data == png(32, 32)
        assert not (place.folder / "results" / old.job.id).exists()
        assert sum(row.jobs for row in await jobs.store.usage(0)) == 2


# --- the database itself ----------------------------------------------------------------------------------------


async def test_migrations_bring_an_old_database_up_to_date(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO jobs (id, kind, platform, user, request, request_hash, status, created_at, updated_at,"
        " images_requested) VALUES ('oldjob1234', 'generate', 'slack', 'u1', ?, 'h', 'done', 1, 1, 1)",
        ('{"prompt": "x"}',),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = await SQLiteJobStore.open(path)
    try:
        job = await store.get("oldjob1234")
    finally:
        await store.close()
    assert job is not None and job.prompt == "x" and job.results_pruned is False
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    assert job.paid_at is not None  # a finished job from before the ledger knew "paid" was paid


async def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    with pytest.raises(StoreError) as caught:
        await SQLiteJobStore.open(path)
    assert "damaged or not a database" in caught.value.user_message
    assert "Move it away" in caught.value.user_message


async def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            await SQLiteJobStore.open(path, busy_timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer imagebot"):
        await SQLiteJobStore.open(path)
