"""`imagebot discord invite` / `imagebot discord sync` and the command-set comparison behind start-up syncs."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from adapters.discord.cli import sync
from adapters.discord.registration import application_id_from_token, commands_differ, invite_url
from bot.__main__ import main
from bot.settings import load_settings
from tests.fakes.discord_server import APP_ID, TOKEN, FakeDiscord


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    rest, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord() as server:
        yield server
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = rest, gateway


def test_application_id_comes_from_the_token() -> None:
    assert application_id_from_token(TOKEN) == int(APP_ID)
    assert application_id_from_token("not base64!.x.y") is None


def test_invite_prints_the_oauth_url_with_minimal_permissions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)

    assert main(["discord", "invite"]) == 0

    url = capsys.readouterr().out.strip()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["client_id"] == [APP_ID]
    assert query["scope"] == ["bot applications.commands"]
    expected = discord.Permissions(
        view_channel=True, send_messages=True, attach_files=True, read_message_history=True, embed_links=True
    )
    assert query["permissions"] == [str(expected.value)]
    assert url == invite_url(int(APP_ID))
    assert TOKEN not in url


def test_discord_commands_need_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discord", "sync"]) == 2
    assert "DISCORD_TOKEN" in capsys.readouterr().err


async def test_sync_always_puts_the_commands(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
    )
    assert await sync(settings) == 0
    assert await sync(settings) == 0
    assert len(fake.command_puts) == 2
    assert fake.identify is None  # no gateway connection needed
    fake.assert_no_errors()


def test_commands_differ_on_choices_and_options_but_not_on_order() -> None:
    base = {"name": "imagine", "type": 1, "description": "d", "options": [{"name": "p", "type": 3, "description": "x"}]}
    same = base | {
        "id": "1",
        "version": "2",
        "options": [{"name": "p", "type": 3, "description": "x", "required": False}],
    }
    other = base | {"options": [{"name": "p", "type": 3, "description": "x", "choices": [{"name": "a", "value": "a"}]}]}
    menu = {"name": "Vary image", "type": 3, "description": ""}
    assert not commands_differ([base, menu], [menu, same])
    assert commands_differ([base], [other])
    assert commands_differ([base, menu], [base])
