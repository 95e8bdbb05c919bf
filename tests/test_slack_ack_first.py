"""Slack acks first: nothing a listener does before ``ack()`` waits on the job store or on earlier jobs.

The real adapter and core against the strict fake Slack (which times every envelope's acknowledgement on its
side of the websocket) and FakeOpenAI. The store is blocked the way a real one blocks: another connection
holds the SQLite database's write lock, so every write of the bot waits on SQLite's busy timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.models import JobStatus
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import button, response_saying, slack_bot

PROMPT_ACK = 0.5  # s: far below Slack's 3 s, and far below how long the store or the earlier jobs take


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


def _on(openai: FakeOpenAI, **limits: Any) -> dict[str, Any]:
    return {
        "openai_api_key": DEFAULT_KEY,
        "openai_base_url": openai.base_url,
        "limits": {"images_per_minute": 0, **limits},
        "jobs": {"dedupe_window": 0},
    }


async def test_imagine_and_a_button_are_acked_while_the_job_store_is_locked(fake: FakeSlack, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, slack_bot(fake, tmp_path / "data", **_on(openai)) as bot:
        await fake.send_slash_command("/imagine", "a red fox")
        await bot.uploads_done(1)
        controls = bot.controls()[0]
        vary = button(controls, "vary:")

        (done,) = await bot.core.jobs.history()
        locker = sqlite3.connect(tmp_path / "data" / "jobs.sqlite3", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the write lock: every store write of the bot now waits
        # ... and with a write waiting in the store's worker, so does every read queued behind it
        waiting = asyncio.create_task(bot.core.jobs.store.update(done.id, delivery_attempts=done.delivery_attempts))
        await asyncio.sleep(0)  # the write reaches the store's worker first
        try:
            command = await fake.send_slash_command("/imagine", "a blue fox")
            press = await fake.send_interactive(
                fake.block_actions_payload(vary["action_id"], vary["value"], message=controls.to_slack())
            )
            for envelope in (command, press):
                await fake.wait_for_ack(envelope.envelope_id, timeout=PROMPT_ACK)
                assert (envelope.latency or 99) < PROMPT_ACK
        finally:
            locker.execute("COMMIT")
            locker.close()
        await waiting
        await bot.uploads_done(3, timeout=15)  # the store let go: both requests were carried out
        fake.assert_no_errors()
        assert {job.status for job in await bot.core.jobs.history()} == {JobStatus.DELIVERED}


async def test_a_command_is_acked_at_once_behind_fifty_jobs_in_flight(fake: FakeSlack, tmp_path: Path) -> None:
    users = [f"U0EARLY{i:03d}" for i in range(51)]
    for user in users:
        fake.add_user(user, user.lower())
    async with (
        FakeOpenAI(latency=4.0) as openai,
        slack_bot(fake, tmp_path / "data", **_on(openai, max_concurrent=50, max_queue=200)) as bot,
    ):
        earlier = [
            await fake.send_slash_command("/imagine", f"a fox, take {i}", user_id=u) for i, u in enumerate(users[:50])
        ]
        for envelope in earlier:
            await fake.wait_for_ack(envelope.envelope_id)
        await fake.wait_for(lambda: bot.core.admission.running >= 50, timeout=10, what="50 jobs upstream")
        last = await fake.send_slash_command("/imagine", "the last fox", user_id=users[-1])
        await fake.wait_for_ack(last.envelope_id, timeout=PROMPT_ACK)
        assert (last.latency or 99) < PROMPT_ACK
        ack = last.ack
        assert ack is not None and not ack.payload  # the ack carries nothing; what it would have said comes next
        told = await response_saying(fake, last.payload, "#1 in line", timeout=10)  # it says it waits first
        assert ack.at < told.at and told.body["response_type"] == "ephemeral"
        await bot.uploads_done(51, timeout=60)
        fake.assert_no_errors()
