"""Slack: U1..Un under a result post that image on its own with the upscale tools; Zoom out and Pan outpaint it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.slack import render
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.fakes.slack_server import CHANNEL_ID, USER_ID, FakeSlack, PostedMessage
from tests.images import decode
from tests.slack_harness import SlackBot, button, slack_bot

TOOLS = [
    ("img_vary_subtle", "Vary (Subtle)"),
    ("img_vary_strong", "Vary (Strong)"),
    ("img_zoom_15", "Zoom out 1.5x"),
    ("img_zoom_2", "Zoom out 2x"),
    ("img_pan_left", "⬅️"),
    ("img_pan_right", "➡️"),
    ("img_pan_up", "⬆️"),
    ("img_pan_down", "⬇️"),
    ("img_remix", "Remix"),
]


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
        assert not server.spec_violations


@pytest.fixture
async def bot(fake: FakeSlack, openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[SlackBot]:
    keys = {"openai_api_key": DEFAULT_KEY, "openai_base_url": openai.base_url}
    async with slack_bot(fake, tmp_path / "data", **keys) as running:
        yield running


def elements(message: PostedMessage) -> list[dict[str, Any]]:
    return [element for block in message.blocks or [] if block["type"] == "actions" for element in block["elements"]]


def upscale_messages(fake: FakeSlack) -> list[PostedMessage]:
    return [
        m
        for m in fake.messages
        if m.method == "chat.postMessage" and (m.metadata or {}).get("event_type") == "imagebot_upscale"
    ]


async def finished(bot: SlackBot, uploads: int, controls: int) -> None:
    """``uploads`` images messages and ``controls`` result button messages posted, and the adapter idle."""
    await bot.fake.wait_for_call("files.completeUploadExternal", uploads, 10)
    await bot.fake.wait_for(lambda: len(bot.controls()) >= controls, 10, f"{controls} controls messages")
    await asyncio.wait_for(bot.adapter.idle(), 10)


async def press(bot: SlackBot, message: PostedMessage, element: dict[str, Any]) -> None:
    payload = bot.fake.block_actions_payload(element["action_id"], element["value"], message=message.to_slack())
    await bot.fake.send_interactive(payload)


async def test_u_posts_the_image_alone_with_its_tools_and_zoom_out_sends_a_transparent_canvas(
    fake: FakeSlack, openai: FakeOpenAI, bot: SlackBot
) -> None:
    await fake.send_slash_command("/imagine", "a red fox in the snow --n 2")
    await bot.uploads_done(1)
    [controls] = bot.controls()
    job = button(controls, "vary:")["value"].split(":")[1]
    assert [e["action_id"] for e in elements(controls) if e["value"].startswith("upscale:")] == [
        "img_upscale_1",
        "img_upscale_2",
    ]

    await press(bot, controls, button(controls, f"upscale:{job}:2"))
    [tools] = await fake.wait_for(lambda: upscale_messages(fake) or None, 10, "the upscale message")
    assert [(e["action_id"], e["text"]["text"]) for e in elements(tools)] == TOOLS
    assert [e["value"] for e in elements(tools)] == [f"upscale:{job}:2"] * 8 + [f"remix:{job}"]
    [alone] = [m for m in bot.image_messages(CHANNEL_ID, controls.ts)]
    assert len(alone.files) == 1
    assert alone.text.startswith(f"<@{USER_ID}> · *Upscale of image 2*\n> a red fox in the snow")
    assert len(openai.image_requests) == 1  # U makes nothing new

    zoom = next(e for e in elements(tools) if e["action_id"] == "img_zoom_15")
    await press(bot, tools, zoom)
    await finished(bot, 3, 2)  # the grid, the upscaled image, the zoomed result (and its buttons)
    sent = openai.last
    assert sent.path.endswith("/images/edits") and sent.param("size") == "1536x1536"
    canvas = decode((sent.files.get("image") or sent.files["image[]"])[0].data).convert("RGBA")
    assert canvas.size == (1536, 1536)
    alpha = canvas.getchannel("A")
    assert [alpha.getpixel(p) for p in ((0, 0), (1535, 768), (768, 1535), (255, 768))] == [0] * 4
    assert [alpha.getpixel(p) for p in ((768, 768), (257, 257), (1278, 1278))] == [255] * 3
    [_, _, zoomed] = [m for m in fake.messages if m.method == "files.completeUploadExternal"]
    assert zoomed.text.startswith(f"<@{USER_ID}> · *Zoom out 1.5× of image 2*\n> a red fox in the snow")
    zoomed_job = await bot.job(button(bot.controls()[1], "vary:")["value"].split(":")[1])
    assert zoomed_job.kind == "zoom"


async def test_pan_and_strong_variation_from_the_upscale_message(
    fake: FakeSlack, openai: FakeOpenAI, bot: SlackBot
) -> None:
    await fake.send_slash_command("/imagine", "a lighthouse --size 1536x1024")
    await bot.uploads_done(1)
    [controls] = bot.controls()
    job = button(controls, "vary:")["value"].split(":")[1]
    await press(bot, controls, button(controls, f"upscale:{job}:1"))
    [tools] = await fake.wait_for(lambda: upscale_messages(fake) or None, 10, "the upscale message")

    await press(bot, tools, next(e for e in elements(tools) if e["action_id"] == "img_pan_down"))
    await finished(bot, 3, 2)
    size = openai.last.param("size")
    assert size == "1536x1536"  # 1536x1024 extended down by half
    alpha = (
        decode((openai.last.files.get("image") or openai.last.files["image[]"])[0].data).convert("RGBA").getchannel("A")
    )
    assert alpha.getpixel((768, 1535)) == 0 and alpha.getpixel((768, 1)) == 255
    panned = [m for m in fake.messages if m.method == "files.completeUploadExternal"][-1]
    assert "*Pan down of image 1*" in panned.text

    await press(bot, tools, next(e for e in elements(tools) if e["action_id"] == "img_vary_strong"))
    await finished(bot, 4, 3)
    assert "bold variation" in (openai.last.param("prompt") or "")
    varied = [m for m in fake.messages if m.method == "files.completeUploadExternal"][-1]
    assert varied.text.startswith(f"<@{USER_ID}> · *Variations (strong) of image 1*\n> a lighthouse")


async def test_an_edit_of_a_result_says_which_image_and_region(
    fake: FakeSlack, openai: FakeOpenAI, bot: SlackBot
) -> None:
    await fake.send_slash_command("/imagine", "a red fox --n 2")
    await finished(bot, 1, 1)
    [grid] = bot.image_messages(CHANNEL_ID)
    await fake.send_interactive(fake.message_shortcut_payload("edit_image", grid.to_slack()))
    opened = await fake.wait_for_call("views.open")
    values = {
        render.PROMPT_BLOCK: {render.PROMPT_ACTION: {"type": "plain_text_input", "value": "make it snowy"}},
        render.REGION_BLOCK: {
            render.REGION_ACTION: {"type": "static_select", "selected_option": {"value": "top-half"}}
        },
    }
    await fake.send_interactive(fake.view_submission_payload(opened.response["view"]["id"], values))
    await finished(bot, 2, 2)
    edited = [m for m in fake.messages if m.method == "files.completeUploadExternal"][-1]
    assert edited.text.startswith(f"<@{USER_ID}> · *Edit of image 1 (top-half)*\n> make it snowy")


async def test_others_may_not_upscale_zoom_or_pan_someone_elses_image(
    fake: FakeSlack, openai: FakeOpenAI, bot: SlackBot
) -> None:
    await fake.send_slash_command("/imagine", "a harbour")
    await finished(bot, 1, 1)
    [controls] = bot.controls()
    job = button(controls, "vary:")["value"].split(":")[1]
    await press(bot, controls, button(controls, f"upscale:{job}:1"))
    [tools] = await fake.wait_for(lambda: upscale_messages(fake) or None, 10, "the upscale message")

    for message, action_id, value in [
        (controls, "img_upscale_1", f"upscale:{job}:1"),
        (tools, "img_zoom_2", f"upscale:{job}:1"),
        (tools, "img_pan_left", f"upscale:{job}:1"),
    ]:
        payload = fake.block_actions_payload(action_id, value, message=message.to_slack(), user_id="U0STRANGER")
        await fake.send_interactive(payload)
    await fake.wait_for(lambda: sum("Only <@" in t for t in bot.ephemeral_texts()) >= 3 or None, 10, "3 refusals")
    await asyncio.wait_for(bot.adapter.idle(), 10)
    assert len(openai.image_requests) == 1 and len(upscale_messages(fake)) == 1
