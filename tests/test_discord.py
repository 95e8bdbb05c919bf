"""The Discord adapter, driven through the fake Discord (REST + gateway + CDN) with the real core."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from PIL import Image

from adapters.discord import DiscordAdapter
from adapters.discord.replies import Throttle
from bot.bootstrap import open_core
from bot.errors import ConfigurationError
from bot.models import GenerateRequest, JobContext, JobStatus, Progress
from bot.settings import Settings, load_settings
from tests.fakes.discord_server import CHANNEL_ID, GUILD_ID, FakeDiscord, SentMessage, make_user
from tests.fakes.openai_server import (
    DEFAULT_KEY,
    INSUFFICIENT_QUOTA,
    FakeOpenAI,
    Reply,
    bad_gateway_html,
    malformed_json,
    model_not_found,
    moderation_blocked,
    org_not_verified,
    rate_limited,
    server_error,
    wrong_key,
)
from tests.images import half_white_mask, png


class _Errors(logging.Handler):
    """discord.py and the adapter log (and otherwise swallow) failures: make them fail the test."""

    def __init__(self, fake: FakeDiscord) -> None:
        super().__init__(logging.ERROR)
        self.fake = fake
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())
        self.fake.report(record.getMessage())


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    rest, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    # restarts here follow each other within Discord's 5 s identify window (tests/test_discord_shards.py keeps it)
    async with FakeDiscord(identify_window=0.0) as server:
        handler = _Errors(server)
        for name in ("discord", "adapters.discord"):
            logging.getLogger(name).addHandler(handler)
        try:
            yield server
        finally:
            for name in ("discord", "adapters.discord"):
                logging.getLogger(name).removeHandler(handler)
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = rest, gateway


def settings_for(fake: FakeDiscord, data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        **overrides,
    )


@contextlib.asynccontextmanager
async def running(settings: Settings, **options: Any) -> AsyncIterator[DiscordAdapter]:
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05, progress_interval=0.05, **options)
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()


@pytest.fixture
async def bot(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[DiscordAdapter]:
    async with running(settings_for(fake, tmp_path)) as adapter:
        yield adapter
    fake.assert_no_errors()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def result_of(fake: FakeDiscord, inter_id: str) -> SentMessage:
    """The edit of @original that carries files (progress edits before it carry none)."""
    while True:
        sent = await fake.next_webhook_message(inter_id, timeout=10)
        if sent.files or sent.components:
            return sent


async def delivered(bot: DiscordAdapter, job_id: str) -> None:
    async with asyncio.timeout(5):
        while (job := await bot.core.jobs.store.get(job_id)) is None or job.status.value != "delivered":
            await asyncio.sleep(0.01)


def custom_ids(sent: SentMessage) -> list[str]:
    return [c["custom_id"] for row in sent.components for c in row.get("components", []) if "custom_id" in c]


async def test_imagine_one_image(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a red fox"})

    callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.status) == (5, 200)
    sent = await result_of(fake, inter.id)
    assert len(sent.files) == 1
    assert decode(sent.files[0].data).format == "PNG"
    assert all(sent.alt_texts.values())
    assert "a red fox" in (sent.content or "")
    assert f"<@{fake.user['id']}>" in (sent.content or "")
    ids = custom_ids(sent)
    job = ids[0].split(":")[2]
    assert ids == [f"img:u:{job}:1", f"img:v:{job}:1", f"img:r:{job}:0", f"img:x:{job}:0"]  # U: Zoom out and Pan


async def test_imagine_four_images_with_u_and_v_buttons(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "four foxes", "count": 4})

    sent = await result_of(fake, inter.id)
    assert len(sent.files) == 4
    assert all(decode(f.data).format == "PNG" for f in sent.files)
    assert len(sent.alt_texts) == 4 and all(sent.alt_texts.values())
    ids = custom_ids(sent)
    job = ids[0].split(":")[2]
    assert sorted(ids) == sorted(
        [f"img:u:{job}:{i}" for i in range(1, 5)] + [f"img:v:{job}:{i}" for i in range(1, 5)]
        + [f"img:r:{job}:0", f"img:x:{job}:0"]
    )  # fmt: skip
    await delivered(bot, job)


async def test_buttons_after_a_restart(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = settings_for(fake, tmp_path)
    async with running(settings):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse", "count": 2})
        first = await result_of(fake, inter.id)
    job = custom_ids(first)[0].split(":")[2]

    async with running(settings):
        for action, index in (("v", 2), ("u", 1), ("r", 0)):
            press = await fake.dispatch_component(f"img:{action}:{job}:{index}", message=first.message)
            assert (await fake.next_callback(press.id)).type == 5
            sent = await result_of(fake, press.id)
            expected = 1 if action == "u" else 2
            assert len(sent.files) == expected, action
        press = await fake.dispatch_component(f"img:x:{job}:0", message=first.message)
        modal = await fake.next_callback(press.id)
        assert modal.type == 9
        label = modal.data["components"][0]
        assert label["component"]["value"] == "a lighthouse"
        submit = await fake.dispatch_modal_submit(modal.data["custom_id"], {"prompt": "a lighthouse at night"})
        sent = await result_of(fake, submit.id)
        assert "a lighthouse at night" in (sent.content or "")
    fake.assert_no_errors()


async def test_forms_opened_before_a_restart_are_still_answered(fake: FakeDiscord, tmp_path: Path) -> None:
    """discord.py forgets open forms when the process stops: a remix form still runs from what it carries,
    an edit form (which needs its message) asks to be reopened; neither leaves "interaction failed"."""
    settings = settings_for(fake, tmp_path)
    target = fake.user_message("look", attachments=[fake.add_attachment(png(48, 48), "cat.png")])
    async with running(settings):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse"})
        first = await result_of(fake, inter.id)
        job = custom_ids(first)[0].split(":")[2]
        remix = await fake.next_callback((await fake.dispatch_component(f"img:x:{job}:0", message=first.message)).id)
        edit = await fake.next_callback((await fake.dispatch_message_command("Edit image", target)).id)
        assert remix.type == edit.type == 9

    async with running(settings):  # the restart, then both forms are sent
        submit = await fake.dispatch_modal_submit(remix.data["custom_id"], {"prompt": "a lighthouse at night"})
        assert (await fake.next_callback(submit.id)).latency < 3
        sent = await result_of(fake, submit.id)
        assert len(sent.files) == 1 and "a lighthouse at night" in (sent.content or "")

        stale = await fake.dispatch_modal_submit(edit.data["custom_id"], {"prompt": "a hat", "region": ""})
        answer = await fake.next_callback(stale.id)
        assert answer.latency < 3 and answer.data["flags"] & 64  # ephemeral
        assert "open it again" in answer.data["content"]
    fake.assert_no_errors()


# --- with the real OpenAI provider against FakeOpenAI ------------------------------------------------------------


def openai_settings(fake: FakeDiscord, server: FakeOpenAI, data_dir: Path, **overrides: Any) -> Settings:
    return settings_for(fake, data_dir, OPENAI_API_KEY=DEFAULT_KEY, OPENAI_BASE_URL=server.base_url, **overrides)


def sent_image(openai: FakeOpenAI) -> bytes:
    files = openai.last.files
    return (files.get("image[]") or files["image"])[0].data


async def test_defer_is_fast_while_fifty_jobs_are_in_flight(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI(latency=2.0) as openai:
        settings = openai_settings(fake, openai, tmp_path, limits={"per_user_jobs": 100, "max_concurrent": 4})
        async with running(settings):
            busy = [await fake.dispatch_slash_command("imagine", {"prompt": f"fox {i}"}) for i in range(50)]
            await fake.wait_for(lambda: len(openai.image_requests) >= 4, timeout=5, what="jobs in flight")
            probe = await fake.dispatch_slash_command("imagine", {"prompt": "the probe"})
            callback = await fake.next_callback(probe.id)
            assert callback.type == 5 and callback.latency < 3.0  # the platform deadline
            sent = await fake.next_webhook_message(probe.id)  # progress: its place in the queue
            assert "in line" in (sent.content or "")
            assert max(fake.ack_latency(i.id) or 9 for i in busy) < 3.0
            fake.assert_no_errors()
        # stopping here cuts the 51 jobs short (`imagebot run` drains them first): no error may come of it
    fake.assert_no_errors()


async def test_streamed_previews_edit_the_response_before_the_result(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI(latency=0.6) as openai:  # 0.2 s between the 2 previews and the result
        async with running(openai_settings(fake, openai, tmp_path, openai={"partial_images": 2})):
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a streamed fox"})
            previews: list[SentMessage] = []
            while not (sent := await fake.next_webhook_message(inter.id, timeout=10)).components:
                if sent.files:
                    previews.append(sent)
        assert openai.last.json["stream"] is True and openai.last.json["partial_images"] == 2
    assert previews, "no progress edit carried a preview"
    for preview in previews:
        assert [f.filename for f in preview.files] == ["preview.png"]
        assert decode(preview.files[0].data).width < 1024
    assert [f.filename for f in sent.files] == ["a_streamed_fox-1.png"]
    assert [a["filename"] for a in sent.message["attachments"]] == ["a_streamed_fox-1.png"]  # the preview is gone
    assert decode(sent.files[0].data).size == (1024, 1024)
    fake.assert_no_errors()


async def test_previews_in_one_interval_make_one_edit_with_the_latest() -> None:
    edits: list[tuple[str, bytes | None]] = []

    async def show(text: str, preview: bytes | None, cancellable: str | None) -> None:
        edits.append((text, preview))

    throttle = Throttle(show, "**a fox**", interval=0.05)
    await throttle(Progress(JobStatus.RUNNING))
    for preview in (b"first", b"second", b"third"):
        await throttle(Progress(JobStatus.RUNNING, preview=preview))
    await asyncio.sleep(0.15)
    await throttle.close()
    assert [preview for _, preview in edits] == [b"third"]


async def test_edit_with_mask_sends_image_and_mask_of_the_same_size(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        image = fake.add_attachment(png(64, 48), "photo.png")
        mask = fake.add_attachment(half_white_mask(64, 48), "mask.png")
        inter = await fake.dispatch_slash_command("edit", {"image": image, "prompt": "add a moon", "mask": mask})
        sent = await result_of(fake, inter.id)
        assert len(sent.files) == 1
        assert decode(sent_image(openai)).size == decode(openai.last.files["mask"][0].data).size
    fake.assert_no_errors()


async def test_edit_with_a_region_sends_a_mask(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        image = fake.add_attachment(png(64, 64), "photo.png")
        inter = await fake.dispatch_slash_command("edit", {"image": image, "prompt": "sky", "region": "top-half"})
        await result_of(fake, inter.id)
        mask = decode(openai.last.files["mask"][0].data)
        assert mask.size == decode(sent_image(openai)).size
    fake.assert_no_errors()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (moderation_blocked(), "safety"),
        (INSUFFICIENT_QUOTA, "budget"),
        (wrong_key(DEFAULT_KEY), "API key"),
        (server_error(), "having trouble"),
        (rate_limited(retry_after=0), "rate-limiting"),
        (org_not_verified(), "verification"),
        (model_not_found("gpt-image-2"), "model"),
        (bad_gateway_html(), "having trouble"),
        (malformed_json(), "couldn't read"),
    ],
)
async def test_upstream_errors_become_friendly_text(
    fake: FakeDiscord, tmp_path: Path, reply: Reply, expected: str
) -> None:
    async with FakeOpenAI() as openai:
        settings = openai_settings(fake, openai, tmp_path, openai={"max_retries": 0})
        async with running(settings) as adapter:
            openai.script(reply)
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"})
            assert (await fake.next_callback(inter.id)).type == 5
            sent = await fake.wait_for(
                lambda: next(
                    (s for s in fake.sent if s.interaction_id == inter.id and "ref " in (s.content or "")), None
                ),
                what="the error reply",
            )
    text = sent.content or ""
    assert expected in text and "(ref " in text
    for secret in (DEFAULT_KEY, DEFAULT_KEY[-4:], "org-", "Traceback", "req_", fake.token):
        assert secret not in text
    assert not sent.files
    del adapter
    fake.assert_no_errors()


# --- replies and message menus ------------------------------------------------------------------------------------


async def first_result(fake: FakeDiscord, prompt: str = "a cat", count: int = 1) -> SentMessage:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": prompt, "count": count})
    return await result_of(fake, inter.id)


async def channel_result(fake: FakeDiscord) -> SentMessage:
    """The channel message a reply ends in (a placeholder first, edited into the result)."""

    def find() -> SentMessage | None:
        return next((s for s in reversed(fake.sent) if s.kind == "channel" and s.message.get("attachments")), None)

    return await fake.wait_for(find, timeout=10, what="a reply with images")


async def test_reply_with_an_image_varies_that_image(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    result = await first_result(fake)
    mine = fake.add_attachment(png(40, 40, (10, 200, 10)), "mine.png")

    message = await fake.dispatch_message_create("like this", attachments=[mine], reply_to=result.message)

    await channel_result(fake)
    reply = next(s for s in fake.sent if s.kind == "channel")
    assert str(reply.payload["message_reference"]["message_id"]) == message["id"]
    vary = [j for j in await bot.core.jobs.store.history(limit=5) if j.kind == "vary"]
    assert len(vary) == 1 and vary[0].prompt == "like this"
    fake.assert_no_errors()


async def test_reply_without_an_image_varies_the_result(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    result = await first_result(fake, count=2)

    await fake.dispatch_message_create("2 more purple", reply_to=result.message)

    final = await channel_result(fake)
    assert any(c.startswith("img:v:") for row in final.message["components"] for c in _ids(row))
    [vary] = [j for j in await bot.core.jobs.store.history(limit=5) if j.kind == "vary"]
    assert vary.prompt == "more purple"
    fake.assert_no_errors()


def _ids(row: dict[str, Any]) -> list[str]:
    return [c.get("custom_id", "") for c in row.get("components", [])]


async def test_a_mention_replying_to_any_image_varies_it(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    other = fake.user_message("hello", attachments=[fake.add_attachment(png(), "x.png")], author=make_user("7", "bob"))

    await fake.dispatch_message_create(f"<@{fake.bot_user['id']}>", mentions=[fake.bot_user], reply_to=other)

    await channel_result(fake)
    [vary] = [j for j in await bot.core.jobs.store.history(limit=5) if j.kind == "vary"]
    assert vary.prompt == ""
    fake.assert_no_errors()


async def test_reply_to_someone_else_without_mention_is_ignored(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    other = fake.user_message("hello", attachments=[fake.add_attachment(png(), "x.png")])

    handled = bot.messages_handled
    await fake.dispatch_message_create("nice", reply_to=other)
    async with asyncio.timeout(5):  # until the bot has handled it (answered or ignored), not a fixed sleep
        while bot.messages_handled == handled:
            await asyncio.sleep(0.01)

    assert not [s for s in fake.sent if s.kind == "channel"]


async def test_vary_image_menu(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    target = fake.user_message("look", attachments=[fake.add_attachment(png(48, 48), "cat.png")])

    inter = await fake.dispatch_message_command("Vary image", target)

    assert (await fake.next_callback(inter.id)).type == 5
    sent = await result_of(fake, inter.id)
    assert len(sent.files) == 1
    fake.assert_no_errors()


async def test_edit_image_menu_opens_a_modal_with_a_mask_upload(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    target = fake.user_message("look", attachments=[fake.add_attachment(png(48, 48), "cat.png")])

    inter = await fake.dispatch_message_command("Edit image", target)

    modal = await fake.next_callback(inter.id)
    assert modal.type == 9 and modal.latency < 3
    kinds = [c["component"]["type"] for c in modal.data["components"]]
    assert kinds == [4, 4, 19]  # prompt, region, mask file upload
    mask = fake.add_attachment(half_white_mask(48, 48), "mask.png")
    submit = await fake.dispatch_modal_submit(
        modal.data["custom_id"], {"prompt": "a hat", "region": "", "mask": [mask]}
    )
    sent = await result_of(fake, submit.id)
    assert len(sent.files) == 1 and "a hat" in (sent.content or "")
    [edit] = [j for j in await bot.core.jobs.store.history(limit=5) if j.kind == "edit"]
    assert any(str(name).startswith("mask") for name in edit.request["inputs"])  # type: ignore[attr-defined]
    fake.assert_no_errors()


async def test_edit_image_menu_with_a_region(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    target = fake.user_message("look", attachments=[fake.add_attachment(png(48, 48), "cat.png")])
    inter = await fake.dispatch_message_command("Edit image", target)
    modal = await fake.next_callback(inter.id)

    submit = await fake.dispatch_modal_submit(modal.data["custom_id"], {"prompt": "a hat", "region": "A1:B2"})

    await result_of(fake, submit.id)
    [edit] = [j for j in await bot.core.jobs.store.history(limit=5) if j.kind == "edit"]
    assert edit.request["region"] == "A1:B2"
    fake.assert_no_errors()


async def test_attachments_from_other_hosts_are_refused(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    evil = fake.add_attachment(png(), "cat.png") | {"url": "http://169.254.169.254/latest/cat.png"}

    inter = await fake.dispatch_slash_command("vary", {"image": evil})

    sent = await fake.next_webhook_message(inter.id)
    assert "only download images shared in Discord" in (sent.content or "")
    assert not [r for r in fake.requests if r.path.startswith("/attachments/")]
    fake.assert_no_errors()


# --- sizes, access, confirmation, restarts -------------------------------------------------------------------------


async def test_oversize_results_are_fitted_under_the_upload_limit(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    limit = 30_000
    inter = await fake.dispatch_slash_command(
        "imagine", {"prompt": "a detailed city", "size": "1024x1024"}, attachment_size_limit=limit
    )

    sent = await result_of(fake, inter.id)
    [file] = sent.files
    assert len(file.data) <= limit
    assert decode(file.data).size[0] > 0
    fake.assert_no_errors()


@pytest.mark.parametrize(
    ("rules", "context", "why"),
    [
        ({"allowed_guilds": ["42"]}, {}, "not enabled on this server"),
        ({"allowed_channels": ["42"]}, {}, "not enabled in this channel"),
        ({"allowed_roles": ["42"]}, {}, "roles"),
        ({"allow_dms": False}, {"dm": True}, "direct messages"),
    ],
)
async def test_refused_users_get_an_ephemeral_reason(
    fake: FakeDiscord, tmp_path: Path, rules: dict[str, Any], context: dict[str, Any], why: str
) -> None:
    async with running(settings_for(fake, tmp_path, discord=rules)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"}, **context)
        callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.data["flags"]) == (4, 64)
    assert why in callback.data["content"] and callback.latency < 3
    fake.assert_no_errors()


async def test_others_may_not_press_the_buttons(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    result = await first_result(fake)
    job = custom_ids(result)[0].split(":")[2]
    stranger = make_user("1185000000000000999", "bob")

    press = await fake.dispatch_component(f"img:v:{job}:1", message=result.message, user=stranger)

    callback = await fake.next_callback(press.id)
    assert (callback.type, callback.data["flags"]) == (4, 64)
    assert "Only <@" in callback.data["content"]
    fake.assert_no_errors()


async def test_expensive_jobs_wait_for_confirm(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai:
        settings = openai_settings(fake, openai, tmp_path, jobs={"confirm_above_usd": 0.0001})
        async with running(settings):
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a castle", "quality": "high"})
            ask = await result_of(fake, inter.id)
            assert "Go ahead?" in (ask.content or "") and not openai.image_requests
            ok = next(i for i in custom_ids(ask) if i.startswith("img:ok:"))
            press = await fake.dispatch_component(ok, message=ask.message)
            assert (await fake.next_callback(press.id)).type == 6
            sent = await result_of(fake, press.id)
            assert len(sent.files) == 1 and sent.message_id == ask.message_id
    fake.assert_no_errors()


async def test_results_after_the_token_expired_go_to_the_channel(fake: FakeDiscord, tmp_path: Path) -> None:
    async with running(settings_for(fake, tmp_path), token_lifetime=0.0):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a slow fox"})
        sent = await channel_result(fake)
    assert f"<@{fake.user['id']}>" in (sent.content or "")
    assert [str(u) for u in sent.payload["allowed_mentions"]["users"]] == [fake.user["id"]]
    assert inter.id not in {s.interaction_id for s in fake.sent}
    fake.assert_no_errors()


async def test_undelivered_results_are_posted_at_start(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = settings_for(fake, tmp_path)
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        context = JobContext(platform="discord", user=fake.user["id"], workspace=GUILD_ID, channel=CHANNEL_ID)
        outcome = await core.jobs.submit(context, GenerateRequest(prompt="left over"))
    async with running(settings) as adapter:
        sent = await channel_result(fake)
        assert "left over" in (sent.content or "") and len(sent.files) == 1
        await delivered(adapter, outcome.job.id)
    fake.assert_no_errors()


async def test_commands_are_synced_only_when_they_differ(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = settings_for(fake, tmp_path)
    async with running(settings) as first:
        assert first.synced is True
    assert len(fake.command_puts) == 1
    names = sorted((c["name"], c["type"]) for c in fake.command_puts[0][1])
    assert names == [
        ("Edit image", 3),
        ("Vary image", 3),
        ("edit", 1),
        ("history", 1),
        ("imagebot-admin", 1),
        ("imagine", 1),
        ("vary", 1),
    ]
    async with running(settings) as second:
        assert second.synced is False
    assert len(fake.command_puts) == 1
    fake.commands[0]["description"] = "an older description"
    async with running(settings) as third:
        assert third.synced is True
    assert len(fake.command_puts) == 2
    fake.assert_no_errors()


async def test_unknown_jobs_get_an_ephemeral_answer(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    press = await fake.dispatch_component("img:v:nosuchjob2:1")

    callback = await fake.next_callback(press.id)
    assert (callback.type, callback.data["flags"]) == (4, 64)
    assert "can't find that image" in callback.data["content"]
    fake.assert_no_errors()


async def test_no_blocking_calls_on_the_loop_during_imagine_and_vary(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    """blockbuster raises on blocking calls (file I/O, sleep, sockets...) made on the loop by the adapter or core."""
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["adapters.discord", "bot"]):
        result = await first_result(fake, count=2)
        press = await fake.dispatch_component(custom_ids(result)[-3], message=result.message)
        await result_of(fake, press.id)
    fake.assert_no_errors()


async def test_state_follows_the_connection(fake: FakeDiscord, tmp_path: Path) -> None:
    async with running(settings_for(fake, tmp_path)) as adapter:
        assert (adapter.name, adapter.state.value) == ("discord", "connected")
    assert adapter.state.value == "stopped"


async def test_the_same_request_twice_shows_the_same_images(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    first = await fake.dispatch_slash_command("imagine", {"prompt": "twins"})
    second = await fake.dispatch_slash_command("imagine", {"prompt": "twins"})

    one, two = await result_of(fake, first.id), await result_of(fake, second.id)

    assert [f.data for f in one.files] == [f.data for f in two.files]
    assert custom_ids(one) == custom_ids(two)
    fake.assert_no_errors()


async def test_a_long_prompt_fits_in_one_message(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a very long story " * 300})
        sent = await result_of(fake, inter.id)

    assert len(sent.content or "") <= 2000 and f"<@{fake.user['id']}>" in (sent.content or "")
    fake.assert_no_errors()


async def autocomplete(fake: FakeDiscord, command: str, options: list[dict[str, Any]]) -> list[str]:
    data = {"id": fake.command_id(command), "name": command, "type": 1, "options": options}
    inter = await fake._dispatch_interaction(4, data, {})
    callback = await fake.next_callback(inter.id)
    assert callback.type == 8
    return [c["value"] for c in callback.data["choices"]]


async def test_autocomplete_offers_models_sizes_and_regions(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    models = await autocomplete(fake, "imagine", [{"name": "model", "type": 3, "value": "", "focused": True}])
    assert "gpt-image-2" in models and "fast" in models and len(models) <= 25
    sizes = await autocomplete(fake, "imagine", [{"name": "size", "type": 3, "value": "", "focused": True}])
    assert "1024x1024" in sizes
    typed = await autocomplete(fake, "imagine", [{"name": "size", "type": 3, "value": "1280x720", "focused": True}])
    assert typed[0] == "1280x720"
    image = {"name": "image", "type": 11, "value": "1"}
    regions = await autocomplete(fake, "edit", [image, {"name": "region", "type": 3, "value": "", "focused": True}])
    assert regions == ["top-half", "bottom-half", "left-half", "right-half", "center", "border"]
    cells = await autocomplete(fake, "edit", [image, {"name": "region", "type": 3, "value": "a1:b2", "focused": True}])
    assert cells == ["A1:B2"]
    fake.assert_no_errors()


async def test_cancel_spends_nothing(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai:
        settings = openai_settings(fake, openai, tmp_path, jobs={"confirm_above_usd": 0.0001})
        async with running(settings) as adapter:
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a palace", "quality": "high"})
            ask = await result_of(fake, inter.id)
            no = next(i for i in custom_ids(ask) if i.startswith("img:no:"))
            press = await fake.dispatch_component(no, message=ask.message)
            sent = await fake.next_webhook_message(press.id)
            assert "Cancelled" in (sent.content or "") and sent.message["components"] == []
            job = await adapter.core.jobs.store.get(no.split(":")[2])
            assert job is not None and job.status.value == "cancelled" and not openai.image_requests
    fake.assert_no_errors()


async def test_a_wrong_token_stops_start_with_one_clear_line(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        DISCORD_TOKEN="MTE4NTAwMDAwMDAwMDAwMDAwMQ.wrong.token",
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
    )
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
        with pytest.raises(ConfigurationError, match="Discord rejected DISCORD_TOKEN") as caught:
            await adapter.start()
    assert "wrong.token" not in caught.value.friendly()
    assert adapter.state.value == "stopped" and adapter.client.is_closed()
