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
from collections.abc import Awaitable, Callable
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
    job_from_row,
    job_row,
    update_values,
)

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
    default_message = "I can't reach my job database right now. Please try again in a minute."


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

    # --- reads --------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        row = await self._retrying(lambda: self._pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))
        return job_from_row(row) if row is not None else None

    async def unfinished(self) -> list[Job]:
        """Jobs left queued or running by a process that stopped (start-up recovers or interrupts them)."""
        return await self._select(
            "SELECT * FROM jobs WHERE status = ANY($1::text[]) ORDER BY created_at, seq", list(UNFINISHED)
        )

    async def cut_off(self, platform: str) -> list[Job]:
        """Jobs of ``platform`` a restart interrupted whose requester has not been told yet."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = $1 AND status = $2 AND notified_at IS NULL ORDER BY created_at, seq",
            platform,
            JobStatus.INTERRUPTED.value,
        )

    async def undelivered(self, platform: str) -> list[Job]:
        """Jobs whose images are stored but were never delivered (e.g. the process stopped in between)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = $1 AND status = $2 ORDER BY created_at, seq",
            platform,
            JobStatus.DONE.value,
        )

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

    async def usage(self, since: float, *, by: str = "user") -> list[UsageRow]:
        """Jobs, images and dollars per user, channel or workspace since ``since``: paid jobs only."""
        if by not in USAGE_KEYS:
            raise ValueError(f"usage by {by!r}")
        rows = await self._fetch(
            f'SELECT ({USAGE_KEYS[by]}) COLLATE "C" AS k, count(*), sum(images_requested), sum({CHARGE}) FROM jobs'  # noqa: S608
            " WHERE created_at >= $1 AND paid_at IS NOT NULL GROUP BY k ORDER BY 4 DESC, k",
            since,
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
