"""Slack: Cancel a queued job, private results (to the DM, then Share), and /history — through the fake Slack and
FakeOpenAI, asserting on what goes over the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.common.flags import parse_imagine
from bot.errors import InvalidRequestError
from bot.models import JobStatus
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import CHANNEL_ID, TEAM_ID, USER_ID, FakeSlack, PostedMessage, ResponsePost
from tests.slack_harness import button, slack_bot

ONE_AT_A_TIME = {"max_concurrent": 1, "per_user_jobs": 10}
DM = "D" + USER_ID[1:]  # the fake's DM channel between the bot and alice


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


def as_message(post: ResponsePost) -> PostedMessage:
    body: dict[str, Any] = post.body
    return PostedMessage(CHANNEL_ID, "0", USER_ID, str(body.get("text", "")), body.get("blocks"))


def with_button(fake: FakeSlack, prefix: str) -> list[ResponsePost]:
    found = []
    for post in fake.responses:
        blocks = (post.body or {}).get("blocks") or []
        values = [str(e.get("value", "")) for b in blocks for e in [*b.get("elements", []), b.get("accessory") or {}]]
        if any(v.startswith(prefix) for v in values):
            found.append(post)
    return found


async def test_cancel_of_a_queued_job_makes_no_call_and_says_so(fake: FakeSlack, tmp_path: Path) -> None:
    async with FakeOpenAI(latency=1.0) as openai:
        keys = {"OPENAI_API_KEY": DEFAULT_KEY, "OPENAI_BASE_URL": openai.base_url, "limits": ONE_AT_A_TIME}
        async with slack_bot(fake, tmp_path / "data", **keys) as bot:
            await fake.send_slash_command("/imagine", "a running fox")
            await fake.wait_for(lambda: openai.image_requests)
            await fake.send_slash_command("/imagine", "a waiting owl")
            (queued,) = await fake.wait_for(lambda: with_button(fake, "cancel:"))
            assert "Queued — #1 in line" in queued.body["text"]
            cancel = button(as_message(queued), "cancel:")
            job_id = cancel["value"].split(":")[1]

            await fake.send_interactive(fake.block_actions_payload(cancel["action_id"], cancel["value"]))

            told = await fake.wait_for(
                lambda: [p for p in fake.responses if p.body.get("text") == "Cancelled — nothing was made or charged."]
            )
            assert told[0].body["replace_original"] is True  # in place of the place in line and its button
            assert told[0].response_id == queued.response_id
            await bot.uploads_done(1)
            assert (await bot.job(job_id)).status is JobStatus.CANCELLED and (await bot.job(job_id)).cost == 0.0
        assert len(openai.image_requests) == 1


async def test_a_private_result_goes_to_the_dm_until_shared(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data") as bot:
        await fake.send_slash_command("/imagine", "a secret fox --private")
        await bot.uploads_done(1)

        assert bot.image_messages(DM) and not bot.image_messages(CHANNEL_ID)  # nobody else sees it
        (controls,) = bot.controls()
        assert controls.channel == DM
        share = button(controls, "share:")
        assert share["text"]["text"] == f"Share to #{CHANNEL_ID}"

        await fake.send_interactive(
            fake.block_actions_payload(share["action_id"], share["value"], message=controls.to_slack(), channel_id=DM)
        )

        await fake.wait_for(lambda: bot.image_messages(CHANNEL_ID))
        (shared,) = bot.image_messages(CHANNEL_ID)
        assert f"<@{USER_ID}>" in shared.text and "a secret fox" in shared.text
        await fake.wait_for(lambda: any(t == f"Shared to <#{CHANNEL_ID}>." for t in bot.ephemeral_texts()))


async def test_history_lists_only_your_own_jobs(fake: FakeSlack, tmp_path: Path) -> None:
    bob = "U0HUMAN002"
    fake.add_user(bob, "bob")
    async with slack_bot(fake, tmp_path / "data") as bot:
        for text, user in (("alice's fox", USER_ID), ("bob's owl", bob), ("alice's cat", USER_ID)):
            before = len(bot.controls())
            await fake.send_slash_command("/imagine", text, user_id=user)
            await bot.uploads_done(before + 1)

        await fake.send_slash_command("/history")

        (listed,) = await fake.wait_for(lambda: with_button(fake, "open:"))
        text = str(listed.body["blocks"])
        assert "alice&#39;s" not in text and "alice's fox" in text and "alice's cat" in text
        assert "bob's owl" not in text
        assert listed.body["response_type"] == "ephemeral"
        cat = next(m for m in bot.image_messages(CHANNEL_ID) if "alice's cat" in m.text)  # links to the images
        assert f"https://slack.com/archives/{CHANNEL_ID}/p{cat.ts.replace('.', '')}|message>" in text
        opens = [b["accessory"] for b in listed.body["blocks"] if "accessory" in b]
        assert len(opens) == 2

        await fake.send_interactive(fake.block_actions_payload(opens[0]["action_id"], opens[0]["value"]))

        await fake.wait_for(lambda: bot.image_messages(DM))
        assert "alice's cat" in bot.image_messages(DM)[0].text


@pytest.mark.parametrize(
    ("text", "prompt", "private"),
    [
        ("a fox --private", "a fox", True),
        ("a fox --private --n 2", "a fox", True),
        ("—private a fox", "a fox", True),
        ("a fox --private=no", "a fox", False),
        ("a fox --private=yes", "a fox", True),
        ("a fox", "a fox", None),
        ("a fox --private maybe", "a fox maybe", True),  # a switch takes no value: the next word is prompt
    ],
)
def test_private_is_a_switch_in_the_flag_grammar(text: str, prompt: str, private: bool | None) -> None:
    command = parse_imagine(text)
    assert (command.prompt, command.private) == (prompt, private)


@pytest.mark.parametrize("text", ["a fox --private=maybe", "a fox --private --private", "a fox --private="])
def test_a_bad_private_switch_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_imagine(text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["a", "fox", "--private", "--private=no", "—private", "--n", "2", "=x"]), max_size=8))
def test_any_mix_of_words_and_the_switch_parses_or_is_refused_kindly(words: list[str]) -> None:
    try:
        command = parse_imagine(" ".join(words))
    except InvalidRequestError as exc:
        assert exc.user_message and "Traceback" not in exc.user_message
        return
    assert command.private in (None, True, False)
    assert "--private" not in command.prompt.split() and "—private" not in command.prompt.split()


async def test_a_workspace_can_make_private_the_default(fake: FakeSlack, tmp_path: Path) -> None:
    async with slack_bot(fake, tmp_path / "data", slack={"private_workspaces": [TEAM_ID]}) as bot:
        await fake.send_slash_command("/imagine", "a quiet fox")
        await bot.uploads_done(1)
        await fake.send_slash_command("/imagine", "a loud fox --private=no")
        await bot.uploads_done(2)

        assert ["a quiet fox" in m.text for m in bot.image_messages(DM)] == [True]
        assert ["a loud fox" in m.text for m in bot.image_messages(CHANNEL_ID)] == [True]
