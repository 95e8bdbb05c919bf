"""The Slack adapter's failure paths: every one ends as one friendly ephemeral line with a ref, no secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.slack.files import SlackFiles
from bot.bootstrap import new_http_session
from bot.errors import InvalidImageError
from tests.fakes.openai_server import (
    DEFAULT_KEY,
    INSUFFICIENT_QUOTA,
    FakeOpenAI,
    Reply,
    moderation_blocked,
    server_error,
)
from tests.fakes.slack_server import (
    ACK_DEADLINE,
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL_ID,
    SIGNING_SECRET,
    TEAM_ID,
    USER_ID,
    FakeSlack,
)
from tests.images import png
from tests.slack_harness import SlackBot, responses_to, slack_bot

SECRETS = (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, DEFAULT_KEY, "sk-", "org-", "req_", "xox")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


@pytest.fixture
async def bot(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackBot]:
    async with slack_bot(fake, tmp_path / "data") as running:
        yield running


def _clean(text: str) -> str:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"
    return text


async def _one_answer(bot: SlackBot) -> str:
    [text] = await bot.fake.wait_for(lambda: [t for t in bot.ephemeral_texts() if "(ref " in t], what="an error")
    return _clean(text)


async def test_download_without_files_read_names_the_missing_scope(fake: FakeSlack, bot: SlackBot) -> None:
    fake.scopes.discard("files:read")
    shared = fake.add_file(png(), "cat.png", "image/png")
    target = fake.add_message(CHANNEL_ID, "my cat", files=[shared])
    await fake.send_interactive(fake.message_shortcut_payload("vary_image", target.to_slack()))

    text = await _one_answer(bot)
    assert "files:read" in text and not fake.uploads
    assert [d.authorized for d in fake.downloads] == [False]  # it was the HTML login page


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (moderation_blocked(), "safety filter"),
        (INSUFFICIENT_QUOTA, "budget"),
        (server_error(), "having trouble"),
    ],
    ids=["moderation_blocked", "insufficient_quota", "server_error"],
)
async def test_upstream_errors_become_friendly_text(fake: FakeSlack, tmp_path: Path, reply: Reply, words: str) -> None:
    async with FakeOpenAI() as openai:
        openai.script(reply)
        overrides: dict[str, Any] = {"openai_api_key": DEFAULT_KEY, "openai_base_url": openai.base_url}
        async with slack_bot(fake, tmp_path / "data", openai={"max_retries": 0}, **overrides) as bot:
            await fake.send_slash_command("/imagine", "a red fox")
            text = await _one_answer(bot)

    assert words in text and not fake.uploads


async def test_wrong_openai_key_is_an_operator_problem_without_the_key(fake: FakeSlack, tmp_path: Path) -> None:
    wrong = "sk-proj-WRONGwrongWRONGwrong1234"
    async with FakeOpenAI() as openai:
        overrides: dict[str, Any] = {"openai_api_key": wrong, "openai_base_url": openai.base_url}
        async with slack_bot(fake, tmp_path / "data", **overrides) as bot:
            await fake.send_slash_command("/imagine", "a red fox")
            text = await _one_answer(bot)

    assert "OPENAI_API_KEY" in text and wrong[-4:] not in text


@pytest.mark.parametrize(
    ("setting", "value"),
    [("allowed_channels", ["C0ELSEWHERE"]), ("allowed_users", ["U0SOMEONE"]), ("allowed_workspaces", ["T0OTHER"])],
)
async def test_disallowed_place_or_user_is_refused_privately(
    fake: FakeSlack, tmp_path: Path, setting: str, value: list[str]
) -> None:
    async with slack_bot(fake, tmp_path / "data", slack={setting: value}) as bot:
        envelope = await fake.send_slash_command("/imagine", "a red fox")
        ack = await fake.wait_for_ack(envelope.envelope_id)
        [refusal] = await fake.wait_for(lambda: responses_to(fake, envelope.payload), what="the refusal")
        await bot.adapter.idle()

        assert (envelope.latency or 99) < ACK_DEADLINE and not ack.payload and ack.at < refusal.at
        assert refusal.body["response_type"] == "ephemeral"
        assert "allowed" in refusal.body["text"] or "list" in refusal.body["text"]
        assert len(responses_to(fake, envelope.payload)) == 1  # the refusal only: no "Working on it" before it
        assert await bot.core.jobs.store.history(limit=5) == [] and not fake.uploads


async def test_disallowed_channel_mention_gets_a_short_ephemeral_reason(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data", slack={"allowed_channels": ["C0ELSEWHERE"]}) as bot:
        shared = fake.add_file(png(), "cat.png", "image/png")
        await fake.send_event(fake.app_mention_event("vary", files=[shared]))
        [refusal] = await fake.wait_for(lambda: [m for m in fake.messages if m.ephemeral_to == USER_ID])

        assert "channel" in refusal.text and not fake.downloads and not fake.uploads
        await bot.adapter.idle()


async def test_allowed_lists_let_the_listed_ones_in(fake: FakeSlack, tmp_path: Path) -> None:
    allowed = {"allowed_channels": [CHANNEL_ID], "allowed_users": [USER_ID], "allowed_workspaces": [TEAM_ID]}
    async with slack_bot(fake, tmp_path / "data", slack=allowed) as bot:
        await fake.send_slash_command("/imagine", "a red fox")
        await bot.uploads_done()


async def test_channel_without_the_bot_gets_the_invite_hint(fake: FakeSlack, bot: SlackBot) -> None:
    fake.add_channel("C0RANDOM01", "random", member=False)
    await fake.send_slash_command("/imagine", "a red fox", channel_id="C0RANDOM01")

    text = await _one_answer(bot)
    assert "/invite @imagebot" in text
    assert fake.calls_to("files.completeUploadExternal")[0].error == "not_in_channel"


async def test_slack_rate_limit_is_retried(fake: FakeSlack, bot: SlackBot) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=1)
    await fake.send_slash_command("/imagine", "a red fox")
    await bot.uploads_done()

    assert [c.status for c in fake.calls_to("chat.postMessage")] == [429, 200]


async def test_unexpected_slack_error_gets_an_apology_with_a_ref(fake: FakeSlack, bot: SlackBot) -> None:
    fake.fail_next("files.getUploadURLExternal", "internal_error")
    await fake.send_slash_command("/imagine", "a red fox")

    assert "Sorry" in await _one_answer(bot)


async def test_downloads_only_from_slacks_file_host(fake: FakeSlack) -> None:
    async with new_http_session() as session:
        files = SlackFiles(session, BOT_TOKEN, api_url=fake.api_url, max_bytes=1024)
        assert files.allowed("https://files.slack.com/files-pri/T1-F1/cat.png")
        assert files.allowed(f"{fake.url}/files-pri/T1-F1/cat.png")
        assert not files.allowed("http://files.slack.com/files-pri/T1-F1/cat.png")
        assert not files.allowed("https://evil.example/files-pri/T1-F1/cat.png")
        with pytest.raises(InvalidImageError):
            await files.download("https://evil.example/cat.png")


async def test_download_over_the_size_limit_is_refused_while_streaming(fake: FakeSlack) -> None:
    shared = fake.add_file(png(400, 400, (1, 2, 3)), "big.png", "image/png") | {"size": 10}  # the size lies
    async with new_http_session() as session:
        files = SlackFiles(session, BOT_TOKEN, api_url=fake.api_url, max_bytes=300)
        with pytest.raises(InvalidImageError, match="too large"):
            await files.image(shared)


async def test_a_queued_request_is_told_its_place_in_line(fake: FakeSlack, tmp_path: Path) -> None:
    fake.add_user("U0HUMAN002", "bob")
    async with FakeOpenAI(latency=0.5) as openai:
        overrides: dict[str, Any] = {"openai_api_key": DEFAULT_KEY, "openai_base_url": openai.base_url}
        async with slack_bot(fake, tmp_path / "data", limits={"max_concurrent": 1}, **overrides) as bot:
            await fake.send_slash_command("/imagine", "a red fox")
            await fake.wait_for(lambda: openai.image_requests)
            second = await fake.send_slash_command("/imagine", "a blue fox", user_id="U0HUMAN002")
            await bot.uploads_done(2)
            ack = await fake.wait_for_ack(second.envelope_id)

    assert not ack.payload
    [note] = [p for p in responses_to(fake, second.payload) if p.body["text"].startswith("Queued")]
    assert note.body["text"] == "Queued — #1 in line: a blue fox" and ack.at < note.at

    assert [t for t in bot.ephemeral_texts() if "Queued — #1" in t and "in line" in t]
