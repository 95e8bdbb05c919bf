"""Three `imagebot run` processes on one PostgreSQL database and one data folder: kill -9 the one holding a
just-paid job and jobs waiting behind it; the other two take them over when their leases run out, and every
request gets exactly one answer on Slack, with nothing asked of (or paid to) the image service twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg

from bot.store import SPOOL_NAME
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, CHANNEL_ID, USER_ID, FakeSlack
from tests.test_run import run_env, running_bot
from tests.test_write_ahead import ONE_CALL, usage_total

LEASE_SECONDS = 3.0
HEARTBEAT_SECONDS = 0.5
PROMPTS = ("a red fox", "a lighthouse at dusk", "a paper boat")
CUT_OFF = "A restart interrupted your request"


async def job_rows(url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(url)
    try:
        return [dict(row) for row in await connection.fetch("SELECT * FROM jobs ORDER BY seq")]
    finally:
        await connection.close()


def answered(row: dict[str, Any]) -> bool:
    """The job reached its one answer: posted, or its requester told it was cut off."""
    return row["status"] == "delivered" or (row["status"] == "interrupted" and row["notified_at"] is not None)


def uploads_of(fake: FakeSlack, prompt: str) -> int:
    return len([u for u in fake.uploads.values() if u.completed and u.title == prompt])


def cut_off_notes(fake: FakeSlack, prompt: str) -> int:
    return len([m for m in fake.messages if m.ephemeral_to == USER_ID and CUT_OFF in m.text and prompt in m.text])


async def test_kill_9_of_one_of_three_processes_loses_nothing_and_answers_each_request_once(
    tmp_path: Path, postgres_url: str
) -> None:
    async with FakeSlack() as slack, FakeOpenAI(latency=1.0, photo_like=True) as openai, AsyncExitStack() as stack:

        def env() -> dict[str, str]:  # one database, one data folder; a web port of its own
            return run_env(
                tmp_path,
                OPENAI_API_KEY=DEFAULT_KEY,
                OPENAI_BASE_URL=openai.base_url,
                SLACK_BOT_TOKEN=BOT_TOKEN,
                SLACK_APP_TOKEN=APP_TOKEN,
                SLACK_API_URL=slack.api_url,
                IMAGEBOT_DATABASE_URL=postgres_url,
                IMAGEBOT_JOBS__LEASE_SECONDS=str(LEASE_SECONDS),
                IMAGEBOT_JOBS__HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
                IMAGEBOT_LIMITS__MAX_CONCURRENT="1",  # one job at the image service per process, the rest wait
            )

        survivors = [await stack.enter_async_context(running_bot(env(), tmp_path)) for _ in range(2)]
        victim = await stack.enter_async_context(running_bot(env(), tmp_path))  # the fake sends to the newest
        for prompt in PROMPTS:
            await slack.send_slash_command("/imagine", f"{prompt} --n 1", channel_id=CHANNEL_ID)
        await asyncio.wait_for(openai.answered_event.wait(), 30)
        # the first job was just paid for: kill once its whole answer is committed to the spool (a fixed delay
        # after the fake's last byte was not always enough on a loaded machine to read 3 MB)
        spooled = lambda: any((tmp_path / "data" / "results").glob("*/" + SPOOL_NAME))  # noqa: E731
        await asyncio.wait_for(_until(spooled), 30)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await victim.wait()
        openai.latency = 0.0

        async with asyncio.timeout(LEASE_SECONDS + 20):
            while not ((rows := await job_rows(postgres_url)) and len(rows) == 3 and all(map(answered, rows))):
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed_at
        await asyncio.sleep(2 * HEARTBEAT_SECONDS)  # a few more sweeps: nothing may be posted again

        rows = await job_rows(postgres_url)
        by_prompt = {json.loads(row["request"])["prompt"]: row for row in rows}
        assert sorted(by_prompt) == sorted(PROMPTS)
        asked = Counter(request.param("prompt") for request in openai.image_requests)
        assert max(asked.values()) == 1, f"a job was sent to the image service twice: {asked}"
        first = by_prompt[PROMPTS[0]]
        assert first["status"] == "delivered", "the job paid for just before the kill was lost"
        for prompt, row in by_prompt.items():
            if row["status"] == "delivered":  # posted exactly once, paid exactly once
                assert (uploads_of(slack, prompt), cut_off_notes(slack, prompt)) == (1, 0), prompt
                assert row["paid_at"] is not None and asked[prompt] == 1
            else:  # it was marked running when the process died: not re-run (that could bill twice), told
                assert (uploads_of(slack, prompt), cut_off_notes(slack, prompt)) == (0, 1), prompt
                # nothing had arrived: charged nothing. "running" is written just before the request leaves, so a
                # kill in between leaves a running job the image service never saw: it can't be told apart
                assert row["paid_at"] is None and asked[prompt] in (0, 1), prompt
        survivor_pids = {str(process.pid) for process in survivors}
        assert any(row["owner"].split(":")[1] in survivor_pids for row in rows), "nothing was taken over"
        assert took < LEASE_SECONDS + 6, f"the survivors took {took:.1f}s to answer everyone"
        delivered = sum(row["status"] == "delivered" for row in rows)
        assert await usage_total(env(), tmp_path) == f"${delivered * ONE_CALL:.4f}"  # each paid job counted once

        # A mention in a result's thread reaches a survivor, whichever process posted the result: it finds the job.
        controls = [m for m in slack.messages if m.method == "chat.postMessage" and "vary" in str(m.blocks)]
        parent = controls[0].ts
        await slack.send_event(slack.app_mention_event("more like 1 please", thread_ts=parent))
        async with asyncio.timeout(30):
            while not any(r["kind"] == "vary" and r["status"] == "delivered" for r in await job_rows(postgres_url)):
                await asyncio.sleep(0.05)
        (varied,) = [r for r in await job_rows(postgres_url) if r["kind"] == "vary"]
        assert varied["thread"] == parent
        outcomes = ", ".join(f"{prompt}: {row['status']}" for prompt, row in by_prompt.items())
        print(
            f"\nall answered {took:.2f}s after the kill"
            f" (lease {LEASE_SECONDS}s, heartbeat {HEARTBEAT_SECONDS}s): {outcomes}"
        )


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)
