"""The ``JobStore`` port on PostgreSQL (asyncpg), chosen by ``IMAGEBOT_DATABASE_URL``.

Same columns, statuses and ledger rules as ``bot.store.SQLiteJobStore`` (the SQL fragments and the row mapping
are shared); one contract test suite runs against both. ``request`` and ``results`` are ``jsonb``; times stay
Unix seconds (double precision) like SQLite's, so both engines answer the same queries the same way. A
``seq`` identity column breaks ties in time order (SQLite's rowid does that there). Where SQLite takes
``BEGIN IMMEDIATE``, submit takes a transaction-scoped advisory lock on (platform, user, request hash), so the
dedupe-then-insert is atomic across every process on the database. Result files still live under
``IMAGEBOT_DATA_DIR`` (see ``ResultFiles``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg

from bot.errors import ImageBotError
from bot.models import Job, JobContext, JobStatus, Spend, UsageRow
from bot.redact import redact
from bot.store import (
    ACTIVE,
    CHARGE,
    JOB_COLUMNS,
    RESERVING,
    UNFINISHED,
    USAGE_KEYS,
    StoreError,
    claimable_where,
    job_from_row,
    job_row,
    update_values,
)
from bot.text import N_

log = logging.getLogger(__name__)
T = TypeVar("T")

# A connection the server cut (restart, failover, idle timeout) or one that can't be made yet: worth trying
# again on a fresh connection. Every operation below is safe to repeat (see ``submit`` for the one insert).
# (InternalClientError: a cut connection used before asyncpg has read that it is closed.)
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    OSError,
)
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)  # about 8 s in all, then the operation fails


class DatabaseUnavailableError(ImageBotError):
    """The PostgreSQL job database stayed unreachable through every retry."""

    kind = "database_unavailable"
    retryable = True
    default_message = N_("I can't reach my job database right now. Please try again in a minute.")


# Each entry moves the schema one version up; the schema_version table records where a database stands.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        id text PRIMARY KEY,
        kind text NOT NULL,
        platform text NOT NULL,
        workspace text,
        channel text,
        thread text,
        "user" text NOT NULL,
        request jsonb NOT NULL,
        request_hash text NOT NULL,
        status text NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        images_requested integer NOT NULL,
        estimated_cost double precision,
        actual_cost double precision,
        model text,
        provider text,
        error_ref text,
        error_message text,
        results jsonb NOT NULL DEFAULT '[]',
        delivered_at double precision,
        results_pruned boolean NOT NULL DEFAULT false,
        paid_at double precision,
        delivery_attempts integer NOT NULL DEFAULT 0,
        reply text,
        notified_at double precision
    );
    CREATE INDEX jobs_by_user ON jobs (platform, "user", created_at);
    CREATE INDEX jobs_by_hash ON jobs (request_hash, status);
    CREATE INDEX jobs_by_time ON jobs (created_at);
    CREATE INDEX jobs_by_workspace ON jobs (platform, workspace, created_at);
    CREATE INDEX jobs_by_status ON jobs (status);
    """,
    # Leases (see bot.store's migration 5): the process working on a job owns it until lease_until.
    """
    ALTER TABLE jobs ADD COLUMN owner text;
    ALTER TABLE jobs ADD COLUMN lease_until double precision;
    CREATE INDEX jobs_by_lease ON jobs (status, lease_until);
    """,
    # Platform state shared by every process (see bot.store's migration 6).
    """
    CREATE TABLE messages (
        platform text NOT NULL, channel text NOT NULL, ts text NOT NULL, job text NOT NULL,
        at double precision NOT NULL, PRIMARY KEY (platform, channel, ts)
    );
    CREATE INDEX messages_by_job ON messages (platform, job);
    CREATE TABLE handled_events (key text PRIMARY KEY, at double precision NOT NULL);
    CREATE INDEX handled_events_by_time ON handled_events (at);
    """,
    "ALTER TABLE jobs ADD COLUMN started_at double precision",  # when the provider call began (queue estimates)
)
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x1A6EB07  # advisory lock key: one process migrates at a time
_PLACES = ", ".join(f"${number}" for number in range(1, len(JOB_COLUMNS) + 1))
_INSERT = f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({_PLACES})"  # noqa: S608 - fixed column names
_INPUTS = "CASE WHEN jsonb_typeof(request->'inputs') = 'array' THEN jsonb_array_length(request->'inputs') ELSE 0 END"


def database_location(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL: what may be shown (never the user or password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    return f"{parts.hostname or 'localhost'}:{port}/{database}"


class PostgresJobStore:
    """The ``JobStore`` port on PostgreSQL. Open with ``await PostgresJobStore.open(url)``."""

    def __init__(self, pool: asyncpg.Pool, where: str, *, retry_delays: tuple[float, ...] = RETRY_DELAYS):
        self._pool = pool
        self.where = where
        self._retry_delays = retry_delays

    # --- lifecycle ----------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        connect_timeout: float = 10.0,
        max_connections: int = 10,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> PostgresJobStore:
        """Connect and migrate, or raise ``StoreError`` saying why not (never with the URL's credentials)."""
        where = database_location(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_connections, timeout=connect_timeout, command_timeout=60
            )
        except Exception as exc:  # asyncpg raises OS, timeout, protocol and server errors alike
            raise StoreError(f"IMAGEBOT_DATABASE_URL: cannot connect to {where} ({_reason(exc)}).") from None
        try:
            async with pool.acquire() as connection:
                await _migrate(connection, where)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, where, retry_delays=retry_delays)

    async def close(self) -> None:
        await self._pool.close()

    # --- writes -------------------------------------------------------------------------------------------

    async def submit(self, job: Job, *, dedupe_since: float) -> tuple[Job, bool]:
        """Insert ``job``, unless the same user has an identical active job since ``dedupe_since``."""
        attempts = 0

        async def attempt() -> tuple[Job, bool]:
            nonlocal attempts
            attempts += 1
            return await self._submit(job, dedupe_since, retried=attempts > 1)

        return await self._retrying(attempt)

    async def _submit(self, job: Job, dedupe_since: float, *, retried: bool) -> tuple[Job, bool]:
        c = job.context
        async with self._pool.acquire() as connection, connection.transaction():
            if retried:  # the connection may have dropped after an earlier attempt committed
                mine = await connection.fetchrow("SELECT * FROM jobs WHERE id = $1", job.id)
                if mine is not None:
                    return job_from_row(mine), True
            # Serialises identical submissions from every process until this transaction ends.
            key = f"{c.platform}\x1f{c.user}\x1f{job.request_hash}"
            await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
            row = await connection.fetchrow(
                'SELECT * FROM jobs WHERE request_hash = $1 AND platform = $2 AND "user" = $3 AND created_at >= $4'
                " AND status = ANY($5::text[]) ORDER BY created_at, seq LIMIT 1",
                job.request_hash,
                c.platform,
                c.user,
                dedupe_since,
                list(ACTIVE),
            )
            if row is not None:
                return job_from_row(row), False
            await connection.execute(_INSERT, *job_row(job))
        return job, True

    async def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a job (status, costs, results, error, delivered_at...) and return it."""
        values = update_values(changes)
        assignments = ", ".join(f"{name} = ${number}" for number, name in enumerate(values, start=1))
        query = f"UPDATE jobs SET {assignments} WHERE id = ${len(values) + 1} RETURNING *"  # noqa: S608 - names checked
        row = await self._retrying(lambda: self._pool.fetchrow(query, *values.values(), job_id))
        if row is None:
            raise KeyError(job_id)
        return job_from_row(row)

    async def begin_delivery(self, job_id: str) -> Job:
        """One more delivery attempt recorded (before a post of the job's result is made); the job as it is now."""
        query = "UPDATE jobs SET delivery_attempts = delivery_attempts + 1, updated_at = $2 WHERE id = $1 RETURNING *"
        row = await self._retrying(lambda: self._pool.fetchrow(query, job_id, time.time()))
        if row is None:
            raise KeyError(job_id)
        return job_from_row(row)

    # --- reads --------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        row = await self._retrying(lambda: self._pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))
        return job_from_row(row) if row is not None else None

    async def unfinished(self) -> list[Job]:
        """Jobs left queued or running by a process that stopped (start-up recovers or interrupts them)."""
        return await self._select(
            "SELECT * FROM jobs WHERE status = ANY($1::text[]) ORDER BY created_at, seq", list(UNFINISHED)
        )

    async def cut_off(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Jobs of ``platform`` a restart interrupted whose requester has not been told yet (of ``owner``'s)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = $1 AND status = $2 AND notified_at IS NULL"
            " AND ($3::text IS NULL OR owner = $3) ORDER BY created_at, seq",
            platform,
            JobStatus.INTERRUPTED.value,
            owner,
        )

    async def undelivered(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Jobs whose images are stored but were never delivered (of ``owner``'s, when given)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = $1 AND status = $2 AND ($3::text IS NULL OR owner = $3)"
            " ORDER BY created_at, seq",
            platform,
            JobStatus.DONE.value,
            owner,
        )

    # --- platform state ---------------------------------------------------------------------------------

    async def remember_message(self, platform: str, channel: str, ts: str, job_id: str, *, at: float) -> None:
        """The message ``ts`` in ``channel`` shows (or threads under) a result of ``job_id``."""
        query = (
            "INSERT INTO messages (platform, channel, ts, job, at) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (platform, channel, ts) DO UPDATE SET job = excluded.job, at = excluded.at"
        )
        await self._retrying(lambda: self._pool.execute(query, platform, channel, ts, job_id, at))

    async def job_at(self, platform: str, channel: str, ts: str) -> str | None:
        """The job whose result the message ``ts`` in ``channel`` shows, if it is one of ours."""
        query = "SELECT job FROM messages WHERE platform = $1 AND channel = $2 AND ts = $3"
        found = await self._retrying(lambda: self._pool.fetchval(query, platform, channel, ts))
        return str(found) if found is not None else None

    async def message_of(self, platform: str, job_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message remembered for ``job_id`` (a link to its result), if any."""
        query = "SELECT channel, ts FROM messages WHERE platform = $1 AND job = $2 ORDER BY at, ts LIMIT 1"
        row = await self._retrying(lambda: self._pool.fetchrow(query, platform, job_id))
        return (str(row["channel"]), str(row["ts"])) if row is not None else None

    async def first_time(self, key: str, *, at: float) -> bool:
        """True exactly once per ``key`` across every process (an event, across retries and duplicates).

        A retry after a lost connection may find the key its own committed attempt inserted and answer False:
        the event is then dropped rather than answered twice."""
        query = "INSERT INTO handled_events (key, at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING 1"
        inserted = await self._retrying(lambda: self._pool.fetchval(query, key, at))
        return inserted is not None

    async def forget_events(self, before: float) -> None:
        """Drop handled-event keys recorded before ``before`` (platforms retry within minutes)."""
        await self._retrying(lambda: self._pool.execute("DELETE FROM handled_events WHERE at < $1", before))

    # --- leases -------------------------------------------------------------------------------------------

    async def claim_expired(
        self,
        owner: str,
        *,
        expired_before: float,
        lease_until: float,
        platforms: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Take over jobs whose lease ran out (the rules of ``SQLiteJobStore.claim_expired``).

        ``FOR UPDATE SKIP LOCKED``: processes sweeping at the same moment each take different jobs, none waits.
        """
        where, args = claimable_where("$", expired_before, platforms)
        number = len(args)
        query = (
            f"UPDATE jobs SET owner = ${number + 1}, lease_until = ${number + 2} WHERE id IN"  # noqa: S608
            f" (SELECT id FROM jobs WHERE {where} ORDER BY created_at, seq LIMIT ${number + 3}"
            " FOR UPDATE SKIP LOCKED) RETURNING *"
        )
        rows = await self._fetch(query, *args, owner, lease_until, limit)
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.created_at)

    async def release(self, owner: str) -> None:
        """Hand back every lease ``owner`` holds (a clean exit): other processes may take those jobs at once."""
        query = "UPDATE jobs SET lease_until = NULL WHERE owner = $1 AND lease_until IS NOT NULL"
        await self._retrying(lambda: self._pool.execute(query, owner))

    async def renew(self, owner: str, job_ids: Collection[str], lease_until: float) -> set[str]:
        """Extend ``owner``'s leases on ``job_ids``; returns the ids still ``owner``'s (others were taken over)."""
        if not job_ids:
            return set()
        rows = await self._fetch(
            "UPDATE jobs SET lease_until = $1 WHERE owner = $2 AND id = ANY($3::text[]) RETURNING id",
            lease_until,
            owner,
            list(job_ids),
        )
        return {row["id"] for row in rows}

    async def history(self, *, user: str | None = None, limit: int = 20) -> list[Job]:
        if user is None:
            return await self._select("SELECT * FROM jobs ORDER BY created_at DESC, seq DESC LIMIT $1", limit)
        return await self._select(
            """SELECT * FROM jobs WHERE "user" = $1 OR platform || ':' || "user" = $1"""
            " ORDER BY created_at DESC, seq DESC LIMIT $2",
            user,
            limit,
        )

    async def prunable(self, before: float) -> list[Job]:
        """Jobs older than ``before`` with files on disk: results, or the inputs of failed and interrupted jobs."""
        return await self._select(
            "SELECT * FROM jobs WHERE created_at < $1 AND NOT results_pruned AND status <> ALL($2::text[])"  # noqa: S608
            f" AND (results <> '[]'::jsonb OR {_INPUTS} > 0) ORDER BY created_at, seq",
            before,
            list(UNFINISHED),
        )

    async def spend(self, since: float, *, context: JobContext | None = None, per: str = "all") -> Spend:
        """Images and dollars counted against a budget since ``since`` (the rules of ``SQLiteJobStore.spend``)."""
        query = (
            f"SELECT coalesce(sum(images_requested), 0), coalesce(sum({CHARGE}), 0)"  # noqa: S608 - fixed text
            f" FROM jobs WHERE created_at >= $1 AND (paid_at IS NOT NULL OR status IN {RESERVING})"
        )
        args: list[Any] = [since]
        if per == "user" and context is not None:
            query += ' AND platform = $2 AND "user" = $3'
            args += [context.platform, context.user]
        elif per == "workspace" and context is not None:
            query += " AND platform = $2 AND workspace IS NOT DISTINCT FROM $3"
            args += [context.platform, context.workspace]
        images, dollars = await self._retrying(lambda: self._pool.fetchrow(query, *args))  # an aggregate: one row
        return Spend(int(images), float(dollars))

    async def usage(
        self, since: float, *, by: str = "user", workspace: tuple[str, str] | None = None
    ) -> list[UsageRow]:
        """Jobs, images and dollars per user, channel or workspace since ``since``: paid jobs only (of one
        ``(platform, workspace)`` when given)."""
        if by not in USAGE_KEYS:
            raise ValueError(f"usage by {by!r}")
        within = " AND platform = $2 AND workspace = $3" if workspace is not None else ""
        rows = await self._fetch(
            f'SELECT ({USAGE_KEYS[by]}) COLLATE "C" AS k, count(*), sum(images_requested), sum({CHARGE}) FROM jobs'  # noqa: S608
            f" WHERE created_at >= $1 AND paid_at IS NOT NULL{within} GROUP BY k ORDER BY 4 DESC, k",
            since,
            *(workspace or ()),
        )
        return [
            UsageRow(str(k), int(jobs), int(images or 0), float(dollars or 0.0)) for k, jobs, images, dollars in rows
        ]

    async def _select(self, query: str, *args: Any) -> list[Job]:
        return [job_from_row(row) for row in await self._fetch(query, *args)]

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._retrying(lambda: self._pool.fetch(query, *args))

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; when the connection was lost, again on a fresh one (the pool replaces it)."""
        for delay in (*self._retry_delays, None):
            try:
                return await operation()
            except _CONNECTION_LOST as exc:
                if delay is None:
                    raise DatabaseUnavailableError(detail=f"{self.where}: {type(exc).__name__}") from None
                log.warning("job database %s: connection lost (%s), retrying", self.where, type(exc).__name__)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


async def _migrate(connection: asyncpg.Connection, where: str) -> None:
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        version = int(await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The job database {where} was written by a newer imagebot (schema {version}, this one knows "
                f"{SCHEMA_VERSION}). Upgrade imagebot or use another database."
            )
        for number in range(version, SCHEMA_VERSION):
            await connection.execute(MIGRATIONS[number])
            await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", number + 1)
            log.info("job database %s migrated to schema %d", where, number + 1)


def _reason(exc: Exception) -> str:
    """Why a connection failed, in words an operator can act on (server text is scrubbed)."""
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return "the user name or password was refused"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "no such database: create it first"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is PostgreSQL running there?"
    if isinstance(exc, OSError):
        return exc.strerror or "unreachable"
    if isinstance(exc, asyncpg.PostgresError):
        return redact(str(exc.args[0]) if exc.args else type(exc).__name__)
    return f"not a usable PostgreSQL URL or server ({type(exc).__name__})"
