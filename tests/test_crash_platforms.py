"""kill -9 of `imagebot run` serving Discord and Slack, at each moment of a job, then two restarts on the same
data folder: no result is posted twice, every result paid for is posted once, a job that never reached the
image service is run again, and whoever a restart cut off is told once. The fakes (Discord REST + gateway,
Slack Web API + Socket Mode, the Images API) live in the test's process and outlive the bot, as the real
platforms do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.discord_server import FakeDiscord, SentMessage
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import CHANNEL_ID, USER_ID, FakeSlack
from tests.test_run import platform_env, running_bot

CUT_OFF = "A restart interrupted your request"


def rows(data: Path) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(data / "jobs.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM jobs ORDER BY platform").fetchall()


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def discord_results(fake: FakeDiscord) -> list[SentMessage]:
    return [message for message in fake.sent if message.files]


def slack_uploads(fake: FakeSlack) -> int:
    return len([call for call in fake.calls_to("files.completeUploadExternal") if call.ok])


def slack_cut_off_notes(fake: FakeSlack) -> list[str]:
    return [m.text for m in fake.messages if m.ephemeral_to == USER_ID and CUT_OFF in m.text]


def discord_cut_off_notes(fake: FakeDiscord) -> list[SentMessage]:
    return [message for message in fake.sent if CUT_OFF in (message.content or "")]


@pytest.mark.parametrize("moment", ["queued and upstream working", "just after the 200", "during delivery"])
async def test_kill_9_then_two_restarts_answers_everyone_exactly_once(tmp_path: Path, moment: str) -> None:
    working = moment == "queued and upstream working"
    async with (
        FakeDiscord() as discord_fake,
        FakeSlack() as slack_fake,
        FakeOpenAI(latency=60.0 if working else 0.0, photo_like=not working) as openai,
    ):
        env = platform_env(
            tmp_path,
            discord_fake,
            slack_fake,
            OPENAI_API_KEY=DEFAULT_KEY,
            OPENAI_BASE_URL=openai.base_url,
            IMAGEBOT_LIMITS__MAX_CONCURRENT="1",  # one job at the image service, the other one waits in line
        )
        data = Path(env["IMAGEBOT_DATA_DIR"])
        async with running_bot(env, tmp_path) as process:
            await slack_fake.send_slash_command("/imagine", "a red fox", channel_id=CHANNEL_ID)
            await discord_fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse at dusk"})
            if working:
                statuses = lambda: sorted(r["status"] for r in rows(data))  # noqa: E731
                await until(
                    lambda: statuses() == ["queued", "running"] and len(openai.image_requests) == 1,
                    "one job at the image service, one queued",
                )
            elif moment == "just after the 200":
                await until(lambda: len(openai.answered) == 2, "the image service answered both")
                await asyncio.sleep(0.05)
            else:
                await until(lambda: bool(discord_results(discord_fake) or slack_uploads(slack_fake)), "a post")
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        asked = len(openai.image_requests)
        openai.latency = 0.0  # the restart re-runs the job that never reached the image service

        for _ in range(2):  # the second restart must change nothing
            async with running_bot(env, tmp_path):
                if working:
                    await until(
                        lambda: (
                            sorted((r["status"], bool(r["notified_at"])) for r in rows(data))
                            == [("delivered", False), ("interrupted", True)]
                        ),
                        "the queued job re-run and delivered, the running one's requester told",
                    )
                else:
                    await until(lambda: all(r["status"] == "delivered" for r in rows(data)), "both delivered")

        prompts = [request.param("prompt") for request in openai.image_requests]
        assert len(prompts) == len(set(prompts)), "a restart asked the image service (and paid) again for a job"
        if working:
            # The running job may have been made (and billed) upstream: it is not re-run, its requester is told.
            # The queued one never reached the image service: it is re-run once and delivered once.
            assert len(openai.image_requests) == asked + 1
            assert len(slack_cut_off_notes(slack_fake)) + len(discord_cut_off_notes(discord_fake)) == 1
            assert len(discord_results(discord_fake)) + slack_uploads(slack_fake) == 1
        else:
            assert len(openai.image_requests) == asked, "a restart asked the image service (and paid) again"
            assert len(discord_results(discord_fake)) == 1, "Discord got the result twice (or never)"
            assert slack_uploads(slack_fake) == 1, "Slack got the result twice (or never)"
            assert slack_cut_off_notes(slack_fake) == [] and discord_cut_off_notes(discord_fake) == []
