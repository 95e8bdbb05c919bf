"""Durable job state: SQLite (WAL, versioned migrations) for the job rows, plain files for the images.

All SQLite work runs on one dedicated worker thread, so the event loop never waits on the disk and
writes are serialised; ``BEGIN IMMEDIATE`` makes check-then-insert atomic across processes too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import itertools
import json
import logging
import mmap
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
    # paid_at: set when the upstream answered with images (the ledger counts only paid jobs). Jobs stored
    # before it existed were paid if they finished, or if a cost was recorded for them.
    """
    ALTER TABLE jobs ADD COLUMN paid_at REAL;
    UPDATE jobs SET paid_at = updated_at WHERE status IN ('done', 'delivered') OR actual_cost IS NOT NULL;
    """,
    # Exactly one answer across crashes: delivery attempts are counted before posting (a restart looks on
    # the platform first when one may have got through), the platform's reply address is kept, and whoever
    # a restart cut off is told once (notified_at).
    """
    ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN reply TEXT;
    ALTER TABLE jobs ADD COLUMN notified_at REAL;
    """,
    # Any process finishes any job: the process working on a job (or delivering it) owns it while its lease
    # lasts, renewing it as it goes; past the lease, another process takes the job over (see ``claim_expired``).
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    CREATE INDEX jobs_by_lease ON jobs (status, lease_until);
    """,
    # Platform state every process must share: which posted message shows which job (a reply in its thread
    # finds the job), and events already handled (a platform's retries and duplicate deliveries answered once).
    """
    CREATE TABLE messages (
        platform TEXT NOT NULL, channel TEXT NOT NULL, ts TEXT NOT NULL, job TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (platform, channel, ts)
    );
    CREATE INDEX messages_by_job ON messages (platform, job);
    CREATE TABLE handled_events (key TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE INDEX handled_events_by_time ON handled_events (at);
    """,
    # started_at: when the provider call began (queue time estimates use recent run durations)
    "ALTER TABLE jobs ADD COLUMN started_at REAL",
)
SCHEMA_VERSION = len(MIGRATIONS)
# The SQL below and the row mapping at the end are shared with bot.store_pg (same columns, same ledger rules);
# "user" is quoted because PostgreSQL reserves the word.
ACTIVE = tuple(s.value for s in JobStatus if s.active)
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
USAGE_KEYS = {
    "user": "platform || ':' || \"user\"",
    "channel": "platform || ':' || coalesce(channel, '-')",
    "workspace": "platform || ':' || coalesce(workspace, '-')",
}
# What a job costs in the ledger (see Job.cost): paid -> actual (estimate if none reported); else the estimate,
# which only the statuses in RESERVING are counted with.
CHARGE = (
    "CASE WHEN paid_at IS NOT NULL THEN coalesce(actual_cost, estimated_cost, 0) ELSE coalesce(estimated_cost, 0) END"
)
RESERVING = f"('{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}')"
# Every column of a job row, in the order of ``job_row``.
JOB_COLUMNS = (
    "id", "kind", "platform", "workspace", "channel", "thread", '"user"', "request", "request_hash", "status",
    "created_at", "updated_at", "images_requested", "estimated_cost", "actual_cost", "model", "provider",
    "error_ref", "error_message", "results", "delivered_at", "results_pruned", "paid_at", "delivery_attempts",
    "reply", "notified_at", "owner", "lease_until", "started_at",
)  # fmt: skip


MAX_DELIVERY_ATTEMPTS = 5


class StoreError(ConfigurationError):
    """The job database cannot be used (damaged, locked, unwritable); says what to do in one line."""


class SQLiteJobStore:
    """The ``JobStore`` port on SQLite. Open with ``await SQLiteJobStore.open(path)``."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        executor: concurrent.futures.ThreadPoolExecutor,
        path: Path,
        busy_timeout: float = 5.0,
    ):
        self._db = connection
        self._executor = executor
        self._closed = False
        self.path = path
        self._busy_ms = int(busy_timeout * 1000)
        self._using = threading.Lock()  # the connection, used by the loop (``_quick``) or the store's thread
        self._commits = 0  # writes since the last checkpoint

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
        return cls(connection, executor, path, busy_timeout)

    async def close(self) -> None:
        """Close the database (again: nothing happens)."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._checkpoint)
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the store's thread, where it may wait (the busy timeout) or read many rows."""
        result = await asyncio.get_running_loop().run_in_executor(self._executor, self._holding, fn, *args)
        self._wrote()  # a read counts as well: a checkpoint with nothing to do costs nothing
        return result

    def _holding(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` with the connection, waiting for another connection's lock for up to the busy timeout
        (SQLite's own busy handler would, but the connection's timeout is 0 for ``_quick``)."""
        deadline = time.monotonic() + self._busy_ms / 1000
        for pause in itertools.chain(_BUSY_PAUSES, itertools.repeat(_BUSY_PAUSES[-1])):
            with self._using:
                try:
                    return fn(*args)
                except sqlite3.OperationalError as exc:
                    if not _locked(exc) or time.monotonic() + pause > deadline:
                        raise
            time.sleep(pause)  # the store's thread: nothing else waits on it but its queue
        raise AssertionError("unreachable")

    async def _quick(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """Run ``fn`` — a statement or two on one row by its key — right here on the loop when it cannot wait:
        the connection is free and the database unlocked. Else, as ``_run``, in the store's thread.

        Such a statement takes ~0.1 ms; a hop to a thread and back costs twice that in wake-ups, and a job makes
        eight of them. Nothing here waits: the connection never waits for a lock (busy timeout 0; ``fn`` is one
        statement or starts with ``BEGIN IMMEDIATE``, so a refusal leaves nothing done: it is run again in the
        thread, which waits) and never checkpoints in a commit (``wal_autocheckpoint`` is off: the store's thread
        checkpoints every ``_CHECKPOINT_EVERY`` writes). What it may still meet: a page of the database not in
        the OS's cache, read from disk (the job table's recent pages are, in a running bot)."""
        if self._using.acquire(blocking=False):
            try:
                result = fn(*args)
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
            else:
                if write:
                    self._wrote()
                return result
            finally:
                self._using.release()
        return await self._run(fn, *args)

    def _wrote(self) -> None:
        self._commits += 1
        if self._commits >= _CHECKPOINT_EVERY and not self._closed:
            self._commits = 0
            self._executor.submit(self._holding, self._checkpoint)  # nobody waits for it

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one will do; the database stays correct either way
            log.warning("job database checkpoint failed: %s", exc)

    # --- writes -------------------------------------------------------------------------------------------

    async def submit(self, job: Job, *, dedupe_since: float) -> tuple[Job, bool]:
        """Insert ``job``, unless the same user has an identical active job since ``dedupe_since``.

        Returns the job that will do the work and whether it is the new one.
        """
        return await self._quick(self._submit, job, dedupe_since)

    def _submit(self, job: Job, dedupe_since: float) -> tuple[Job, bool]:
        with _transaction(self._db):
            marks = ",".join("?" * len(ACTIVE))
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE request_hash = ? AND platform = ? AND user = ? AND created_at >= ?"  # noqa: S608
                f" AND status IN ({marks}) ORDER BY created_at, rowid LIMIT 1",
                (job.request_hash, job.context.platform, job.context.user, dedupe_since, *ACTIVE),
            ).fetchone()
            if row is not None:
                return job_from_row(row), False
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({','.join('?' * len(JOB_COLUMNS))})",  # noqa: S608
                job_row(job),
            )
        return job, True

    async def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a job (status, costs, results, error, delivered_at...) and return it."""
        return await self._quick(self._update, job_id, changes)

    def _update(self, job_id: str, changes: dict[str, Any]) -> Job:
        values = update_values(changes)
        assignments = ", ".join(f"{name} = ?" for name in values)
        return self._returning(
            f"UPDATE jobs SET {assignments} WHERE id = ? RETURNING *",  # noqa: S608 - names checked against Job's
            (*values.values(), job_id),
            job_id,
        )

    async def begin_delivery(self, job_id: str) -> Job:
        """One more delivery attempt recorded (before a post of the job's result is made); the job as it is now."""
        return await self._quick(self._begin_delivery, job_id, time.time())

    def _begin_delivery(self, job_id: str, now: float) -> Job:
        return self._returning(
            "UPDATE jobs SET delivery_attempts = delivery_attempts + 1, updated_at = ? WHERE id = ? RETURNING *",
            (now, job_id),
            job_id,
        )

    def _returning(self, statement: str, args: tuple[Any, ...], job_id: str) -> Job:
        """One statement, its own transaction (autocommit), that returns the job's row."""
        rows = self._db.execute(statement, args).fetchall()  # stepped to the end: committed
        if len(rows) != 1:
            raise KeyError(job_id)
        return job_from_row(rows[0])

    async def unfinished(self) -> list[Job]:
        """Jobs left queued or running by a process that stopped (start-up recovers or interrupts them)."""
        return await self._select("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at, rowid", UNFINISHED)

    # --- reads --------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await self._quick(self._get, job_id, write=False)

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row is not None else None

    async def cut_off(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Jobs of ``platform`` a restart interrupted whose requester has not been told yet (of ``owner``'s)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = ? AND status = ? AND notified_at IS NULL"
            " AND (? IS NULL OR owner = ?) ORDER BY created_at, rowid",
            (platform, JobStatus.INTERRUPTED.value, owner, owner),
        )

    async def undelivered(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Jobs whose images are stored but were never delivered (of ``owner``'s, when given)."""
        return await self._select(
            "SELECT * FROM jobs WHERE platform = ? AND status = ? AND (? IS NULL OR owner = ?)"
            " ORDER BY created_at, rowid",
            (platform, JobStatus.DONE.value, owner, owner),
        )

    # --- platform state ---------------------------------------------------------------------------------

    async def remember_message(self, platform: str, channel: str, ts: str, job_id: str, *, at: float) -> None:
        """The message ``ts`` in ``channel`` shows (or threads under) a result of ``job_id``."""

        def remember() -> None:
            with _transaction(self._db):
                self._db.execute(
                    "INSERT OR REPLACE INTO messages (platform, channel, ts, job, at) VALUES (?, ?, ?, ?, ?)",
                    (platform, channel, ts, job_id, at),
                )

        await self._run(remember)

    async def job_at(self, platform: str, channel: str, ts: str) -> str | None:
        """The job whose result the message ``ts`` in ``channel`` shows, if it is one of ours."""

        def find() -> str | None:
            row = self._db.execute(
                "SELECT job FROM messages WHERE platform = ? AND channel = ? AND ts = ?", (platform, channel, ts)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(find)

    async def message_of(self, platform: str, job_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message remembered for ``job_id`` (a link to its result), if any."""

        def find() -> tuple[str, str] | None:
            row = self._db.execute(
                "SELECT channel, ts FROM messages WHERE platform = ? AND job = ? ORDER BY at, ts LIMIT 1",
                (platform, job_id),
            ).fetchone()
            return (str(row[0]), str(row[1])) if row else None

        return await self._run(find)

    async def first_time(self, key: str, *, at: float) -> bool:
        """True exactly once per ``key`` across every process (an event, across retries and duplicates)."""

        def claim() -> bool:
            with _transaction(self._db):
                cursor = self._db.execute("INSERT OR IGNORE INTO handled_events (key, at) VALUES (?, ?)", (key, at))
                return cursor.rowcount == 1

        return await self._run(claim)

    async def forget_events(self, before: float) -> None:
        """Drop handled-event keys recorded before ``before`` (platforms retry within minutes)."""

        def forget() -> None:
            with _transaction(self._db):
                self._db.execute("DELETE FROM handled_events WHERE at < ?", (before,))

        await self._run(forget)

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
        """Take over jobs whose lease ran out before ``expired_before`` (or that never had one): waiting and
        running jobs of any platform; finished-undelivered and untold-interrupted ones only of ``platforms``
        (None: all), which this process can deliver. They become ``owner``'s until ``lease_until``.

        ``BEGIN IMMEDIATE`` makes the select-then-update atomic against every other process on the file.
        """
        where, args = claimable_where("?", expired_before, platforms)
        return await self._run(self._claim, owner, lease_until, where, args, limit)

    def _claim(self, owner: str, lease_until: float, where: str, args: list[Any], limit: int) -> list[Job]:
        with _transaction(self._db):
            query = f"SELECT id FROM jobs WHERE {where} ORDER BY created_at, rowid LIMIT ?"  # noqa: S608
            ids = [row[0] for row in self._db.execute(query, (*args, limit))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            self._db.execute(
                f"UPDATE jobs SET owner = ?, lease_until = ? WHERE id IN ({marks})",  # noqa: S608
                (owner, lease_until, *ids),
            )
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY created_at, rowid",  # noqa: S608
                ids,
            ).fetchall()
        return [job_from_row(row) for row in rows]

    async def release(self, owner: str) -> None:
        """Hand back every lease ``owner`` holds (a clean exit): other processes may take those jobs at once."""

        def release() -> None:
            with _transaction(self._db):
                self._db.execute(
                    "UPDATE jobs SET lease_until = NULL WHERE owner = ? AND lease_until IS NOT NULL", (owner,)
                )

        await self._run(release)

    async def renew(self, owner: str, job_ids: Collection[str], lease_until: float) -> set[str]:
        """Extend ``owner``'s leases on ``job_ids``; returns the ids still ``owner``'s (others were taken over)."""
        if not job_ids:
            return set()
        return await self._run(self._renew, owner, list(job_ids), lease_until)

    def _renew(self, owner: str, ids: list[str], lease_until: float) -> set[str]:
        marks = ",".join("?" * len(ids))
        with _transaction(self._db):
            self._db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND id IN ({marks})",  # noqa: S608
                (lease_until, owner, *ids),
            )
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE owner = ? AND id IN ({marks})",  # noqa: S608
                (owner, *ids),
            ).fetchall()
        return {row[0] for row in rows}

    async def history(self, *, user: str | None = None, limit: int = 20) -> list[Job]:
        if user is None:
            return await self._select("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return await self._select(
            "SELECT * FROM jobs WHERE user = ? OR platform || ':' || user = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (user, user, limit),
        )

    async def prunable(self, before: float) -> list[Job]:
        """Jobs older than ``before`` with files on disk: results, or the inputs of failed and interrupted jobs."""
        return await self._select(
            "SELECT * FROM jobs WHERE created_at < ? AND results_pruned = 0 AND status NOT IN (?, ?)"
            " AND (results != '[]' OR coalesce(json_array_length(request, '$.inputs'), 0) > 0)"
            " ORDER BY created_at, rowid",
            (before, *UNFINISHED),
        )

    async def spend(self, since: float, *, context: JobContext | None = None, per: str = "all") -> Spend:
        """Images and dollars counted against a budget since ``since``: ``per`` is "user", "workspace" or "all".

        Paid jobs count their actual cost (their estimate when none was reported); jobs still waiting or
        running count their estimate, so that concurrent jobs can't overshoot a budget together; jobs that
        never got a paid answer (failed, interrupted, held for confirmation) count nothing.
        """
        return await self._run(self._spend, since, context, per)

    def _spend(self, since: float, context: JobContext | None, per: str) -> Spend:
        query = (
            f"SELECT coalesce(sum(images_requested), 0), coalesce(sum({CHARGE}), 0)"  # noqa: S608 - fixed text
            f" FROM jobs WHERE created_at >= ? AND (paid_at IS NOT NULL OR status IN {RESERVING})"
        )
        args: list[Any] = [since]
        if per == "user" and context is not None:
            query += " AND platform = ? AND user = ?"
            args += [context.platform, context.user]
        elif per == "workspace" and context is not None:
            query += " AND platform = ? AND workspace IS ?"
            args += [context.platform, context.workspace]
        images, dollars = self._db.execute(query, args).fetchone()
        return Spend(int(images), float(dollars))

    async def usage(
        self, since: float, *, by: str = "user", workspace: tuple[str, str] | None = None
    ) -> list[UsageRow]:
        """Jobs, images and dollars per user, channel or workspace since ``since``: paid jobs only (of one
        ``(platform, workspace)`` when given)."""
        if by not in USAGE_KEYS:
            raise ValueError(f"usage by {by!r}")
        return await self._run(self._usage, since, USAGE_KEYS[by], workspace)

    def _usage(self, since: float, key: str, workspace: tuple[str, str] | None) -> list[UsageRow]:
        within = " AND platform = ? AND workspace = ?" if workspace is not None else ""
        rows = self._db.execute(
            f"SELECT {key} AS k, count(*), sum(images_requested),"  # noqa: S608 - key from a fixed table
            f" sum({CHARGE}) FROM jobs"
            f" WHERE created_at >= ? AND paid_at IS NOT NULL{within} GROUP BY k ORDER BY 4 DESC, k",
            (since, *(workspace or ())),
        ).fetchall()
        return [
            UsageRow(str(k), int(jobs), int(images or 0), float(dollars or 0.0)) for k, jobs, images, dollars in rows
        ]

    async def _select(self, query: str, args: Iterable[Any]) -> list[Job]:
        def select() -> list[Job]:
            return [job_from_row(row) for row in self._db.execute(query, tuple(args))]

        return await self._run(select)


SPOOL_NAME = "response.spool"
SPENT_SPOOL_NAME = "response.spool.spent"  # an emptied spool (see ``ResultFiles.discard_spool``)
SPOOL_POOL = 16  # recycled spools kept for answers to be written over (~3 MB each)


class ResultFiles:
    """Images on disk: ``<data dir>/results/<job id>/<file>`` (results, and the inputs a reroll needs)."""

    def __init__(self, root: Path):
        self.root = root
        self.pool = root / ".spools"  # recycled spools (not a job id: those are alphanumeric)

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
            if not write_direct(temporary, data):
                temporary.write_bytes(data)
            temporary.replace(target)  # a crash never leaves half an image under the real name

    def read(self, job_id: str, name: str) -> bytes:
        return (self.folder(job_id) / Path(name).name).read_bytes()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def spool(self, job_id: str) -> Path:
        """Where the upstream's answer for the job is written before it is decoded (see ``WriteAhead``)."""
        return self.folder(job_id) / SPOOL_NAME

    def discard_spool(self, job_id: str) -> None:
        """Drop the job's spool (its images are stored, or it never held a usable answer).

        The file is recycled, as PostgreSQL recycles its WAL segments: moved into ``.spools`` for the next answer
        to be written over (``reuse_spool``), its disk blocks and cached pages still its own — writing a new
        3 MB file cost ~6 ms on a VM whose host takes freed memory back, overwriting one ~0.4 ms. With
        ``SPOOL_POOL`` there already, it is emptied and set aside in the job's folder instead (gone when the
        results are pruned): never deleted, since every file ext4 (without a journal) creates skips the inodes
        deleted in the last minutes one by one.
        """
        folder = self.folder(job_id)
        spool = folder / SPOOL_NAME
        try:
            if self._pooled() < SPOOL_POOL:
                os.replace(spool, self.pool / job_id)
            else:
                spent = folder / SPENT_SPOOL_NAME
                os.replace(spool, spent)
                os.truncate(spent, 0)
        except FileNotFoundError:
            pass
        (folder / (SPOOL_NAME + ".part")).unlink(missing_ok=True)  # a body cut off: rare

    def _pooled(self) -> int:
        try:
            return len(os.listdir(self.pool))
        except FileNotFoundError:
            self.pool.mkdir(parents=True, exist_ok=True)
            return 0

    def reuse_spool(self, part: Path) -> bool:
        """Move a recycled spool to ``part`` (where an answer is about to be written over it); False if none."""
        try:
            names = os.listdir(self.pool)
        except FileNotFoundError:
            return False
        for name in names:
            try:
                os.replace(self.pool / name, part)  # atomic: of two processes after the same file, one gets it
            except FileNotFoundError:
                continue
            return True
        return False


# --- files written past the page cache ------------------------------------------------------------------------

_DIRECT_ALIGN = 4096  # O_DIRECT wants buffers, offsets and lengths in multiples of the device's block (≤ 4 KiB)
_DIRECT_PIECE = 1024 * 1024
_staging = threading.local()  # each worker thread's page-aligned buffer, kept for its next file


def write_direct(path: Path, data: bytes) -> bool:
    """Write ``data`` as the file ``path`` with O_DIRECT, past the page cache; False (nothing written) where the
    platform or the file system does not support it (tmpfs, some network file systems): write it normally then.

    Results are written once and rarely read again (a redelivery, a Vary of an old image): sending them past the
    page cache keeps megabytes per result from growing it, which costs more than the write itself (on a VM
    whose host takes freed memory back: ~2 ms per MB of new cache, against ~0.2 ms per MB this way) and pushes
    out what is read often, the job database among it.
    """
    direct = getattr(os, "O_DIRECT", 0)
    if not direct or len(data) < _DIRECT_ALIGN:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | direct, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    try:
        buffer: mmap.mmap | None = getattr(_staging, "buffer", None)
        if buffer is None:
            buffer = _staging.buffer = mmap.mmap(-1, _DIRECT_PIECE)  # anonymous maps are page-aligned
        source = memoryview(data)
        for start in range(0, len(data), _DIRECT_PIECE):
            piece = source[start : start + _DIRECT_PIECE]
            padded = -(-len(piece) // _DIRECT_ALIGN) * _DIRECT_ALIGN
            buffer[: len(piece)] = piece
            buffer[len(piece) : padded] = bytes(padded - len(piece))  # the last block: zeros, cut off below
            with memoryview(buffer) as staged:
                if os.write(fd, staged[:padded]) != padded:
                    raise OSError(errno.EIO, "short O_DIRECT write")
        os.ftruncate(fd, len(data))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
            raise
        return False  # refused after opening (alignment the device wants bigger): the caller rewrites it
    finally:
        os.close(fd)
    return True


# --- SQLite plumbing (worker thread only) ---------------------------------------------------------------------


_BUSY_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)  # as SQLite's
_CHECKPOINT_EVERY = 200  # writes between two checkpoints of the WAL (SQLite's own default: ~1000 pages)


def _locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


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
        mode = _journal_mode_wal(db, busy_timeout)
        if str(mode).lower() != "wal":
            log.warning("job database %s is in %s mode, not WAL", where, mode)
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the store checkpoints in its thread, never in a commit
        db.execute("PRAGMA foreign_keys = ON")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        _migrate(db, where)
        db.execute("PRAGMA busy_timeout = 0")  # from here the store's thread waits for locks itself (``_holding``)
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


def _journal_mode_wal(db: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL. Changing the journal mode of a new file can answer "locked" at once, without waiting for
    the busy timeout, while another process does the same: retry for as long as the busy timeout allows."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the store's own worker thread, never the event loop


def _migrate(db: sqlite3.Connection, where: str) -> None:
    # The version is read inside the write transaction: two processes opening a new file at once migrate it once.
    with _transaction(db):
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The job database {where} was written by a newer imagebot (schema {version}, this one knows "
                f"{SCHEMA_VERSION}). Upgrade imagebot or use another IMAGEBOT_DATA_DIR."
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
            log.info("job database migrated to schema %d", number + 1)


# --- shared with bot.store_pg ------------------------------------------------------------------------------


def claimable_where(mark: str, expired_before: float, platforms: Collection[str] | None) -> tuple[str, list[Any]]:
    """Jobs a process may take over once their lease has run out: waiting or running (to finish them), finished
    but not delivered (to deliver them, unless ``MAX_DELIVERY_ATTEMPTS`` posts failed already: a channel gone for
    good is not retried every lease), interrupted with their requester not told yet (to tell them).

    The condition of ``claim_expired`` with ``mark`` as placeholder ("?", or "$" for numbered ones), and its
    arguments."""
    args: list[Any] = []

    def place(value: Any) -> str:
        args.append(value)
        return f"${len(args)}" if mark == "$" else "?"

    def places(values: Iterable[Any]) -> str:
        return ", ".join(place(value) for value in values)

    expired = f"(lease_until IS NULL OR lease_until < {place(expired_before)})"  # "?" marks: in text order
    running = f"status IN ({places(UNFINISHED)})"
    deliverable = (
        f"((status = {place(JobStatus.DONE.value)} AND delivery_attempts < {place(MAX_DELIVERY_ATTEMPTS)})"
        f" OR (status = {place(JobStatus.INTERRUPTED.value)} AND notified_at IS NULL))"
    )
    if platforms is not None:
        deliverable += f" AND platform IN ({places(platforms) or 'NULL'})"
    where = f"{expired} AND ({running} OR ({deliverable}))"
    return where, args


# --- the row mapping (shared with bot.store_pg) ---------------------------------------------------------------


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


_UPDATABLE = frozenset(f.name for f in dataclasses.fields(Job)) - {"id", "context", "kind", "created_at"}


def update_values(changes: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """Check the fields ``JobStore.update`` may change and turn them into column values."""
    unknown = changes.keys() - _UPDATABLE
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    values = dict(changes)
    values.setdefault("updated_at", time.time() if now is None else now)
    if "status" in values:
        values["status"] = JobStatus(values["status"]).value
    if "results" in values:
        values["results"] = _dump_results(values["results"])
    if "request" in values:
        values["request"] = json.dumps(values["request"])
    if "results_pruned" in values:
        values["results_pruned"] = bool(values["results_pruned"])
    return values


def job_row(job: Job) -> tuple[Any, ...]:
    """The column values of ``job``, in ``JOB_COLUMNS`` order."""
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
        job.results_pruned,
        job.paid_at,
        job.delivery_attempts,
        c.reply,
        job.notified_at,
        job.owner,
        job.lease_until,
        job.started_at,
    )


def _dump_results(results: Iterable[StoredImage]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in results])


def job_from_row(row: Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        context=JobContext(row["platform"], row["user"], row["workspace"], row["channel"], row["thread"], row["reply"]),
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
        paid_at=row["paid_at"],
        delivery_attempts=row["delivery_attempts"],
        notified_at=row["notified_at"],
        owner=row["owner"],
        lease_until=row["lease_until"],
        started_at=row["started_at"],
    )
