"""Discord: Cancel a queued job, the queue's time estimate, private results with Publish, and /history —
through the fake Discord and FakeOpenAI, asserting on what goes over the wire."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bot.models import JobStatus
from tests.fakes.discord_server import GUILD_ID, FakeDiscord, SentMessage, make_user
from tests.fakes.openai_server import FakeOpenAI
from tests.test_discord import (  # noqa: F401
    custom_ids,
    fake,
    openai_settings,
    result_of,
    running,
    settings_for,
)

EPHEMERAL = 64
ONE_AT_A_TIME = {"max_concurrent": 1, "per_user_jobs": 10}
OTHERS_MAY_PRESS = {"others_may_press": True}  # V/U/🔄 for everyone; Cancel stays the requester's


def cancel_id(sent: SentMessage) -> str | None:
    return next((i for i in custom_ids(sent) if i.startswith("img:no:")), None)


async def queued_with_cancel(fake: FakeDiscord, inter_id: str) -> SentMessage:  # noqa: F811
    """The progress edit that shows the place in line and a Cancel button."""
    while True:
        sent = await fake.next_webhook_message(inter_id, timeout=10)
        if "in line" in (sent.content or "") and cancel_id(sent):
            return sent


async def test_cancel_of_a_queued_job_makes_no_call_and_says_so(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with FakeOpenAI(latency=1.0) as openai:
        async with running(
            openai_settings(fake, openai, tmp_path, limits=ONE_AT_A_TIME, discord=OTHERS_MAY_PRESS)
        ) as bot:
            first = await fake.dispatch_slash_command("imagine", {"prompt": "a running fox"})
            await fake.wait_for(lambda: openai.image_requests, what="the first job running")
            second = await fake.dispatch_slash_command("imagine", {"prompt": "a waiting owl"})
            queued = await queued_with_cancel(fake, second.id)
            assert "Queued — #1 in line" in (queued.content or "")
            button = cancel_id(queued)
            assert button is not None

            stranger = make_user("1185000000000000999", "bob")
            refused = await fake.dispatch_component(button, message=queued.message, user=stranger)
            answer = await fake.next_callback(refused.id)
            assert (answer.type, answer.data["flags"]) == (4, EPHEMERAL) and "Only <@" in answer.data["content"]

            press = await fake.dispatch_component(button, message=queued.message)
            assert (await fake.next_callback(press.id)).type == 6  # deferred update: the message itself answers
            told = await fake.wait_for(
                lambda: next(
                    (s for s in fake.sent if s.interaction_id == second.id and "Cancelled" in (s.content or "")), None
                ),
                what="the cancelled edit",
            )
            assert told.content == "Cancelled — nothing was made or charged." and told.message["components"] == []
            await result_of(fake, first.id)
            job = await bot.core.jobs.store.get(button.split(":")[2])
            assert job is not None and job.status is JobStatus.CANCELLED and job.cost == 0.0
        assert len(openai.image_requests) == 1  # only the first job reached the image service
    fake.assert_no_errors()


async def test_cancel_once_the_image_is_being_made_is_refused(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with (
        FakeOpenAI(latency=1.0) as openai,
        running(openai_settings(fake, openai, tmp_path, limits=ONE_AT_A_TIME)) as bot,
    ):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a busy fox"})
        await fake.wait_for(lambda: openai.image_requests, what="the job running")
        (job,) = await bot.core.jobs.store.history()

        press = await fake.dispatch_component(f"img:no:{job.id}")

        assert (await fake.next_callback(press.id)).type == 6
        refusal = await fake.wait_for(
            lambda: next((s for s in fake.sent if s.interaction_id == press.id and s.kind == "followup"), None),
            what="the refusal",
        )
        assert refusal.content == "Too late to cancel: the image is being made."
        assert refusal.payload["flags"] & EPHEMERAL
        result = await result_of(fake, inter.id)
        assert len(result.files) == 1
    fake.assert_no_errors()


async def test_the_place_in_line_comes_with_a_time_estimate(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with (
        FakeOpenAI(latency=0.4) as openai,
        running(openai_settings(fake, openai, tmp_path, limits=ONE_AT_A_TIME)),
    ):
        warm = await fake.dispatch_slash_command("imagine", {"prompt": "a first fox"})
        await result_of(fake, warm.id)  # one finished run of this model and quality: about 0.4 s
        first = await fake.dispatch_slash_command("imagine", {"prompt": "a second fox"})
        await fake.wait_for(lambda: len(openai.image_requests) == 2, what="the second job running")
        second = await fake.dispatch_slash_command("imagine", {"prompt": "a third fox"})
        queued = await queued_with_cancel(fake, second.id)
        assert "Queued — #1 in line, about 5 s" in (queued.content or "")
        await result_of(fake, first.id)
        await result_of(fake, second.id)
    fake.assert_no_errors()


async def test_a_private_result_is_ephemeral_until_published(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a secret fox", "private": True})

        callback = await fake.next_callback(inter.id)
        assert callback.type == 5 and callback.data["flags"] == EPHEMERAL
        result = await result_of(fake, inter.id)
        assert result.message["flags"] & EPHEMERAL and len(result.files) == 1
        publish = next(i for i in custom_ids(result) if i.startswith("img:pub:"))
        assert not [s for s in fake.sent if s.kind == "channel"]  # nothing visible to others yet

        press = await fake.dispatch_component(publish, message=result.message)

        assert (await fake.next_callback(press.id)).type == 6
        posted = await fake.wait_for(
            lambda: next((s for s in fake.sent if s.kind == "channel" and s.message.get("attachments")), None),
            what="the published result",
        )
        assert not posted.message["flags"] & EPHEMERAL and "a secret fox" in (posted.content or "")
        assert f"<@{fake.user['id']}>" in (posted.content or "")
        assert not any(i.startswith("img:pub:") for i in custom_ids(posted))
    fake.assert_no_errors()


async def test_history_lists_only_your_own_jobs_privately(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    bob = make_user("1185000000000000999", "bob")
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        for prompt, user in (("ada's fox", None), ("bob's owl", bob), ("ada's cat", None)):
            inter = await fake.dispatch_slash_command("imagine", {"prompt": prompt}, **({"user": user} if user else {}))
            await result_of(fake, inter.id)

        ask = await fake.dispatch_slash_command("history")

        callback = await fake.next_callback(ask.id)
        assert callback.type == 5 and callback.data["flags"] == EPHEMERAL
        listed = await fake.wait_for(
            lambda: next((s for s in fake.sent if s.interaction_id == ask.id and s.components), None),
            what="the history",
        )
        text = listed.content or ""
        assert "ada's fox" in text and "ada's cat" in text and "bob's owl" not in text
        assert text.index("ada's cat") < text.index("ada's fox")  # newest first
        assert len(text) <= 2000 and listed.message["flags"] & EPHEMERAL
        opens = [i for i in custom_ids(listed) if i.startswith("img:open:")]
        assert len(opens) == 2

        press = await fake.dispatch_component(opens[0], message=listed.message)

        assert (await fake.next_callback(press.id)).data["flags"] == EPHEMERAL
        again = await result_of(fake, press.id)
        assert len(again.files) == 1 and "ada's cat" in (again.content or "")
    fake.assert_no_errors()


def _characters(command: dict[str, Any]) -> int:
    """What Discord counts toward a command's 4000-character limit: names, descriptions and choice values."""
    total = len(command["name"]) + len(command.get("description") or "")
    for option in command.get("options") or []:
        total += len(option["name"]) + len(option.get("description") or "")
        total += sum(len(c["name"]) + len(str(c["value"])) for c in option.get("choices") or [])
    return total


async def test_the_registered_commands_keep_within_discords_limits(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with running(settings_for(fake, tmp_path)):
        pass
    (_, commands), *_ = fake.command_puts
    slash = [c for c in commands if c.get("type", 1) == 1]
    assert len(slash) <= 100 and len([c for c in commands if c.get("type") == 3]) <= 5
    history = next(c for c in slash if c["name"] == "history")
    assert not history.get("options")
    for command in slash:
        assert re.fullmatch(r"[-_a-z0-9]{1,32}", command["name"]) and 1 <= len(command["description"]) <= 100
        options = command.get("options") or []
        assert len(options) <= 25 and _characters(command) <= 4000
        required = [bool(o.get("required")) for o in options]
        assert required == sorted(required, reverse=True)  # required options come first
        for option in options:
            assert re.fullmatch(r"[-_a-z0-9]{1,32}", option["name"]) and 1 <= len(option["description"]) <= 100
            assert len(option.get("choices") or []) <= 25
    imagine = next(c for c in slash if c["name"] == "imagine")
    private = next(o for o in imagine["options"] if o["name"] == "private")
    assert private["type"] == 5 and not private.get("required")  # a boolean, optional


async def test_a_server_can_make_private_the_default(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    settings = settings_for(fake, tmp_path, discord={"private_guilds": [GUILD_ID]})
    async with running(settings):
        hidden = await fake.dispatch_slash_command("imagine", {"prompt": "a quiet fox"})
        shown = await fake.dispatch_slash_command("imagine", {"prompt": "a loud fox", "private": False})

        assert (await fake.next_callback(hidden.id)).data["flags"] == EPHEMERAL
        assert not (await fake.next_callback(shown.id)).data.get("flags")
        await result_of(fake, hidden.id)
        await result_of(fake, shown.id)
    fake.assert_no_errors()
