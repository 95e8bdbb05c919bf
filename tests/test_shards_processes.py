"""Two `imagebot run` processes, shards 0 and 1 of 2, sharing PostgreSQL, Redis and the data folder, against the
fake Discord: each process is sent only its guilds' interactions, and a result one process made answers its
buttons from the other (the job is in the shared database, the files in the shared folder)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.fakes.discord_server import FakeDiscord, FakeInteraction, SentMessage
from tests.test_discord_shards import CHANNEL_ON_0, CHANNEL_ON_1, GUILD_ON_0, GUILD_ON_1, result_of, two_guilds
from tests.test_run import run_env, running_bot


def shard_env(tmp_path: Path, fake: FakeDiscord, shard: int, postgres_url: str, redis_url: str) -> dict[str, str]:
    """One process's environment: its own web port and shard, everything else shared."""
    return run_env(
        tmp_path,
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE_URL=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        IMAGEBOT_DATABASE_URL=postgres_url,
        IMAGEBOT_REDIS_URL=redis_url,
        IMAGEBOT_DISCORD_SHARD_COUNT="2",
        IMAGEBOT_DISCORD_SHARD_IDS=str(shard),
    )


def buttons(sent: SentMessage) -> list[str]:
    return [c["custom_id"] for row in sent.components for c in row.get("components", []) if "custom_id" in c]


async def imagine(fake: FakeDiscord, guild: str, channel: str) -> tuple[FakeInteraction, SentMessage]:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse"}, guild_id=guild, channel_id=channel)
    return inter, await result_of(fake, inter.id)


async def press_vary(fake: FakeDiscord, result: SentMessage, guild: str) -> tuple[FakeInteraction, SentMessage]:
    vary = next(custom_id for custom_id in buttons(result) if custom_id.startswith("img:v:"))
    press = await fake.dispatch_component(vary, message=result.message, guild_id=guild)
    assert (await fake.next_callback(press.id)).type == 5
    return press, await result_of(fake, press.id)


async def test_two_processes_split_the_guilds_and_serve_each_others_results(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    async with FakeDiscord(guilds=two_guilds(), max_concurrency=2) as fake:
        envs = [shard_env(tmp_path, fake, shard, postgres_url, redis_url) for shard in (0, 1)]
        assert envs[0]["IMAGEBOT_DATA_DIR"] == envs[1]["IMAGEBOT_DATA_DIR"]
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(running_bot(env, tmp_path)) for env in envs))
            assert sorted(fake.connected_shards()) == [(0, 2), (1, 2)]
            assert sorted(d["shard"] for _, d in fake.identifies) == [[0, 2], [1, 2]]  # one shard per process
            first, made_on_0 = await imagine(fake, GUILD_ON_0, CHANNEL_ON_0)
            second, made_on_1 = await imagine(fake, GUILD_ON_1, CHANNEL_ON_1)
            assert (first.shard, second.shard) == (0, 1)
            assert made_on_0.files and made_on_1.files
            assert len(fake.command_puts) == 1, "the commands were synced by more than one process"

        # the same two processes, their shards swapped: each now gets the guild (and results) of the other
        swapped = [shard_env(tmp_path, fake, shard, postgres_url, redis_url) for shard in (1, 0)]
        for env, old in zip(swapped, envs, strict=True):
            env["IMAGEBOT_WEB_PORT"] = old["IMAGEBOT_WEB_PORT"]
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(running_bot(env, tmp_path)) for env in swapped))
            press_0, varied_0 = await press_vary(fake, made_on_0, GUILD_ON_0)
            press_1, varied_1 = await press_vary(fake, made_on_1, GUILD_ON_1)
            assert (press_0.shard, press_1.shard) == (0, 1)
            assert varied_0.files and varied_1.files
        assert len(fake.command_puts) == 1
        fake.assert_no_errors()
