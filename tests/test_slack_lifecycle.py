"""Every Slack request is acknowledged in time and gets exactly one final answer, even when it fails at once.

Against FakeOpenAI answering instantly: slack-bolt's async runner un-sends an ack when a listener raises after
acknowledging (within its 10 ms poll), so the fast failures are the ones that lose the acknowledgement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, Reply, invalid_value
from tests.fakes.slack_server import ACK_DEADLINE, FakeSlack, command_body
from tests.slack_harness import SlackBot, slack_bot

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

    assert (envelope.latency or 99) < ACK_DEADLINE and ack.payload is not None
    assert_friendly(answer)
    assert not fake.uploads


@pytest.mark.parametrize(("text", "upstream"), INSTANT_FAILURES.values(), ids=INSTANT_FAILURES.keys())
async def test_instant_failure_is_acknowledged_over_http_mode(
    fake: FakeSlack, openai: FakeOpenAI, tmp_path: Path, text: str, upstream: Reply | None
) -> None:
    if upstream is not None:
        openai.script(upstream)
    async with slack_bot(fake, tmp_path / "data", mode="http", **_on(openai)) as bot:
        exchange = await bot.send_http(command_body(fake.command_payload("/imagine", text)))
        [answer] = await final_answers(bot)

    assert exchange.status == 200 and exchange.latency < ACK_DEADLINE and exchange.payload is not None
    assert_friendly(answer)
    assert not fake.uploads
