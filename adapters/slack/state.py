"""The adapter's own small durable state: which Slack message shows which job, and events already handled.

Slack events about a thread carry only the parent's ``thread_ts``, never its content, and reading the parent
back (``conversations.replies``) is heavily rate-limited for new apps; so the adapter remembers, for every
message it posts with a result, ``(channel, ts) -> job id``. Kept in ``IMAGEBOT_DATA_DIR/slack.sqlite3``,
next to the job store (whose schema belongs to the core), so it survives restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS result_messages (
    channel TEXT NOT NULL, ts TEXT NOT NULL, job TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (channel, ts)
);
CREATE TABLE IF NOT EXISTS handled_events (key TEXT PRIMARY KEY, at REAL NOT NULL);
"""
_HANDLED_KEEP_SECONDS = 24 * 3600.0  # Slack retries within minutes; a day is plenty


class SlackState:
    """Thread-safe SQLite access, always called through ``asyncio.to_thread``."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SlackState:
        state = await asyncio.to_thread(cls, path)
        await asyncio.to_thread(state._forget_old)
        return state

    async def close(self) -> None:
        """Close the database; later calls find nothing and remember nothing (listeners may still be finishing)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:  # never while another thread is inside a statement
            self._closed = True
            self._db.close()

    async def remember(self, channel: str, ts: str, job: str) -> None:
        """``ts`` in ``channel`` shows (or threads under) a result of ``job``."""
        await asyncio.to_thread(self._remember, channel, ts, job)

    async def job_at(self, channel: str, ts: str) -> str | None:
        return await asyncio.to_thread(self._job_at, channel, ts)

    async def message_of(self, job: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message remembered for ``job`` (its buttons, or its images), if any."""
        return await asyncio.to_thread(self._message_of, job)

    async def first_time(self, key: str) -> bool:
        """True exactly once per key (an event's message, across retries and duplicate deliveries)."""
        return await asyncio.to_thread(self._claim, key)

    def _remember(self, channel: str, ts: str, job: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO result_messages (channel, ts, job, at) VALUES (?, ?, ?, ?)",
                (channel, ts, job, time.time()),
            )

    def _message_of(self, job: str) -> tuple[str, str] | None:
        with self._lock:
            if self._closed:
                return None
            row = self._db.execute(
                "SELECT channel, ts FROM result_messages WHERE job = ? ORDER BY ts LIMIT 1", (job,)
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def _job_at(self, channel: str, ts: str) -> str | None:
        with self._lock:
            if self._closed:
                return None
            row = self._db.execute(
                "SELECT job FROM result_messages WHERE channel = ? AND ts = ?", (channel, ts)
            ).fetchone()
        return str(row[0]) if row else None

    def _claim(self, key: str) -> bool:
        with self._lock:
            if self._closed:
                return False
            sql = "INSERT OR IGNORE INTO handled_events (key, at) VALUES (?, ?)"
            cursor = self._db.execute(sql, (key, time.time()))
            return cursor.rowcount == 1

    def _forget_old(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM handled_events WHERE at < ?", (time.time() - _HANDLED_KEEP_SECONDS,))
