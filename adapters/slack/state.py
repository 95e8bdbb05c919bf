"""Slack's share of the durable state, kept in the job store so that every process sees it: which Slack message
shows which job, and events already handled.

Slack events about a thread carry only the parent's ``thread_ts``, never its content, and reading the parent
back (``conversations.replies``) is heavily rate-limited for new apps; so the adapter remembers, for every
message it posts with a result, ``(channel, ts) -> job id``. With several processes (Socket Mode connections or
HTTP behind a load balancer) a reply may reach any of them, and Slack's retries and its double delivery of a
mention (``message`` and ``app_mention``) may reach two: both tables live behind the ``JobStore`` port (SQLite
or PostgreSQL), never in one process's memory or file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

from bot.ports import JobStore

log = logging.getLogger(__name__)

PLATFORM = "slack"
_HANDLED_KEEP_SECONDS = 24 * 3600.0  # Slack retries within minutes; a day is plenty


class SlackState:
    """The Slack adapter's view of the shared store. Open with ``await SlackState.open(store)``."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._closed = False

    @classmethod
    async def open(cls, store: JobStore, *, legacy: Path | None = None) -> SlackState:
        """``legacy``: the ``slack.sqlite3`` older versions kept in the data folder; its threads are imported
        once (then the file is renamed), so replies to results posted before the upgrade still find their job."""
        state = cls(store)
        if legacy is not None and await asyncio.to_thread(legacy.exists):
            await state._import(legacy)
        await store.forget_events(time.time() - _HANDLED_KEEP_SECONDS)
        return state

    async def close(self) -> None:
        """Later calls find nothing and remember nothing (listeners may still be finishing); the store stays open."""
        self._closed = True

    async def remember(self, channel: str, ts: str, job: str) -> None:
        """``ts`` in ``channel`` shows (or threads under) a result of ``job``."""
        if not self._closed:
            await self._store.remember_message(PLATFORM, channel, ts, job, at=time.time())

    async def job_at(self, channel: str, ts: str) -> str | None:
        if self._closed:
            return None
        return await self._store.job_at(PLATFORM, channel, ts)

    async def message_of(self, job: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message remembered for ``job`` (its buttons, or its images), if any."""
        if self._closed:
            return None
        return await self._store.message_of(PLATFORM, job)

    async def first_time(self, key: str) -> bool:
        """True exactly once per key (an event's message, across retries, duplicate deliveries and processes)."""
        if self._closed:
            return False
        return await self._store.first_time(f"{PLATFORM}:{key}", at=time.time())

    async def _import(self, legacy: Path) -> None:
        rows = await asyncio.to_thread(_read_legacy, legacy)
        for channel, ts, job, at in rows:
            await self._store.remember_message(PLATFORM, channel, ts, job, at=at)
        with contextlib.suppress(OSError):  # e.g. another process, importing the same file, renamed it first
            await asyncio.to_thread(legacy.rename, legacy.with_name(legacy.name + ".imported"))
        log.info("slack: %d result message(s) imported from %s into the job store", len(rows), legacy.name)


def _read_legacy(path: Path) -> list[tuple[str, str, str, float]]:
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return [
                (str(channel), str(ts), str(job), float(at))
                for channel, ts, job, at in db.execute("SELECT channel, ts, job, at FROM result_messages")
            ]
    except sqlite3.Error as exc:  # not ours, or damaged: nothing to import, the bot carries on
        log.warning("slack: %s could not be imported (%s)", path.name, exc)
        return []
