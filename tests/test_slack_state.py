"""The Slack adapter's state lives in the job store; a data folder from before keeps its threads."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from adapters.slack.state import SlackState
from bot.store import SQLiteJobStore

OLD_SCHEMA = """
CREATE TABLE result_messages (
    channel TEXT NOT NULL, ts TEXT NOT NULL, job TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (channel, ts)
);
CREATE TABLE handled_events (key TEXT PRIMARY KEY, at REAL NOT NULL);
"""


async def test_threads_of_an_older_versions_slack_file_are_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "slack.sqlite3"
    with contextlib.closing(sqlite3.connect(legacy)) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO result_messages VALUES ('C1', '1700000000.000100', 'oldjob1234', 1700000000.0)")
        db.commit()
    store = await SQLiteJobStore.open(tmp_path / "jobs.sqlite3")
    try:
        state = await SlackState.open(store, legacy=legacy)
        assert await state.job_at("C1", "1700000000.000100") == "oldjob1234"
        assert not legacy.exists() and (tmp_path / "slack.sqlite3.imported").exists()
        again = await SlackState.open(store, legacy=legacy)  # the next start: nothing left to import
        assert await again.job_at("C1", "1700000000.000100") == "oldjob1234"
        assert await state.first_time("C1:1700000001.000200")
        assert not await again.first_time("C1:1700000001.000200")
        await state.close()
        assert await state.job_at("C1", "1700000000.000100") is None  # closed: listeners still finishing find none
    finally:
        await store.close()


async def test_a_damaged_slack_file_does_not_stop_the_adapter(tmp_path: Path) -> None:
    legacy = tmp_path / "slack.sqlite3"
    legacy.write_bytes(b"not a database at all")
    store = await SQLiteJobStore.open(tmp_path / "jobs.sqlite3")
    try:
        state = await SlackState.open(store, legacy=legacy)
        assert await state.job_at("C1", "1") is None
    finally:
        await store.close()
