"""Exactly once across restarts on Slack: a result already on Slack is not posted again, and whoever a restart
cut off is told once, privately, in the job's conversation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs import new_job_id
from bot.models import GenerateRequest, Job, JobContext, JobStatus
from tests.fakes.slack_server import CHANNEL_ID, TEAM_ID, USER_ID, FakeSlack
from tests.slack_harness import SlackBot, button, slack_bot

THREAD = "1700000000.000100"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


async def _leave_running(bot: SlackBot, prompt: str, thread: str | None = None) -> Job:
    """A job the store holds as running, as a process killed mid-request leaves it."""
    now = time.time()
    job = Job(
        id=new_job_id(),
        kind="generate",
        context=JobContext("slack", USER_ID, TEAM_ID, CHANNEL_ID, thread),
        request={"prompt": prompt, "n": 1, "inputs": []},
        request_hash=f"left-running-{prompt}",
        status=JobStatus.RUNNING,
        created_at=now,
        updated_at=now,
        images_requested=1,
    )
    stored, _ = await bot.core.jobs.store.submit(job, dedupe_since=now)
    return stored


def _told(fake: FakeSlack) -> list[str]:
    return [m.text for m in fake.messages if m.ephemeral_to == USER_ID and "restart interrupted" in m.text]


@pytest.mark.parametrize("thread", [None, THREAD], ids=["channel", "thread"])
async def test_a_job_cut_off_by_a_restart_is_told_once(fake: FakeSlack, tmp_path: Path, thread: str | None) -> None:
    async with slack_bot(fake, tmp_path / "data") as first:
        job = await _leave_running(first, "a castle <at> dusk", thread)
    async with slack_bot(fake, tmp_path / "data") as second:
        await second.adapter.redelivered()
        assert (await second.job(job.id)).notified_at is not None
    async with slack_bot(fake, tmp_path / "data") as third:
        await third.adapter.redelivered()

    [told] = _told(fake)
    assert told == "A restart interrupted your request for “a castle <at> dusk”; nothing was charged. Please ask again."
    [message] = [m for m in fake.messages if m.text == told]
    assert message.blocks is not None and "“a castle &lt;at&gt; dusk”" in message.blocks[0]["text"]["text"]
    assert (message.channel, message.thread_ts) == (CHANNEL_ID, thread)
    assert not fake.uploads


async def test_a_result_on_slack_but_not_marked_delivered_is_not_posted_again(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data") as first:
        await fake.send_slash_command("/imagine", "a windmill")
        await first.uploads_done()
        job_id = button(first.controls()[0], "vary:")["value"].split(":")[1]
        # the state a crash right after the upload leaves: attempted, posted, not yet marked delivered
        await first.core.jobs.store.update(job_id, status=JobStatus.DONE, delivered_at=None)
    async with slack_bot(fake, tmp_path / "data") as second:
        await second.adapter.redelivered()
        assert (await second.job(job_id)).status is JobStatus.DELIVERED

    assert len(fake.calls_to("files.completeUploadExternal")) == 1 and len(second.controls()) == 1
    assert fake.calls_to("conversations.history")[0].args["include_all_metadata"] in ("1", "true", True)


async def test_images_posted_without_their_buttons_get_only_the_buttons(fake: FakeSlack, tmp_path: Path) -> None:
    fake.fail_next("chat.postMessage", "internal_error")  # the buttons message is lost
    async with slack_bot(fake, tmp_path / "data") as first:
        await fake.send_slash_command("/imagine", "a windmill")
        await fake.wait_for(lambda: [t for t in first.ephemeral_texts() if "(ref " in t])
        await first.adapter.idle()
        [job] = await first.core.jobs.store.history(limit=1)
        await first.core.jobs.store.update(job.id, status=JobStatus.DONE, delivered_at=None)
    async with slack_bot(fake, tmp_path / "data", mode="socket") as second:
        await second.adapter.redelivered()
        assert (await second.job(job.id)).status is JobStatus.DELIVERED

    assert len(fake.calls_to("files.completeUploadExternal")) == 1 and len(second.controls()) == 1


async def test_an_attempt_that_never_reached_slack_is_posted_after_a_restart(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data") as first:
        context = JobContext("slack", USER_ID, TEAM_ID, CHANNEL_ID, THREAD)
        outcome = await first.core.jobs.submit(context, GenerateRequest(prompt="a mill"))  # paid, never posted
        await first.core.jobs.begin_delivery(outcome.job.id)  # ...and the process died before the upload
    async with slack_bot(fake, tmp_path / "data") as second:
        await second.adapter.redelivered()
        await second.uploads_done()
        assert (await second.job(outcome.job.id)).status is JobStatus.DELIVERED

    assert len(second.image_messages(CHANNEL_ID, THREAD)) == 1
    assert fake.calls_to("conversations.replies")[0].args["ts"] == THREAD
