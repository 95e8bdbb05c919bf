"""The fake Discord, driven by a real discord.py 2.7.1 Client + CommandTree (a tiny test bot, not the adapter)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from PIL import Image

from tests.fakes.discord_server import BOT_ID, CHANNEL_ID, GUILD_ID, FakeDiscord, running_client


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class VaryButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"img:vary:(?P<job>\w+):(?P<index>\d+)"):
    """A persistent button: its state lives in the custom_id, so it works for messages sent before a restart."""

    def __init__(self, job: str, index: int) -> None:
        super().__init__(discord.ui.Button(label=f"Vary {index}", custom_id=f"img:vary:{job}:{index}"))
        self.job, self.index = job, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> VaryButton:
        return cls(match["job"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()  # a component: DEFERRED_UPDATE_MESSAGE (6)
        await interaction.followup.send(f"varying {self.job} #{self.index}", ephemeral=True)


class RemixModal(discord.ui.Modal, title="Remix"):
    prompt: discord.ui.Label[Any] = discord.ui.Label(text="Prompt", component=discord.ui.TextInput(custom_id="prompt"))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(self.prompt.component, discord.ui.TextInput)
        job = self.custom_id.removeprefix("remix:")
        await interaction.response.send_message(f"remix {job}: {self.prompt.component.value}")


class TinyBot:
    """A Client + CommandTree whose every failure is recorded (and fails the test at teardown)."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self.client)
        self.errors: list[BaseException | str] = []
        self.failed = asyncio.Event()
        self.client.add_dynamic_items(VaryButton)

        @self.tree.error
        async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.record(error)

        async def on_error(event: str, /, *args: object, **kwargs: object) -> None:
            self.record(sys.exc_info()[1] or f"error in {event}")

        self.client.event(on_error)

        @self.client.event
        async def on_message(message: discord.Message) -> None:
            if message.author.id != self.client.user.id and message.reference is not None:  # type: ignore[union-attr]
                await message.reply(
                    f"{message.content!r} replies to {message.reference.message_id}", mention_author=False
                )

        @self.tree.command(description="Generate images")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)
            files = [
                discord.File(io.BytesIO(png(colour)), filename=f"image-{i}.png", description=f"{prompt}, take {i}")
                for i, colour in enumerate([(200, 40, 40), (40, 40, 200)], start=1)
            ]
            await interaction.edit_original_response(content=f"**{prompt}**", attachments=files)

        @self.tree.command(description="Describe an image")
        async def describe(interaction: discord.Interaction, image: discord.Attachment) -> None:
            await interaction.response.defer(thinking=True)
            data = await image.read()
            await interaction.edit_original_response(content=f"{image.filename} {len(data)} {sha(data)}")

        @self.tree.command(description="Remix with a new prompt")
        async def remix(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(RemixModal(custom_id="remix:job42"))

        @self.tree.command(description="Too slow to acknowledge")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(3.2)
            await interaction.response.defer()

        @app_commands.context_menu(name="Vary image")
        async def vary_image(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.defer(thinking=True, ephemeral=True)
            attachment = message.attachments[0]
            data = await attachment.read()
            await interaction.followup.send(f"vary {message.id} {attachment.filename} {sha(data)}", ephemeral=True)

        self.tree.add_command(vary_image)

    def record(self, error: BaseException | str) -> None:
        self.errors.append(error)
        self.failed.set()
        self.fake.report(error)  # a test waiting on the fake fails now, not after its timeout


class _Errors(logging.Handler):
    """discord.py logs (and otherwise swallows) exceptions in views, modals and dynamic items."""

    def __init__(self, bot: TinyBot) -> None:
        super().__init__(logging.ERROR)
        self.bot = bot

    def emit(self, record: logging.LogRecord) -> None:
        self.bot.record(record.exc_info[1] if record.exc_info and record.exc_info[1] else record.getMessage())


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[TinyBot]:
    tiny = TinyBot(fake)
    handler = _Errors(tiny)
    logging.getLogger("discord").addHandler(handler)
    try:
        async with running_client(tiny.client, fake):
            yield tiny
    finally:
        logging.getLogger("discord").removeHandler(handler)
    assert not tiny.errors, tiny.errors
    fake.assert_no_errors()


# --- the fake on its own ------------------------------------------------------------------------------------


async def test_rest_answers_exact_json_content_type(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bot {fake.token}"}
    async with http.get(f"{fake.api_base}/users/@me", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["id"] == BOT_ID


async def test_unknown_route_is_a_discord_404(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.api_base}/no/such/route", headers={"Authorization": f"Bot {fake.token}"}) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.json() == {"message": "404: Not Found", "code": 0}


async def test_cdn_serves_only_signed_urls(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    data = png((1, 2, 3))
    attachment = fake.add_attachment(data, "cat.png")
    assert attachment | {"id": "", "url": "", "proxy_url": ""} == {
        "id": "",
        "filename": "cat.png",
        "size": len(data),
        "url": "",
        "proxy_url": "",
        "content_type": "image/png",
        "width": 32,
        "height": 24,
        "placeholder": "",
        "placeholder_version": 1,
    }
    assert re.search(r"\?ex=[0-9a-f]+&is=[0-9a-f]+&hm=[0-9a-f]{64}&$", attachment["url"])
    async with http.get(attachment["url"]) as resp:
        assert (resp.status, resp.headers["Content-Type"], await resp.read()) == (200, "image/png", data)
    async with http.get(attachment["url"].partition("?")[0]) as resp:
        assert resp.status == 404


# --- a real discord.py client ---------------------------------------------------------------------------------


async def test_login_and_gateway_handshake(fake: FakeDiscord, bot: TinyBot) -> None:
    assert [(r.method, r.path, r.status) for r in fake.requests[:2]] == [
        ("GET", "/api/v10/users/@me", 200),
        ("GET", "/api/v10/oauth2/applications/@me", 200),
    ]
    assert fake.intents == discord.Intents.default().value
    assert fake.gateway_query["v"] == "10"
    assert fake.gateway_query["encoding"] == "json"
    assert fake.gateway_query["compress"] in {"zlib-stream", "zstd-stream"}  # yet plain text frames are accepted
    assert fake.heartbeats >= 1
    assert bot.client.user is not None and str(bot.client.user.id) == BOT_ID
    assert bot.client.get_channel(int(CHANNEL_ID)) is not None


async def test_deferred_command_edits_original_with_two_pngs(fake: FakeDiscord, bot: TinyBot) -> None:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a red fox"})

    callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.status, callback.with_response) == (5, 200, True)
    latency = fake.ack_latency(inter.id)
    assert latency is not None and latency < 3.0

    sent = await fake.next_webhook_message(inter.id)
    assert (sent.kind, sent.method) == ("original", "PATCH")
    assert sent.path.endswith(f"/webhooks/{inter.payload['application_id']}/{inter.token}/messages/@original")
    assert sent.content == "**a red fox**"
    assert [(f.index, f.filename) for f in sent.files] == [(0, "image-1.png"), (1, "image-2.png")]
    for file in sent.files:
        with Image.open(io.BytesIO(file.data)) as img:
            assert (img.format, img.size) == ("PNG", (32, 24))
    assert sent.alt_texts == {"image-1.png": "a red fox, take 1", "image-2.png": "a red fox, take 2"}
    assert sent.message["id"] == inter.original_message_id
    assert [a["filename"] for a in sent.message["attachments"]] == ["image-1.png", "image-2.png"]


async def test_attachment_option_is_read_from_the_cdn(fake: FakeDiscord, bot: TinyBot) -> None:
    data = png((10, 200, 10))
    attachment = fake.add_attachment(data, "cat.png")

    inter = await fake.dispatch_slash_command("describe", {"image": attachment})

    sent = await fake.next_webhook_message(inter.id)
    assert sent.content == f"cat.png {len(data)} {sha(data)}"
    downloads = [r for r in fake.requests if r.path.startswith("/attachments/")]
    assert [(r.path, r.status) for r in downloads] == [(f"/attachments/{CHANNEL_ID}/{attachment['id']}/cat.png", 200)]
    assert set(downloads[0].query) == {"ex", "is", "hm"}


async def test_message_context_menu_receives_target_and_its_attachment(fake: FakeDiscord, bot: TinyBot) -> None:
    data = png((90, 90, 90))
    target = fake.user_message("look at this", attachments=[fake.add_attachment(data, "mine.png")])

    inter = await fake.dispatch_message_command("Vary image", target)

    callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.data) == (5, {"flags": 64})
    sent = await fake.next_webhook_message(inter.id)
    assert sent.kind == "followup"
    assert sent.content == f"vary {target['id']} mine.png {sha(data)}"
    assert sent.payload["flags"] == 64
    assert sent.message_id == inter.original_message_id  # the first followup replaces the "thinking" message
    assert sent.message["flags"] == 64


async def test_persistent_dynamic_button_defers_update_then_follows_up(fake: FakeDiscord, bot: TinyBot) -> None:
    inter = await fake.dispatch_component("img:vary:job42:2")  # a bot message from before the restart

    callback = await fake.next_callback(inter.id)
    assert (callback.type, callback.status) == (6, 200)
    sent = await fake.next_webhook_message(inter.id)
    assert (sent.kind, sent.content) == ("followup", "varying job42 #2")
    assert sent.payload["flags"] == 64
    assert sent.message_id != inter.payload["message"]["id"]


async def test_modal_submit_reaches_on_submit(fake: FakeDiscord, bot: TinyBot) -> None:
    command = await fake.dispatch_slash_command("remix")
    modal = await fake.next_callback(command.id)
    assert modal.type == 9
    assert (modal.data["custom_id"], modal.data["title"]) == ("remix:job42", "Remix")
    label = modal.data["components"][0]
    assert (label["type"], label["label"], label["component"]["type"]) == (18, "Prompt", 4)

    submit = await fake.dispatch_modal_submit("remix:job42", {"prompt": "in watercolour"})

    reply = await fake.next_callback(submit.id)
    assert (reply.type, reply.data["content"]) == (4, "remix job42: in watercolour")
    sent = await fake.next_message(submit.id)
    assert (sent.kind, sent.message["content"]) == ("callback", "remix job42: in watercolour")


async def test_tree_sync_puts_commands_and_fetch_returns_them(fake: FakeDiscord, bot: TinyBot) -> None:
    synced = await bot.tree.sync()

    assert len(fake.command_puts) == 1
    guild_id, payload = fake.command_puts[0]
    assert guild_id is None
    assert sorted((c["name"], c["type"]) for c in payload) == [
        ("Vary image", 3),
        ("describe", 1),
        ("imagine", 1),
        ("remix", 1),
        ("slow", 1),
    ]
    [image] = next(c for c in payload if c["name"] == "describe")["options"]
    assert (image["name"], image["type"], image["required"]) == ("image", 11, True)
    fetched = await bot.tree.fetch_commands()
    assert {c.name: str(c.id) for c in fetched} == {c["name"]: c["id"] for c in fake.commands}
    assert {c.name: c.id for c in synced} == {c.name: c.id for c in fetched}


async def test_guild_sync_is_a_guild_put(fake: FakeDiscord, bot: TinyBot) -> None:
    guild = discord.Object(int(GUILD_ID))
    bot.tree.copy_global_to(guild=guild)

    await bot.tree.sync(guild=guild)

    assert [g for g, _ in fake.command_puts] == [GUILD_ID]
    assert {c["guild_id"] for c in fake.guild_commands[GUILD_ID]} == {GUILD_ID}


async def test_acknowledging_after_three_seconds_fails_loudly(fake: FakeDiscord, bot: TinyBot) -> None:
    inter = await fake.dispatch_slash_command("slow")

    callback = await fake.next_callback(inter.id, timeout=4.5)
    assert callback.status == 404 and 3.0 < callback.latency < 4.0
    with pytest.raises(AssertionError, match=rf"interaction {inter.id}: first response after 3\.\d+ s"):
        fake.assert_no_errors()
    await asyncio.wait_for(bot.failed.wait(), 2)
    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, discord.NotFound) and error.original.code == 10062
    bot.errors.clear()
    fake.errors.clear()


async def test_reply_to_the_bot_reaches_on_message_with_reference(fake: FakeDiscord, bot: TinyBot) -> None:
    earlier = fake.user_message("here is your fox", author=fake.bot_user)

    reply = await fake.dispatch_message_create("make it blue", reply_to=earlier)

    sent = await fake.next_message(kinds=["channel"])
    assert sent.path == f"/api/v10/channels/{CHANNEL_ID}/messages"
    assert sent.content == f"'make it blue' replies to {earlier['id']}"
    assert str(sent.payload["message_reference"]["message_id"]) == reply["id"]
    assert sent.payload["allowed_mentions"]["replied_user"] is False
    assert sent.message["type"] == 19


async def test_reply_without_ping_arrives_without_content(fake: FakeDiscord, bot: TinyBot) -> None:
    earlier = fake.user_message("here is your fox", author=fake.bot_user)

    await fake.dispatch_message_create("make it blue", reply_to=earlier, ping_reply=False)

    sent = await fake.next_message(kinds=["channel"])
    assert sent.content == f"'' replies to {earlier['id']}"  # no MESSAGE_CONTENT intent, no mention


async def test_slash_command_in_a_dm_is_answered_in_the_dm(fake: FakeDiscord, bot: TinyBot) -> None:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"}, dm=True)

    assert "member" not in inter.payload and inter.payload["user"]["id"] == fake.user["id"]
    sent = await fake.next_webhook_message(inter.id)
    assert sent.message["channel_id"] == inter.payload["channel"]["id"] == fake.user["id"]
    assert "guild_id" not in sent.message


async def test_files_over_the_interaction_upload_limit_are_rejected(fake: FakeDiscord, bot: TinyBot) -> None:
    limit = len(png((200, 40, 40))) - 1  # one byte short for the first image /imagine sends
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"}, attachment_size_limit=limit)

    await asyncio.wait_for(bot.failed.wait(), 2)
    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, discord.HTTPException)
    assert (error.original.status, error.original.code) == (413, 40005)
    assert not [s for s in fake.sent if s.interaction_id == inter.id]
    bot.errors.clear()
    fake.errors.clear()
