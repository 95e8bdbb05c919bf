"""Who may use the Discord bot, from every entry point: allow-lists × DM/server × owner/others, through the fake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord_server import ARTIST_ROLE_ID, GUILD_ID, Callback, FakeDiscord, FakeInteraction, Json, make_user
from tests.images import png
from tests.test_discord import custom_ids, fake, result_of, running, settings_for  # noqa: F401

OTHER = make_user("1185000000000000999", "bob")
ENTRY_POINTS = ("slash", "menu", "button", "modal", "reply")


@dataclass(frozen=True)
class Seen:
    """What one attempt led to: ``refusal`` text (ephemeral, first response) or None (accepted)."""

    refusal: str | None


# rules -> {(where, who): expected refusal words or None (accepted)}; "others" lack the role, owners hold it
TABLE: list[tuple[dict[str, Any], dict[tuple[str, str], str | None]]] = [
    ({}, {("guild", "owner"): None, ("guild", "other"): None, ("dm", "owner"): None}),
    (
        {"allowed_guilds": [GUILD_ID]},
        {("guild", "owner"): None, ("guild", "other"): None, ("dm", "owner"): "direct messages"},
    ),
    (
        {"allowed_roles": [ARTIST_ROLE_ID]},
        {("guild", "owner"): None, ("guild", "other"): "roles", ("dm", "owner"): "direct messages"},
    ),
    (
        {"allowed_guilds": ["42"]},
        {("guild", "owner"): "not enabled on this server", ("dm", "owner"): "direct messages"},
    ),
    ({"allowed_channels": ["42"]}, {("guild", "owner"): "not enabled in this channel"}),
    ({"allowed_roles": [ARTIST_ROLE_ID], "allow_dms": True}, {("dm", "owner"): None, ("guild", "other"): "roles"}),
    ({"allow_dms": False}, {("dm", "owner"): "direct messages", ("guild", "owner"): None}),
]


class Scene:
    """A result from an unrestricted run, then requests from each entry point under the rules."""

    def __init__(self, server: FakeDiscord) -> None:
        self.fake = server
        self.result: Json = {}
        self.job = ""

    async def prepare(self) -> None:
        inter = await self.fake.dispatch_slash_command("imagine", {"prompt": "a fox"}, roles=[ARTIST_ROLE_ID])
        sent = await result_of(self.fake, inter.id)
        self.result, self.job = sent.message, custom_ids(sent)[0].split(":")[2]

    def context(self, where: str, who: str) -> dict[str, Any]:
        user = self.fake.user if who == "owner" else OTHER
        context: dict[str, Any] = {"user": user}
        if where == "dm":
            context |= {"dm": True, "channel_id": user["id"]}
        elif who == "owner":
            context["roles"] = [ARTIST_ROLE_ID]
        return context

    async def attempt(self, entry: str, where: str, who: str) -> Seen:
        context = self.context(where, who)
        callback = await self.interaction(entry, where, context)
        assert callback.latency < 3.0
        if callback.type == 4:
            assert callback.data["flags"] == 64, "a refusal must be ephemeral"
            return Seen(callback.data["content"])
        assert callback.type == 5, callback
        return Seen(None)

    async def interaction(self, entry: str, where: str, context: dict[str, Any]) -> Callback:
        """The first response to one request from ``entry``."""
        if entry == "modal":  # ✏️ opens the remix modal (modals live in the running client); its submit runs
            press = await self.fake.dispatch_component(f"img:x:{self.job}:0", message=self.result, **context)
            opened = await self.fake.next_callback(press.id)
            if opened.type != 9:
                return opened
            submit = await self.fake.dispatch_modal_submit(opened.data["custom_id"], {"prompt": "at night"}, **context)
            return await self.fake.next_callback(submit.id)
        inter = await self._dispatch(entry, where, context)
        return await self.fake.next_callback(inter.id)

    async def _dispatch(self, entry: str, where: str, context: dict[str, Any]) -> FakeInteraction:
        server = self.fake
        if entry == "slash":
            return await server.dispatch_slash_command("imagine", {"prompt": "a cat"}, **context)
        if entry == "menu":
            guild = None if where == "dm" else GUILD_ID
            channel = context.get("channel_id") or str(self.result["channel_id"])
            image = server.add_attachment(png(32, 32), "cat.png", channel_id=channel)
            target = server.user_message("look", attachments=[image], channel_id=channel, guild_id=guild)
            return await server.dispatch_message_command("Vary image", target, **context)
        return await server.dispatch_component(f"img:v:{self.job}:1", message=self.result, **context)

    async def reply(self, context: dict[str, Any], accepted: bool, prompt: str) -> None:
        """A reply to the result: varied as a reply, or ignored silently (a message can't get an ephemeral answer)."""
        server = self.fake
        author, roles = context["user"], context.get("roles", ())
        message = await server.dispatch_message_create(prompt, author=author, reply_to=self.result, roles=roles)

        def answered() -> bool | None:
            return (
                any(
                    str(s.payload.get("message_reference", {}).get("message_id")) == message["id"]
                    for s in server.sent
                    if s.kind == "channel"
                )
                or None
            )

        if accepted:
            await server.wait_for(answered, timeout=10, what="the reply's variations")
            return
        # the access decision is made before the handler's first await: once a later interaction has been
        # acknowledged, the reply has been decided
        barrier = await server.dispatch_slash_command("imagine", {"prompt": "barrier"}, roles=[ARTIST_ROLE_ID])
        await server.next_callback(barrier.id)
        assert not answered()


@pytest.mark.parametrize(("rules", "expected"), TABLE, ids=[str(r) or "none" for r, _ in TABLE])
async def test_access_table(fake: FakeDiscord, tmp_path: Path, rules: dict[str, Any], expected: Any) -> None:  # noqa: F811
    scene = Scene(fake)
    limits = {"limits": {"per_user_jobs": 100}}
    async with running(settings_for(fake, tmp_path, **limits)):
        await scene.prepare()
    async with running(settings_for(fake, tmp_path, discord=rules, **limits)) as adapter:
        for (where, who), refusal in expected.items():
            for entry in ENTRY_POINTS:
                if entry == "reply":
                    if where == "guild":  # a reply in a DM can't refer to a server's result
                        prompt = f"more {where} {who}"
                        await scene.reply(scene.context(where, who), refusal is None, prompt)
                        if refusal is not None:
                            assert not [j for j in await adapter.core.jobs.history(limit=50) if j.prompt == prompt]
                    continue
                seen = await scene.attempt(entry, where, who)
                want = refusal
                if want is None and entry in ("button", "modal") and who == "other":
                    want = "Only <@"  # others may not press the owner's buttons
                if want is None:
                    assert seen.refusal is None, (entry, where, who, seen.refusal)
                else:
                    assert seen.refusal is not None and want in seen.refusal, (entry, where, who, seen.refusal)
    fake.assert_no_errors()
