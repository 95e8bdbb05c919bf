"""Every Slack request is acknowledged in time and gets exactly one final answer, even when it fails at once.

Against FakeOpenAI answering instantly: slack-bolt's async runner un-sends an ack when a listener raises after
acknowledging (within its 10 ms poll), so the fast failures are the ones that lose the acknowledgement.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, Reply, invalid_value
from tests.fakes.slack_server import ACK_DEADLINE, USER_ID, FakeSlack, PostedMessage, command_body
from tests.slack_harness import SlackBot, button, responses_to, slack_bot

RAW = ("Traceback", "Error:", "invalid_value", "{", "sk-", "xox")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def _on(openai: FakeOpenAI) -> dict[str, Any]:
    return {"openai_api_key": DEFAULT_KEY, "openai_base_url": openai.base_url, "openai": {"max_retries": 0}}


async def final_answers(bot: SlackBot, count: int = 1) -> list[str]:
    """The failure answers (the lines with a reference id), once ``count`` arrived and the bot is idle."""
    await bot.fake.wait_for(lambda: len(_failures(bot)) >= count, what=f"{count} failure answer(s)")
    await bot.adapter.idle()
    return _failures(bot)


def _failures(bot: SlackBot) -> list[str]:
    return [text for text in bot.ephemeral_texts() if "(ref " in text]


def assert_friendly(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{raw!r} in {text!r}"


INSTANT_FAILURES = {
    "bad size": ("a cat --size 999x999", None),
    "unknown model": ("a cat --model no-such-model", None),
    "bad quality": ("a cat --quality ultra", None),
    "instant upstream 400": ("a cat", invalid_value("size", "999x999")),
}


@pytest.mark.parametrize(("text", "upstream"), INSTANT_FAILURES.values(), ids=INSTANT_FAILURES.keys())
async def test_instant_failure_is_acknowledged_over_socket_mode(
    fake: FakeSlack, openai: FakeOpenAI, tmp_path: Path, text: str, upstream: Reply | None
) -> None:
    if upstream is not None:
        openai.script(upstream)
    async with slack_bot(fake, tmp_path / "data", **_on(openai)) as bot:
        envelope = await fake.send_slash_command("/imagine", text)
        [answer] = await final_answers(bot)
        ack = await fake.wait_for_ack(envelope.envelope_id, timeout=ACK_DEADLINE)

    assert (envelope.latency or 99) < ACK_DEADLINE and not ack.payload  # acked at once, with nothing in it
    [post] = [p for p in responses_to(fake, envelope.payload) if p.body["text"] == answer]  # then the answer
    assert ack.at < post.at and post.body["response_type"] == "ephemeral"
    assert_friendly(answer)
    assert not fake.uploads


@pytest.mark.parametrize(("text", "upstream"), INSTANT_FAILURES.values(), ids=INSTANT_FAILURES.keys())
async def test_instant_failure_is_acknowledged_over_http_mode(
    fake: FakeSlack, openai: FakeOpenAI, tmp_path: Path, text: str, upstream: Reply | None
) -> None:
    if upstream is not None:
        openai.script(upstream)
    async with slack_bot(fake, tmp_path / "data", mode="http", **_on(openai)) as bot:
        payload = fake.command_payload("/imagine", text)
        started = time.monotonic()
        exchange = await bot.send_http(command_body(payload))
        [answer] = await final_answers(bot)

    assert exchange.status == 200 and exchange.latency < ACK_DEADLINE and exchange.text == ""  # an empty ack
    [post] = [p for p in responses_to(fake, payload) if p.body["text"] == answer]  # the answer came after it
    assert post.body["response_type"] == "ephemeral" and started + exchange.latency <= post.at
    assert_friendly(answer)
    assert not fake.uploads


# --- who may press a result's buttons ---------------------------------------------------------------------------

OTHER_USER = "U0HUMAN002"


async def _result(bot: SlackBot, text: str = "a lighthouse") -> PostedMessage:
    """Run /imagine to completion as alice; her buttons message."""
    before = len(bot.controls())
    await bot.fake.send_slash_command("/imagine", text)
    await bot.uploads_done(before + 1)
    return bot.controls()[before]


@pytest.mark.parametrize("prefix", ["vary:", "reroll:", "remix:"])
async def test_someone_else_pressing_a_results_button_is_refused_privately(
    fake: FakeSlack, tmp_path: Path, prefix: str
) -> None:
    fake.add_user(OTHER_USER, "bob")
    async with slack_bot(fake, tmp_path / "data") as bot:
        controls = await _result(bot)
        pressed = button(controls, prefix)
        payload = fake.block_actions_payload(
            pressed["action_id"], pressed["value"], message=controls.to_slack(), user_id=OTHER_USER
        )
        envelope = await fake.send_interactive(payload)
        [refusal] = await fake.wait_for(lambda: [t for t in bot.ephemeral_texts() if "Only" in t])
        await bot.adapter.idle()
        assert len(await bot.core.jobs.store.history(limit=5)) == 1

    assert (envelope.latency or 99) < ACK_DEADLINE
    assert "can use these buttons" in refusal and USER_ID in refusal
    [shown] = [r.body for r in fake.responses if "can use these buttons" in str(r.body)]
    assert f"<@{USER_ID}>" in shown["blocks"][0]["text"]["text"]  # a real mention, not an escaped one
    assert not fake.calls_to("views.open") and len(fake.calls_to("files.completeUploadExternal")) == 1


async def test_others_may_press_when_the_operator_says_so(fake: FakeSlack, tmp_path: Path) -> None:
    fake.add_user(OTHER_USER, "bob")
    async with slack_bot(fake, tmp_path / "data", slack={"others_may_press": True}) as bot:
        controls = await _result(bot)
        reroll = button(controls, "reroll:")
        payload = fake.block_actions_payload(
            reroll["action_id"], reroll["value"], message=controls.to_slack(), user_id=OTHER_USER
        )
        await fake.send_interactive(payload)
        await bot.uploads_done(2)

        rerolled = await bot.job(button(bot.controls()[1], "vary:")["value"].split(":")[1])
        assert rerolled.context.user == OTHER_USER


async def test_a_burst_of_first_requests_makes_one_auth_test(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data") as bot:
        envelopes = [await fake.send_slash_command("/imagine", f"a fox number {i}") for i in range(3)]
        await bot.uploads_done(3)
        for envelope in envelopes:
            await fake.wait_for_ack(envelope.envelope_id)

    assert len(fake.calls_to("auth.test")) == 1


async def test_the_socket_attribute_the_health_check_reads_is_where_the_adapter_expects_it(
    fake: FakeSlack, tmp_path: Path
) -> None:
    """/healthz tells a dropped Socket Mode connection from the SDK client's ``current_session`` (no public
    accessor exists): this fails if slack_sdk moves it, instead of /healthz silently always saying connected."""
    async with slack_bot(fake, tmp_path / "data") as bot:
        handler = bot.adapter._handler
        assert handler is not None
        session = handler.client.current_session
        assert session is not None and not session.closed
        assert bot.adapter.state == "connected"
