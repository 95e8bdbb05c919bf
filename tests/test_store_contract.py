"""The JobStore contract: every test runs against SQLite and against a real PostgreSQL server.

Opening a second store on the same database plays a second process (or a restart).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from bot.models import Job, JobContext, JobStatus, StoredImage
from bot.ports import JobStore
from bot.store import MAX_DELIVERY_ATTEMPTS, SQLiteJobStore, StoreError
from bot.store_pg import SCHEMA_VERSION as PG_SCHEMA_VERSION
from bot.store_pg import DatabaseUnavailableError, PostgresJobStore
from tests.postgres import PASSWORD, running_server

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1", reply="interaction:abc")
BOB = JobContext("discord", "bob", workspace="guild1", channel="c2")
SLACK = JobContext("slack", "alice", workspace=None, channel="C9", thread="1700000000.0001")
T0 = 1_764_000_000.0
_ids = itertools.count(1)

OpenStore = Callable[[], Awaitable[JobStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where the jobs live: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return tmp_path / "jobs.sqlite3"


@pytest.fixture
async def open_store(location: str | Path) -> AsyncIterator[OpenStore]:
    """Opens stores on ``location`` (each one a process of its own) and closes them all afterwards."""
    opened: list[JobStore] = []

    async def open_one() -> JobStore:
        store: JobStore
        if isinstance(location, Path):
            store = await SQLiteJobStore.open(location)
        else:
            store = await PostgresJobStore.open(location)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> JobStore:
    return await open_store()


def job(
    context: JobContext = ALICE,
    *,
    prompt: str = "a fox",
    status: JobStatus = JobStatus.QUEUED,
    at: float = T0,
    images: int = 1,
    estimate: float | None = 0.04,
    inputs: list[str] | None = None,
    **fields: object,
) -> Job:
    request: dict[str, object] = {"prompt": prompt, "n": images, "size": "1024x1024"}
    if inputs is not None:
        request["inputs"] = inputs
    return Job(
        id=f"job{next(_ids):07d}",
        kind="generate",
        context=context,
        request=request,
        request_hash=f"hash:{prompt}",
        status=status,
        created_at=at,
        updated_at=at,
        images_requested=images,
        estimated_cost=estimate,
        **fields,  # type: ignore[arg-type]
    )


async def put(store: JobStore, *jobs: Job) -> list[Job]:
    for one in jobs:
        _, is_new = await store.submit(one, dedupe_since=one.created_at + 1)  # no dedupe: every job is new
        assert is_new
    return list(jobs)


RESULT = StoredImage("1.png", "image/png", 1024, 1024, "a fox, in snow", 2_000_000)


# --- submit and dedupe -------------------------------------------------------------------------------------------


async def test_a_submitted_job_reads_back_field_for_field(store: JobStore) -> None:
    original = job(ALICE, model="gpt-image-2", provider="openai", delivery_attempts=0)
    await put(store, original)
    assert await store.get(original.id) == original
    assert await store.get("nosuchjob1") is None


async def test_an_identical_active_job_is_joined_not_repeated(store: JobStore) -> None:
    first = job(ALICE, at=T0)
    assert await store.submit(first, dedupe_since=T0 - 120) == (first, True)
    again = job(ALICE, at=T0 + 5)
    assert await store.submit(again, dedupe_since=T0 + 5 - 120) == (first, False)
    assert [j.id for j in await store.history()] == [first.id]


async def test_dedupe_ignores_other_users_finished_jobs_and_old_ones(store: JobStore) -> None:
    first = job(ALICE, at=T0)
    await store.submit(first, dedupe_since=T0 - 120)
    other_user = job(BOB, at=T0 + 1)
    assert (await store.submit(other_user, dedupe_since=T0 - 119))[1]
    after_the_window = job(ALICE, at=T0 + 200)
    assert (await store.submit(after_the_window, dedupe_since=T0 + 80))[1]
    await store.update(after_the_window.id, status=JobStatus.DONE)
    await store.update(first.id, status=JobStatus.FAILED)
    once_more = job(ALICE, at=T0 + 201)
    assert (await store.submit(once_more, dedupe_since=T0 + 81))[1]


async def test_concurrent_identical_submissions_from_two_processes_make_one_job(open_store: OpenStore) -> None:
    one, two = await open_store(), await open_store()
    candidates = [job(ALICE, at=T0 + i / 100) for i in range(12)]
    answers = await asyncio.gather(
        *(
            (one if index % 2 else two).submit(candidate, dedupe_since=T0 - 120)
            for index, candidate in enumerate(candidates)
        )
    )
    assert sum(is_new for _, is_new in answers) == 1
    assert len({kept.id for kept, _ in answers}) == 1
    assert len(await one.history()) == 1


# --- update ---------------------------------------------------------------------------------------------------------


async def test_update_changes_the_named_fields_and_returns_the_job(store: JobStore) -> None:
    (queued,) = await put(store, job(ALICE))
    done = await store.update(
        queued.id,
        status=JobStatus.DONE,
        results=(RESULT, RESULT),
        actual_cost=0.0319,
        paid_at=T0 + 3,
        updated_at=T0 + 4,
    )
    assert done.status is JobStatus.DONE and done.results == (RESULT, RESULT)
    assert (done.actual_cost, done.paid_at, done.updated_at) == (0.0319, T0 + 3, T0 + 4)
    assert await store.get(queued.id) == done
    pruned = await store.update(queued.id, results_pruned=True, delivery_attempts=2, request={"prompt": "b"})
    assert pruned.results_pruned is True and pruned.delivery_attempts == 2 and pruned.prompt == "b"
    assert pruned.updated_at > T0 + 4  # stamped with the time of the change when not given


async def test_update_refuses_unknown_fields_and_unknown_jobs(store: JobStore) -> None:
    (queued,) = await put(store, job(ALICE))
    with pytest.raises(ValueError, match="cannot update"):
        await store.update(queued.id, id="other")
    with pytest.raises(KeyError):
        await store.update("nosuchjob1", status=JobStatus.FAILED)


async def test_begin_delivery_counts_each_attempt_in_one_statement(store: JobStore) -> None:
    (done,) = await put(store, job(ALICE, status=JobStatus.DONE))
    first = await store.begin_delivery(done.id)
    second = await store.begin_delivery(done.id)
    assert (first.delivery_attempts, second.delivery_attempts) == (1, 2)
    assert second.status is JobStatus.DONE and second.updated_at >= first.updated_at > done.updated_at
    assert await store.get(done.id) == second
    with pytest.raises(KeyError):
        await store.begin_delivery("nosuchjob1")


async def test_a_locked_sqlite_database_sends_quick_statements_to_the_stores_thread(tmp_path: Path) -> None:
    """The quick path on the loop never waits for a lock: with another connection holding the write lock, an
    update waits in the store's thread (the loop keeps running) and lands once the lock is released."""
    sqlite_store = await SQLiteJobStore.open(tmp_path / "jobs.sqlite3")
    try:
        (queued,) = await put(sqlite_store, job(ALICE))
        locker = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        waiting = asyncio.create_task(sqlite_store.update(queued.id, status=JobStatus.RUNNING))
        ticks = 0
        while ticks < 20:  # the loop is free while the update waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert not waiting.done()
        locker.execute("COMMIT")
        locker.close()
        updated = await asyncio.wait_for(waiting, 5)
        assert updated.status is JobStatus.RUNNING
    finally:
        await sqlite_store.close()


# --- leases: any process finishes any job ---------------------------------------------------------------------------


async def test_a_claim_takes_jobs_whose_lease_ran_out_or_never_was_and_makes_them_the_claimers(
    store: JobStore,
) -> None:
    _, running, done, untold, *_ = await put(
        store,
        job(prompt="alive", status=JobStatus.QUEUED, at=T0, owner="a", lease_until=T0 + 30),
        job(prompt="running", status=JobStatus.RUNNING, at=T0 + 1, owner="a", lease_until=T0 - 1),
        job(prompt="done", status=JobStatus.DONE, at=T0 + 2),
        job(prompt="untold", status=JobStatus.INTERRUPTED, at=T0 + 3, owner="a", lease_until=T0 - 1),
        job(prompt="told", status=JobStatus.INTERRUPTED, at=T0 + 4, notified_at=T0),
        job(prompt="delivered", status=JobStatus.DELIVERED, at=T0 + 5),
        job(prompt="failed", status=JobStatus.FAILED, at=T0 + 6),
        job(prompt="held", status=JobStatus.AWAITING_CONFIRMATION, at=T0 + 7),
    )
    claimed = await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30)
    assert [j.id for j in claimed] == [running.id, done.id, untold.id]
    assert {(j.owner, j.lease_until) for j in claimed} == {("b", T0 + 30)}
    assert (await store.get(running.id)) == claimed[0]
    assert await store.claim_expired("c", expired_before=T0 + 1, lease_until=T0 + 31) == []  # all leased now


async def test_a_claim_takes_results_to_deliver_only_for_the_platforms_it_serves(store: JobStore) -> None:
    queued, _, _, _ = await put(
        store,
        job(SLACK, prompt="q", status=JobStatus.QUEUED, at=T0),
        job(SLACK, prompt="d", status=JobStatus.DONE, at=T0 + 1),
        job(SLACK, prompt="i", status=JobStatus.INTERRUPTED, at=T0 + 2),
        job(ALICE, prompt="d", status=JobStatus.DONE, at=T0 + 3),
    )
    claimed = await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30, platforms=("web",))
    assert [j.id for j in claimed] == [queued.id]  # any process can run a job; only a Slack process posts one
    discord = await store.claim_expired("c", expired_before=T0, lease_until=T0 + 30, platforms=("discord",))
    assert [j.prompt for j in discord] == ["d"] and discord[0].context == ALICE
    assert len(await store.claim_expired("d", expired_before=T0, lease_until=T0 + 30)) == 2


async def test_a_result_whose_posts_keep_failing_is_not_taken_over_forever(store: JobStore) -> None:
    await put(store, job(status=JobStatus.DONE, delivery_attempts=MAX_DELIVERY_ATTEMPTS))
    assert await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30) == []


async def test_processes_claiming_at_once_never_take_the_same_job(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(3)]
    jobs = await put(stores[0], *(job(prompt=f"p{i}", status=JobStatus.RUNNING, at=T0 + i) for i in range(30)))
    taken: list[list[str]] = [[], [], []]

    async def sweep(index: int) -> None:
        while claimed := await stores[index].claim_expired(
            f"p{index}", expired_before=T0, lease_until=T0 + 30, limit=4
        ):
            taken[index] += [j.id for j in claimed]

    await asyncio.gather(*(sweep(i) for i in range(3)))
    everything = [job_id for ids in taken for job_id in ids]
    assert sorted(everything) == sorted(j.id for j in jobs)  # every job taken, none twice
    for index, ids in enumerate(taken):
        assert {(await stores[0].get(job_id)).owner for job_id in ids} <= {f"p{index}"}  # type: ignore[union-attr]


async def test_a_heartbeat_renews_only_the_leases_still_its_own(store: JobStore) -> None:
    mine, lost = await put(
        store,
        job(prompt="mine", status=JobStatus.RUNNING, owner="a", lease_until=T0 + 10),
        job(prompt="lost", status=JobStatus.RUNNING, at=T0 + 1, owner="a", lease_until=T0 - 5),
    )
    (taken,) = await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30)
    assert taken.id == lost.id
    assert await store.renew("a", [mine.id, lost.id], T0 + 40) == {mine.id}
    assert (await store.get(mine.id)).lease_until == T0 + 40  # type: ignore[union-attr]
    assert (await store.get(lost.id)).lease_until == T0 + 30  # type: ignore[union-attr]
    assert await store.renew("a", [], T0 + 50) == set()


async def test_released_leases_can_be_taken_at_once(store: JobStore) -> None:
    (held,) = await put(store, job(status=JobStatus.RUNNING, owner="a", lease_until=T0 + 30))
    assert await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30) == []
    await store.release("a")
    (taken,) = await store.claim_expired("b", expired_before=T0, lease_until=T0 + 30)
    assert taken.id == held.id and taken.owner == "b"


async def test_undelivered_and_cut_off_of_one_owner(store: JobStore) -> None:
    mine, _, told, _ = await put(
        store,
        job(prompt="1", status=JobStatus.DONE, owner="a"),
        job(prompt="2", status=JobStatus.DONE, owner="b"),
        job(prompt="3", status=JobStatus.INTERRUPTED, owner="a"),
        job(prompt="4", status=JobStatus.INTERRUPTED, owner="b"),
    )
    assert [j.id for j in await store.undelivered("discord", owner="a")] == [mine.id]
    assert [j.id for j in await store.cut_off("discord", owner="a")] == [told.id]
    assert len(await store.undelivered("discord")) == 2 and len(await store.cut_off("discord")) == 2


# --- platform state shared by every process -------------------------------------------------------------------------


async def test_a_message_remembered_by_one_process_leads_any_other_to_its_job(open_store: OpenStore) -> None:
    one, two = await open_store(), await open_store()
    await one.remember_message("slack", "C1", "1700000000.000100", "job0000001", at=T0)
    assert await two.job_at("slack", "C1", "1700000000.000100") == "job0000001"
    assert await two.job_at("slack", "C2", "1700000000.000100") is None
    assert await two.job_at("discord", "C1", "1700000000.000100") is None
    await two.remember_message("slack", "C1", "1700000000.000100", "job0000002", at=T0 + 1)  # the newer post wins
    assert await one.job_at("slack", "C1", "1700000000.000100") == "job0000002"


async def test_an_event_is_handled_once_however_many_processes_receive_it(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(3)]
    answers = await asyncio.gather(*(stores[i % 3].first_time("slack:C1:171.1", at=T0) for i in range(12)))
    assert answers.count(True) == 1
    assert await stores[0].first_time("slack:C1:171.2", at=T0 + 5)
    await stores[1].forget_events(T0 + 1)  # the first key is old enough to forget, the second is not
    assert await stores[2].first_time("slack:C1:171.1", at=T0 + 9)
    assert not await stores[2].first_time("slack:C1:171.2", at=T0 + 9)


# --- what start-up and delivery read -----------------------------------------------------------------------------


async def test_unfinished_is_queued_and_running_oldest_first(store: JobStore) -> None:
    running, queued, _, _, _ = await put(
        store,
        job(prompt="r", status=JobStatus.RUNNING, at=T0),
        job(prompt="q", status=JobStatus.QUEUED, at=T0 + 1),
        job(prompt="d", status=JobStatus.DONE, at=T0 - 1),
        job(prompt="h", status=JobStatus.AWAITING_CONFIRMATION, at=T0),
        job(prompt="i", status=JobStatus.INTERRUPTED, at=T0),
    )
    assert [j.id for j in await store.unfinished()] == [running.id, queued.id]


async def test_undelivered_is_done_jobs_of_that_platform_in_order(store: JobStore) -> None:
    first, second, _, _ = await put(
        store,
        job(ALICE, prompt="1", status=JobStatus.DONE, at=T0),
        job(BOB, prompt="2", status=JobStatus.DONE, at=T0),  # same second: submission order breaks the tie
        job(SLACK, prompt="3", status=JobStatus.DONE, at=T0),
        job(ALICE, prompt="4", status=JobStatus.DELIVERED, at=T0),
    )
    assert [j.id for j in await store.undelivered("discord")] == [first.id, second.id]
    (slack,) = await store.undelivered("slack")
    assert slack.context == SLACK


async def test_cut_off_lists_interrupted_jobs_until_their_requester_is_told(store: JobStore) -> None:
    cut, _, _ = await put(
        store,
        job(ALICE, prompt="1", status=JobStatus.INTERRUPTED),
        job(SLACK, prompt="2", status=JobStatus.INTERRUPTED),
        job(ALICE, prompt="3", status=JobStatus.FAILED),
    )
    (listed,) = await store.cut_off("discord")
    assert listed.id == cut.id and listed.context.reply == "interaction:abc"
    await store.update(cut.id, notified_at=T0 + 9)
    assert await store.cut_off("discord") == []


async def test_history_is_newest_first_limited_and_filtered_by_user(store: JobStore) -> None:
    jobs = await put(
        store,
        job(ALICE, prompt="1", at=T0),
        job(BOB, prompt="2", at=T0 + 1),
        job(SLACK, prompt="3", at=T0 + 2),
        job(ALICE, prompt="4", at=T0 + 2),
    )
    assert [j.id for j in await store.history()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in await store.history(limit=2)] == [jobs[3].id, jobs[2].id]
    assert [j.id for j in await store.history(user="discord:alice")] == [jobs[3].id, jobs[0].id]
    assert [j.id for j in await store.history(user="alice")] == [jobs[3].id, jobs[2].id, jobs[0].id]


async def test_prunable_is_old_finished_jobs_with_files(store: JobStore) -> None:
    old = T0 - 40 * 86_400
    with_results, with_inputs, _, _, _, _ = await put(
        store,
        job(prompt="results", status=JobStatus.DELIVERED, at=old, results=(RESULT,)),
        job(prompt="inputs", status=JobStatus.FAILED, at=old, inputs=["input-1.png"]),
        job(prompt="no files", status=JobStatus.FAILED, at=old, inputs=[]),
        job(prompt="running", status=JobStatus.RUNNING, at=old, inputs=["input-1.png"]),
        job(prompt="pruned", status=JobStatus.DONE, at=old, results=(RESULT,), results_pruned=True),
        job(prompt="new", status=JobStatus.DONE, at=T0, results=(RESULT,)),
    )
    assert [j.id for j in await store.prunable(T0 - 30 * 86_400)] == [with_results.id, with_inputs.id]


# --- the ledger ---------------------------------------------------------------------------------------------------


async def test_spend_counts_paid_jobs_and_reservations_but_not_unpaid_failures(store: JobStore) -> None:
    await put(
        store,
        job(prompt="paid", status=JobStatus.DELIVERED, images=2, estimate=0.08, actual_cost=0.05, paid_at=T0),
        job(prompt="paid, no cost reported", status=JobStatus.DONE, estimate=0.04, paid_at=T0),
        job(prompt="paid then cut off", status=JobStatus.INTERRUPTED, estimate=0.04, paid_at=T0),
        job(prompt="queued", status=JobStatus.QUEUED, estimate=0.03),
        job(prompt="running", status=JobStatus.RUNNING, estimate=0.02),
        job(prompt="failed unpaid", status=JobStatus.FAILED, estimate=0.5),
        job(prompt="interrupted unpaid", status=JobStatus.INTERRUPTED, estimate=0.5),
        job(prompt="held", status=JobStatus.AWAITING_CONFIRMATION, estimate=0.5),
        job(prompt="before", status=JobStatus.DONE, at=T0 - 10, estimate=1.0, paid_at=T0 - 10),
    )
    spent = await store.spend(T0)
    assert spent.images == 6
    assert spent.dollars == pytest.approx(0.05 + 0.04 + 0.04 + 0.03 + 0.02)


async def test_spend_per_user_and_per_workspace(store: JobStore) -> None:
    nowhere = JobContext("slack", "carol", workspace=None)
    await put(
        store,
        job(ALICE, prompt="a", status=JobStatus.DONE, actual_cost=0.1, paid_at=T0),
        job(BOB, prompt="b", status=JobStatus.DONE, actual_cost=0.2, paid_at=T0),
        job(JobContext("discord", "alice", workspace="guild2"), prompt="c", status=JobStatus.DONE, paid_at=T0),
        job(nowhere, prompt="d", status=JobStatus.DONE, actual_cost=0.4, paid_at=T0),
    )
    assert (await store.spend(T0, context=ALICE, per="user")).dollars == pytest.approx(0.1 + 0.04)
    assert (await store.spend(T0, context=BOB, per="workspace")).dollars == pytest.approx(0.3)
    assert (await store.spend(T0, context=nowhere, per="workspace")).dollars == pytest.approx(0.4)
    assert (await store.spend(T0 + 1, context=ALICE, per="user")).images == 0


async def test_usage_counts_paid_jobs_only_most_expensive_first(store: JobStore) -> None:
    await put(
        store,
        job(ALICE, prompt="a", status=JobStatus.DELIVERED, images=2, actual_cost=0.1, paid_at=T0),
        job(ALICE, prompt="b", status=JobStatus.INTERRUPTED, images=1, actual_cost=None, paid_at=T0),
        job(BOB, prompt="c", status=JobStatus.DELIVERED, images=1, actual_cost=0.5, paid_at=T0),
        job(BOB, prompt="d", status=JobStatus.QUEUED, images=4),
        job(SLACK, prompt="e", status=JobStatus.FAILED, images=4),
    )
    by_user = await store.usage(T0)
    assert [(r.key, r.jobs, r.images) for r in by_user] == [("discord:bob", 1, 1), ("discord:alice", 2, 3)]
    assert by_user[1].dollars == pytest.approx(0.14)
    assert [r.key for r in await store.usage(T0, by="channel")] == ["discord:c2", "discord:c1"]
    assert [(r.key, r.jobs) for r in await store.usage(T0, by="workspace")] == [("discord:guild1", 3)]
    assert await store.usage(T0 + 1) == []
    with pytest.raises(ValueError, match="usage by"):
        await store.usage(T0, by="planet")


# --- schema ---------------------------------------------------------------------------------------------------------


async def test_reopening_keeps_every_job(open_store: OpenStore) -> None:
    first = await open_store()
    kept = await put(first, job(ALICE, prompt="1", status=JobStatus.DONE, results=(RESULT,), paid_at=T0))
    await first.close()
    reopened = await open_store()
    assert [await reopened.get(j.id) for j in kept] == kept


async def test_two_processes_opening_a_new_database_at_once_both_work(open_store: OpenStore) -> None:
    one, two = await asyncio.gather(open_store(), open_store())
    (queued,) = await put(one, job(ALICE))
    assert await two.get(queued.id) == queued


# --- PostgreSQL only --------------------------------------------------------------------------------------------


async def test_postgres_refuses_a_database_from_a_newer_imagebot(postgres_url: str) -> None:
    store = await PostgresJobStore.open(postgres_url)
    await store.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", PG_SCHEMA_VERSION + 1)
    finally:
        await connection.close()
    with pytest.raises(StoreError, match="newer imagebot"):
        await PostgresJobStore.open(postgres_url)


async def test_postgres_records_its_schema_version(postgres_url: str) -> None:
    store = await PostgresJobStore.open(postgres_url)
    await store.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = [row[0] for row in await connection.fetch("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        await connection.close()
    assert versions == list(range(1, PG_SCHEMA_VERSION + 1))


async def test_a_wrong_password_is_a_clear_error_without_the_password(postgres_url: str) -> None:
    wrong = postgres_url.replace("://imagebot:", "://imagebot:not-the-password-4711")
    with pytest.raises(StoreError) as caught:
        await PostgresJobStore.open(wrong, connect_timeout=5)
    message = caught.value.user_message
    assert message.startswith("IMAGEBOT_DATABASE_URL: cannot connect to 127.0.0.1:")
    assert "user name or password was refused" in message
    assert "4711" not in message and "pg-" not in message


async def test_nothing_listening_is_a_clear_error(unused_tcp_port: int) -> None:
    with pytest.raises(StoreError, match=r"cannot connect to 127\.0\.0\.1:\d+/jobs \(connection refused"):
        await PostgresJobStore.open(f"postgresql://u:secret@127.0.0.1:{unused_tcp_port}/jobs", connect_timeout=5)


async def test_postgres_carries_on_after_the_database_server_restarts() -> None:
    with running_server() as server:  # a server of its own: this test restarts it
        store = await PostgresJobStore.open(server.url(), max_connections=2)
        try:
            (before,) = await put(store, job(ALICE, prompt="before"))
            await asyncio.to_thread(server.restart)  # every pooled connection is cut
            assert await store.get(before.id) == before
            done = await store.update(before.id, status=JobStatus.DONE, paid_at=T0)
            (after,) = await put(store, job(BOB, prompt="after"))
            assert [j.id for j in await store.history()] == [after.id, before.id]
            assert (await store.spend(T0)).images == 2 and done.status is JobStatus.DONE
        finally:
            await store.close()


async def test_postgres_down_for_good_is_a_friendly_retryable_error() -> None:
    with running_server() as server:
        store = await PostgresJobStore.open(server.url(), retry_delays=(0.05, 0.1))
        try:
            await asyncio.to_thread(server.stop)
            with pytest.raises(DatabaseUnavailableError) as caught:
                await store.history()
        finally:
            await store.close()
    assert caught.value.retryable
    assert caught.value.user_message == "I can't reach my job database right now. Please try again in a minute."
    assert PASSWORD not in caught.value.detail


async def test_a_submit_whose_commit_was_cut_off_is_not_inserted_twice(postgres_url: str) -> None:
    """The connection drops after the insert committed: the retry finds the job instead of failing or doubling."""
    store = await PostgresJobStore.open(postgres_url)
    candidate = job(ALICE, status=JobStatus.DONE)
    await put(store, candidate)  # the first attempt, committed
    admin = await asyncpg.connect(postgres_url)
    try:
        # the retry, on a fresh connection, finds the committed job (it is done: dedupe alone would miss it)
        assert await store._submit(candidate, T0 + 1, retried=True) == (candidate, True)
        assert await admin.fetchval("SELECT count(*) FROM jobs") == 1
        # through the port: the first attempt meets a cut connection, the retry inserts the job once
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        second = job(BOB)
        assert await store.submit(second, dedupe_since=T0 - 1) == (second, True)
        assert await admin.fetchval("SELECT count(*) FROM jobs") == 2
    finally:
        await admin.close()
        await store.close()


async def test_usage_of_one_workspace_leaves_out_every_other(store: JobStore) -> None:
    """An admin's view: ``/imagebot-admin usage`` in guild1 never shows guild2's or another platform's spend."""
    await put(
        store,
        job(ALICE, prompt="a", status=JobStatus.DELIVERED, images=2, actual_cost=0.1, paid_at=T0),
        job(JobContext("discord", "carol", workspace="guild2"), prompt="b", status=JobStatus.DONE, paid_at=T0),
        job(JobContext("slack", "dave", workspace="guild1"), prompt="c", status=JobStatus.DONE, paid_at=T0),
    )
    rows = await store.usage(T0, by="user", workspace=("discord", "guild1"))
    assert [(r.key, r.jobs, r.images) for r in rows] == [("discord:alice", 1, 2)]
    assert await store.usage(T0, workspace=("discord", "guild9")) == []
