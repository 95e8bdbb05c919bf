"""Discord sharding in one process: the fake gateway routes like Discord, the adapter identifies its shards within
the session start limit (through Redis across processes) and only one process syncs the commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter
from bot.bootstrap import open_core
from bot.errors import ConfigurationError
from bot.settings import Settings, SettingsError, load_settings
from tests.fakes.discord_server import TOKEN, FakeDiscord, SentMessage, make_guild, make_text_channel
from tests.test_run import cli, own_logging  # noqa: F401 - a fixture

# two guilds whose events belong to shards 0 and 1 of 2: (guild_id >> 22) % 2
GUILD_ON_0, GUILD_ON_1 = str(1185000000000000100 + (1 << 22)), "1185000000000000100"
CHANNEL_ON_0, CHANNEL_ON_1 = "1185000000000000210", "1185000000000000211"


def two_guilds() -> list[dict[str, Any]]:
    return [
        make_guild(GUILD_ON_0, [make_text_channel(CHANNEL_ON_0, GUILD_ON_0)]),
        make_guild(GUILD_ON_1, [make_text_channel(CHANNEL_ON_1, GUILD_ON_1)]),
    ]


@pytest.fixture
async def endpoints() -> AsyncIterator[None]:
    """The adapter points discord.py's process-wide endpoints at the fake: put them back afterwards."""
    rest, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
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


async def result_of(fake: FakeDiscord, inter_id: str) -> SentMessage:
    """The edit of @original that carries files (progress edits before it carry none)."""
    while True:
        sent = await fake.next_webhook_message(inter_id, timeout=15)
        if sent.files or sent.components:
            return sent


def shard_settings(fake: FakeDiscord, tmp_path: Path, shard: int, count: int = 2, **overrides: Any) -> Settings:
    folder = tmp_path / f"shard-{shard}"
    return settings_for(fake, folder, discord_shard_count=count, discord_shard_ids=str(shard), **overrides)


async def test_each_shard_gets_only_its_guilds(tmp_path: Path, endpoints: None) -> None:
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=2) as fake:
        async with (
            running(shard_settings(fake, tmp_path, 0)) as first,
            running(shard_settings(fake, tmp_path, 1)) as second,
        ):
            assert sorted(fake.connected_shards()) == [(0, 2), (1, 2)]
            assert [g.id for g in first.client.guilds] == [int(GUILD_ON_0)]
            assert [g.id for g in second.client.guilds] == [int(GUILD_ON_1)]
            for guild, channel, shard in ((GUILD_ON_0, CHANNEL_ON_0, 0), (GUILD_ON_1, CHANNEL_ON_1, 1)):
                inter = await fake.dispatch_slash_command(
                    "imagine", {"prompt": "a fox"}, guild_id=guild, channel_id=channel
                )
                assert inter.shard == shard
                assert (await fake.next_callback(inter.id)).type == 5
                assert (await result_of(fake, inter.id)).files
            dm = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"}, dm=True)
            assert dm.shard == 0
            assert (await fake.next_callback(dm.id)).type == 5
            assert (await result_of(fake, dm.id)).files
        assert [d["shard"] for _, d in fake.identifies] in ([[0, 2], [1, 2]], [[1, 2], [0, 2]])
        fake.assert_no_errors()


async def test_one_process_with_several_shards(tmp_path: Path, endpoints: None) -> None:
    """Both shards in one process: discord.py paces its own identifies (here a 0.2 s window)."""
    async with FakeDiscord(guilds=two_guilds(), identify_window=0.2) as fake:
        settings = settings_for(fake, tmp_path, discord_shard_count=2)
        async with running(settings, identify_interval=0.2) as adapter:
            assert sorted(g.id for g in adapter.client.guilds) == sorted([int(GUILD_ON_0), int(GUILD_ON_1)])
            inter = await fake.dispatch_slash_command(
                "imagine", {"prompt": "a fox"}, guild_id=GUILD_ON_1, channel_id=CHANNEL_ON_1
            )
            assert inter.shard == 1
            assert (await result_of(fake, inter.id)).files
        (first, _), (second, _) = fake.identifies
        assert second - first >= 0.2
        fake.assert_no_errors()


async def test_a_shard_that_identifies_again_leaves_the_process_connected(tmp_path: Path, endpoints: None) -> None:
    """discord.py says ``ready`` once for all shards: a shard identifying again later must still count as back."""
    async with FakeDiscord(guilds=two_guilds(), identify_window=0.2) as fake:
        settings = settings_for(fake, tmp_path, discord_shard_count=2)
        async with running(settings, identify_interval=0.2) as adapter:
            assert adapter.connected
            await fake.invalidate_session(1)
            await fake.wait_for(lambda: len(fake.identifies) == 3, what="shard 1 identifying again")
            async with asyncio.timeout(5):  # the adapter's own flag: nothing the fake sees changes with it
                while not adapter.connected:
                    await asyncio.sleep(0.01)
            assert sorted(fake.connected_shards()) == [(0, 2), (1, 2)]
            inter = await fake.dispatch_slash_command(
                "imagine", {"prompt": "a fox"}, guild_id=GUILD_ON_1, channel_id=CHANNEL_ON_1
            )
            assert (await result_of(fake, inter.id)).files
        fake.assert_no_errors()


async def test_the_fake_refuses_identifies_faster_than_the_session_start_limit(tmp_path: Path, endpoints: None) -> None:
    """Two processes without Redis cannot know of each other: the fake gateway catches the second IDENTIFY."""
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=1, identify_window=30) as fake:
        async with running(shard_settings(fake, tmp_path, 0)):
            second = running(shard_settings(fake, tmp_path, 1), ready_timeout=1.0, identify_interval=0.1)
            with contextlib.suppress(Exception):
                async with second:
                    pass
        assert any("faster than max_concurrency" in error for error in fake.errors)


async def test_identifies_share_a_redis_lock_per_bucket(tmp_path: Path, endpoints: None, redis_url: str) -> None:
    """Two processes' shards in the same bucket (max_concurrency 1) start together: Redis spaces the IDENTIFYs."""
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=1, identify_window=0.5) as fake:
        first = running(shard_settings(fake, tmp_path, 0, redis_url=redis_url), identify_interval=0.5)
        second = running(shard_settings(fake, tmp_path, 1, redis_url=redis_url), identify_interval=0.5)
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(stack.enter_async_context(first), stack.enter_async_context(second))
            assert sorted(fake.connected_shards()) == [(0, 2), (1, 2)]
        (early, _), (late, _) = fake.identifies[:2]
        assert late - early >= 0.5
        fake.assert_no_errors()


async def test_buckets_identify_together(tmp_path: Path, endpoints: None, redis_url: str) -> None:
    """max_concurrency 2: shards 0 and 1 are in different buckets, so neither waits for the other."""
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=2, identify_window=30) as fake:
        first = running(shard_settings(fake, tmp_path, 0, redis_url=redis_url), identify_interval=30)
        second = running(shard_settings(fake, tmp_path, 1, redis_url=redis_url), identify_interval=30)
        async with contextlib.AsyncExitStack() as stack:
            started = asyncio.get_running_loop().time()
            await asyncio.gather(stack.enter_async_context(first), stack.enter_async_context(second))
            assert asyncio.get_running_loop().time() - started < 10
        fake.assert_no_errors()


async def test_only_the_process_with_shard_0_syncs_the_commands(tmp_path: Path, endpoints: None) -> None:
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=2) as fake:
        async with running(shard_settings(fake, tmp_path, 1)) as other:
            assert other.synced is False
            assert fake.command_puts == []
            assert not [r for r in fake.requests if r.path.endswith("/commands")]  # not even a comparison
            async with running(shard_settings(fake, tmp_path, 0)) as first:
                assert first.synced is True
        assert len(fake.command_puts) == 1
        fake.assert_no_errors()


async def test_with_redis_one_process_syncs_the_commands(tmp_path: Path, endpoints: None, redis_url: str) -> None:
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=2) as fake:
        adapters = [running(shard_settings(fake, tmp_path, shard, redis_url=redis_url)) for shard in (0, 1)]
        async with contextlib.AsyncExitStack() as stack:
            started = await asyncio.gather(*(stack.enter_async_context(a) for a in adapters))
            assert sorted(bool(adapter.synced) for adapter in started) == [False, True]
        assert len(fake.command_puts) == 1
        fake.assert_no_errors()


async def _identify_raw(fake: FakeDiscord, shard: list[int]) -> int | None:
    """IDENTIFY over a bare websocket; the close code the fake answers (None if it sent READY)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
        await ws.receive_json()  # HELLO
        identify = {"token": TOKEN, "intents": 0, "properties": {}, "shard": shard}
        await ws.send_str(json.dumps({"op": 2, "d": identify}))
        message = await ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            return None
        return ws.close_code


@pytest.mark.parametrize("shard", [[2, 2], [-1, 2], [0, 0]])
async def test_the_fake_closes_an_invalid_shard_with_4010(shard: list[int]) -> None:
    async with FakeDiscord() as fake:
        assert await _identify_raw(fake, shard) == 4010


async def test_the_fake_requires_sharding_past_its_guild_limit_with_4011() -> None:
    async with FakeDiscord(guilds=two_guilds(), max_guilds_per_session=1, max_concurrency=2) as fake:
        assert await _identify_raw(fake, [0, 1]) == 4011
        assert await _identify_raw(fake, [1, 2]) is None


async def test_a_bot_that_must_shard_says_how(tmp_path: Path, endpoints: None) -> None:
    async with FakeDiscord(guilds=two_guilds(), max_guilds_per_session=1) as fake:
        with pytest.raises(ConfigurationError) as refused:
            async with running(settings_for(fake, tmp_path)):
                pass
        assert "IMAGEBOT_DISCORD_SHARD_COUNT" in refused.value.user_message


@pytest.mark.parametrize(
    ("count", "ids", "shards"),
    [("4", "0,1", (0, 1)), ("4", " 3 , 2 ", (3, 2)), ("3", None, (0, 1, 2)), (None, None, None)],
)
def test_shard_settings(monkeypatch: pytest.MonkeyPatch, count: str | None, ids: str | None, shards: Any) -> None:
    for name, value in (("IMAGEBOT_DISCORD_SHARD_COUNT", count), ("IMAGEBOT_DISCORD_SHARD_IDS", ids)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert load_settings().discord_shards == shards


@pytest.mark.parametrize(
    ("count", "ids", "says"),
    [
        ("2", "0,2", "IMAGEBOT_DISCORD_SHARD_IDS: shard 2 is outside 0..1 (the shard count is 2)"),
        (None, "1", "IMAGEBOT_DISCORD_SHARD_IDS: set IMAGEBOT_DISCORD_SHARD_COUNT too"),
        ("2", "1,1", "IMAGEBOT_DISCORD_SHARD_IDS: each shard may appear only once"),
        ("2", "one", "IMAGEBOT_DISCORD_SHARD_IDS: must be shard numbers separated by commas, e.g. 0,1"),
        ("2", "0,,1", "IMAGEBOT_DISCORD_SHARD_IDS: must be shard numbers separated by commas"),
        ("0", "0", "IMAGEBOT_DISCORD_SHARD_COUNT"),
    ],
)
def test_bad_shard_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, count: str | None, ids: str, says: str
) -> None:
    if count is None:
        monkeypatch.delenv("IMAGEBOT_DISCORD_SHARD_COUNT", raising=False)
    else:
        monkeypatch.setenv("IMAGEBOT_DISCORD_SHARD_COUNT", count)
    monkeypatch.setenv("IMAGEBOT_DISCORD_SHARD_IDS", ids)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value.user_message)
    assert says in message and "\n" not in message


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="0123456789, -x", max_size=12), count=st.integers(1, 8))
def test_any_shard_ids_text_loads_or_is_refused_in_one_line(text: str, count: int) -> None:
    try:
        loaded = load_settings(discord_shard_count=count, discord_shard_ids=text)
    except SettingsError as refused:
        assert refused.user_message.startswith("setting IMAGEBOT_DISCORD_SHARD_") and "\n" not in refused.user_message
    else:
        shards = loaded.discord_shards or ()
        assert shards and len(set(shards)) == len(shards) and all(0 <= shard < count for shard in shards)


async def test_without_redis_reachable_the_shards_still_connect(tmp_path: Path, endpoints: None) -> None:
    """Redis down at start: identify pacing falls back to a full window per shard instead of never connecting."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    async with FakeDiscord(guilds=two_guilds(), identify_window=0.3) as fake:
        settings = shard_settings(fake, tmp_path, 0, redis_url=nowhere)
        async with running(settings, identify_interval=0.3) as adapter:
            assert adapter.connected and adapter.synced is False  # nobody syncs without the lock
        fake.assert_no_errors()


@pytest.mark.usefixtures("own_logging")
def test_run_with_a_shard_outside_the_count_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(monkeypatch, "run", IMAGEBOT_DISCORD_SHARD_COUNT="2", IMAGEBOT_DISCORD_SHARD_IDS="1,2")
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "imagebot: setting IMAGEBOT_DISCORD_SHARD_IDS: shard 2 is outside 0..1 (the shard count is 2)"
    ]
