"""Durable job state: SQLite (WAL, versioned migrations) for the job rows, plain files for the images.

All SQLite work runs on one dedicated worker thread, so the event loop never waits on the disk and
writes are serialised; ``BEGIN IMMEDIATE`` makes check-then-insert atomic across processes too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import ConfigurationError
from bot.models import Job, JobContext, JobStatus, Spend, StoredImage, UsageRow

log = logging.getLogger(__name__)
T = TypeVar("T")

# Each entry moves the schema one version up; PRAGMA user_version records where a database stands.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        platform TEXT NOT NULL,
        workspace TEXT,
        channel TEXT,
        thread TEXT,
        user TEXT NOT NULL,
        request TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        images_requested INTEGER NOT NULL,
        estimated_cost REAL,
        actual_cost REAL,
        model TEXT,
        provider TEXT,
        error_ref TEXT,
        error_message TEXT,
        results TEXT NOT NULL DEFAULT '[]',
        delivered_at REAL
    );
    CREATE INDEX jobs_by_user ON jobs (platform, user, created_at);
    CREATE INDEX jobs_by_hash ON jobs (request_hash, status);
    """,
    """
    ALTER TABLE jobs ADD COLUMN results_pruned INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_time ON jobs (created_at);
    CREATE INDEX jobs_by_workspace ON jobs (platform, workspace, created_at);
    CREATE INDEX jobs_by_status ON jobs (status);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_ACTIVE = tuple(s.value for s in JobStatus if s.active)
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_USAGE_KEYS = {"user": "platform || ':' || user", "channel": "platform || ':' || coalesce(channel, '-')"}
_USAGE_KEYS["workspace"] = "platform || ':' || coalesce(workspace, '-')"


class StoreError(ConfigurationError):
    """The job database cannot be used (damaged, locked, unwritable); says what to do in one line."""


class SQLiteJobStore:
    """The ``JobStore`` port on SQLite. Open with ``await SQLiteJobStore.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, executor: concurrent.futures.ThreadPoolExecutor, path: Path):
        self._db = connection
        self._executor = executor
        self.path = path

    # --- lifecycle ----------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 5.0) -> SQLiteJobStore:
        """Open (creating if needed) and migrate the database, or raise ``StoreError`` saying why not."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _connect, path, busy_timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor, path)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- writes -------------------------------------------------------------------------------------------

    async def submit(self, job: Job, *, dedupe_since: float) -> tuple[Job, bool]:
        """Insert ``job``, unless the same user has an identical active job since ``dedupe_since``.

        Returns the job that will do the work and whether it is the new one.
        """
        return await self._run(self._submit, job, dedupe_since)

    def _submit(self, job: Job, dedupe_since: float) -> tuple[Job, bool]:
        with _transaction(self._db):
            marks = ",".join("?" * len(_ACTIVE))
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE request_hash = ? AND platform = ? AND user = ? AND created_at >= ?"  # noqa: S608
                f" AND status IN ({marks}) ORDER BY created_at LIMIT 1",
                (job.request_hash, job.context.platform, job.context.user, dedupe_since, *_ACTIVE),
            ).fetchone()
            if row is not None:
                return _job(row), False
            self._db.execute(
                "INSERT INTO jobs (id, kind, platform, workspace, channel, thread, user, request, request_hash,"
                " status, created_at, updated_at, images_requested, estimated_cost, actual_cost, model, provider,"
                " error_ref, error_message, results, delivered_at, results_pruned)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _row(job),
            )
        return job, True

    async def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a job (status, costs, results, error, delivered_at...) and return it."""
        return await self._run(self._update, job_id, changes)

    def _update(self, job_id: str, changes: dict[str, Any]) -> Job:
        allowed = {f.name for f in dataclasses.fields(Job)} - {"id", "context", "kind", "created_at"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = dict(changes)
        values.setdefault("updated_at", time.time())
        if "status" in values:
            values["status"] = JobStatus(values["status"]).value
        if "results" in values:
            values["results"] = _dump_results(values["results"])
        if "request" in values:
            values["request"] = json.dumps(values["request"])
        if "results_pruned" in values:
            values["results_pruned"] = int(bool(values["results_pruned"]))
        assignments = ", ".join(f"{name} = ?" for name in values)
        with _transaction(self._db):
            cursor = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?",  # noqa: S608 - names checked against Job's fields
                (*values.values(), job_id),
            )
            if cursor.rowcount != 1:
                raise KeyError(job_id)
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    async def interrupt_unfinished(self) -> list[Job]:
        """At start-up: jobs a previous process left queued or running can't finish; mark them interrupted."""
        return await self._run(self._interrupt)

    def _interrupt(self) -> list[Job]:
        with _transaction(self._db):
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at", _UNFINISHED
            ).fetchall()
            self._db.execute(
                "UPDATE jobs SET status = ?, updated_at = ? WHERE status IN (?, ?)",
                (JobStatus.INTERRUPTED.value, time.time(), *_UNFINISHED),
            )
        return [dataclasses.replace(_job(r), status=JobStatus.INTERRUPTED) for r in rows]

    # --- reads --------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    async def undelivered(self, platform: str) -> list[Job]:
        """Jobs whose images are stored but were never delivered (e.g. the process stopped in between)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = ? AND status = ? ORDER BY created_at", (platform, JobStatus.DONE.value)
        )

    async def history(self, *, user: str | None = None, limit: int = 20) -> list[Job]:
        if user is None:
            return await self._select("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        return await self._select(
            "SELECT * FROM jobs WHERE user = ? OR platform || ':' || user = ? ORDER BY created_at DESC LIMIT ?",
            (user, user, limit),
        )

    async def prunable(self, before: float) -> list[Job]:
        """Jobs older than ``before`` with files on disk: results, or the inputs of failed and interrupted jobs."""
        return await self._select(
            "SELECT * FROM jobs WHERE created_at < ? AND results_pruned = 0 AND status NOT IN (?, ?)"
            " AND (results != '[]' OR coalesce(json_array_length(request, '$.inputs'), 0) > 0)",
            (before, *_UNFINISHED),
        )

    async def spend(self, since: float, *, context: JobContext | None = None, per: str = "all") -> Spend:
        """Images and dollars counted against a budget since ``since``: ``per`` is "user", "workspace" or "all".

        Failed jobs count their actual cost only; unfinished ones count their estimate.
        """
        return await self._run(self._spend, since, context, per)

    def _spend(self, since: float, context: JobContext | None, per: str) -> Spend:
        failed = JobStatus.FAILED.value
        query = (
            "SELECT coalesce(sum(CASE WHEN status = ? THEN 0 ELSE images_requested END), 0),"
            " coalesce(sum(CASE WHEN status = ? THEN coalesce(actual_cost, 0)"
            " ELSE coalesce(actual_cost, estimated_cost, 0) END), 0)"
            " FROM jobs WHERE created_at >= ? AND status != ?"  # a job held for confirmation has spent nothing yet
        )
        args: list[Any] = [failed, failed, since, JobStatus.AWAITING_CONFIRMATION.value]
        if per == "user" and context is not None:
            query += " AND platform = ? AND user = ?"
            args += [context.platform, context.user]
        elif per == "workspace" and context is not None:
            query += " AND platform = ? AND workspace IS ?"
            args += [context.platform, context.workspace]
        images, dollars = self._db.execute(query, args).fetchone()
        return Spend(int(images), float(dollars))

    async def usage(self, since: float, *, by: str = "user") -> list[UsageRow]:
        """Jobs, images and dollars per user, channel or workspace since ``since`` (failed jobs excluded)."""
        if by not in _USAGE_KEYS:
            raise ValueError(f"usage by {by!r}")
        return await self._run(self._usage, since, _USAGE_KEYS[by])

    def _usage(self, since: float, key: str) -> list[UsageRow]:
        rows = self._db.execute(
            f"SELECT {key} AS k, count(*), sum(images_requested),"  # noqa: S608 - key from a fixed table
            " sum(coalesce(actual_cost, estimated_cost, 0)) FROM jobs"
            " WHERE created_at >= ? AND status NOT IN (?, ?) GROUP BY k ORDER BY 4 DESC, k",
            (since, JobStatus.FAILED.value, JobStatus.AWAITING_CONFIRMATION.value),
        ).fetchall()
        return [
            UsageRow(str(k), int(jobs), int(images or 0), float(dollars or 0.0)) for k, jobs, images, dollars in rows
        ]

    async def _select(self, query: str, args: Iterable[Any]) -> list[Job]:
        def select() -> list[Job]:
            return [_job(row) for row in self._db.execute(query, tuple(args))]

        return await self._run(select)


class ResultFiles:
    """Images on disk: ``<data dir>/results/<job id>/<file>`` (results, and the inputs a reroll needs)."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise ValueError("job ids are alphanumeric")
        return self.root / job_id

    def write(self, job_id: str, files: dict[str, bytes]) -> None:
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            target = folder / Path(name).name
            temporary = target.with_suffix(target.suffix + ".part")
            temporary.write_bytes(data)
            temporary.replace(target)  # a crash never leaves half an image under the real name

    def read(self, job_id: str, name: str) -> bytes:
        return (self.folder(job_id) / Path(name).name).read_bytes()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


# --- SQLite plumbing (worker thread only) ---------------------------------------------------------------------


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if kind else "COMMIT")


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    where = str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"IMAGEBOT_DATA_DIR: cannot create {path.parent} ({exc.strerror}).") from None
    try:
        db = sqlite3.connect(where, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"IMAGEBOT_DATA_DIR: cannot open the job database {where} ({exc}).") from None
    try:
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("job database %s is in %s mode, not WAL", where, mode)
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        _migrate(db, where)
    except sqlite3.OperationalError as exc:
        db.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(
                f"The job database {where} is locked by another process (is another imagebot running with "
                "the same IMAGEBOT_DATA_DIR?)."
            ) from None
        raise StoreError(f"The job database {where} cannot be used: {exc}.") from None
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(
            f"The job database {where} is damaged or not a database ({exc}). Move it away to start afresh."
        ) from None
    return db


def _migrate(db: sqlite3.Connection, where: str) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The job database {where} was written by a newer imagebot (schema {version}, this one knows "
            f"{SCHEMA_VERSION}). Upgrade imagebot or use another IMAGEBOT_DATA_DIR."
        )
    for number in range(version, SCHEMA_VERSION):
        with _transaction(db):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        log.info("job database migrated to schema %d", number + 1)


def _row(job: Job) -> tuple[Any, ...]:
    c = job.context
    return (
        job.id,
        job.kind,
        c.platform,
        c.workspace,
        c.channel,
        c.thread,
        c.user,
        json.dumps(job.request),
        job.request_hash,
        job.status.value,
        job.created_at,
        job.updated_at,
        job.images_requested,
        job.estimated_cost,
        job.actual_cost,
        job.model,
        job.provider,
        job.error_ref,
        job.error_message,
        _dump_results(job.results),
        job.delivered_at,
        int(job.results_pruned),
    )


def _dump_results(results: Iterable[StoredImage]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in results])


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        context=JobContext(row["platform"], row["user"], row["workspace"], row["channel"], row["thread"]),
        request=json.loads(row["request"]),
        request_hash=row["request_hash"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        images_requested=row["images_requested"],
        estimated_cost=row["estimated_cost"],
        actual_cost=row["actual_cost"],
        model=row["model"],
        provider=row["provider"],
        error_ref=row["error_ref"],
        error_message=row["error_message"],
        results=tuple(StoredImage(**r) for r in json.loads(row["results"])),
        delivered_at=row["delivered_at"],
        results_pruned=bool(row["results_pruned"]),
    )
