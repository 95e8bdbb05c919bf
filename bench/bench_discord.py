"""A burst of /imagine interactions through the fake Discord gateway into the real Discord adapter and core.

The fake Discord and FakeOpenAI each run in their own process, so their work does not count against the bot.
FakeOpenAI answers 1024x1024 PNGs after ``--latency`` seconds. Prints the time from sending INTERACTION_CREATE
to receiving the defer callback, as the fake Discord measured it (p50/p99/max; target p99 < 100 ms), and the
time until every result was posted. ``--bare``: the same burst against a bare discord.py client that only defers
(the baseline of the ratio that bench/run_all.py prints).

    python bench/bench_discord.py [--interactions 200] [--latency 2.0] [--concurrent 16] [--spread 0] [--bare]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.discord import DiscordAdapter  # noqa: E402
from bench.common import fake_openai_code  # noqa: E402
from bot.bootstrap import new_http_session, open_core, settle_after_start  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.fakes.openai_server import DEFAULT_KEY  # noqa: E402

DISCORD = """
import asyncio, json, sys, time
sys.path.insert(0, {root!r})
from tests.fakes.discord_server import FakeDiscord, make_user

def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

async def main(count, timeout, spread, results):
    loop = asyncio.get_running_loop()
    async with FakeDiscord() as fake:
        print(json.dumps({{"api": fake.api_base, "gateway": fake.gateway_url, "token": fake.token}}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # the bot is connected and ready
        started = time.monotonic()
        sent = []
        for i in range(count):  # one user each: the per-user cap is not what this measures
            user = make_user(str(1185000000000100000 + i), f"user{{i}}")
            sent.append(await fake.dispatch_slash_command("imagine", {{"prompt": "a fox"}}, user=user))
            if spread:
                await asyncio.sleep(spread / count)
        dispatched = time.monotonic() - started
        ids = {{inter.id for inter in sent}}

        def finished():
            if not results:  # a bare bot: every interaction deferred is all there is
                return all(fake.ack_latency(i) is not None for i in ids)
            done = {{s.interaction_id for s in fake.sent if s.files and s.interaction_id in ids}}
            return len(done) == len(ids)

        await fake.wait_for(finished, timeout=timeout, what="every result")
        total = time.monotonic() - started
        fake.assert_no_errors()
        acks = [1000 * (fake.ack_latency(inter.id) or float("inf")) for inter in sent]
        stats = {{"p50": percentile(acks, 0.5), "p99": percentile(acks, 0.99), "max": max(acks), "min": min(acks)}}
        stats |= {{"dispatched": dispatched, "total": total}}
        print(json.dumps(stats), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

asyncio.run(main({count}, {timeout}, {spread}, {results}))
"""


async def spawn(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    text = (await process.stdout.readline()).decode().strip()
    if not text:
        raise RuntimeError(f"the fake server exited ({await process.wait()})")
    return text


def say(process: asyncio.subprocess.Process, text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text.encode() + b"\n")


async def defer_latencies(
    interactions: int, latency: float, concurrent: int, spread: float = 0.0, *, bare: bool = False
) -> dict[str, float]:
    """Defer latencies (ms: p50, p99, max, min) of a burst, and the seconds until every result was posted.

    ``bare``: a discord.py client whose only listener defers every interaction (no core, no Images API).
    """
    openai = None if bare else await spawn(fake_openai_code(latency))
    timeout = interactions * latency + 120
    code = DISCORD.format(root=str(ROOT), count=interactions, timeout=timeout, spread=spread, results=not bare)
    fake = await spawn(code)
    try:
        discord_urls = json.loads(await line(fake))
        if bare:
            return await _bare_bot(fake, discord_urls)
        assert openai is not None
        base_url = await line(openai)
        with tempfile.TemporaryDirectory() as data_dir:
            settings = load_settings(
                data_dir=Path(data_dir),
                DISCORD_TOKEN=discord_urls["token"],
                DISCORD_API_BASE_URL=discord_urls["api"],
                DISCORD_GATEWAY_URL=discord_urls["gateway"],
                OPENAI_API_KEY=DEFAULT_KEY,
                OPENAI_BASE_URL=base_url,
                limits={"max_concurrent": concurrent, "images_per_minute": 0, "max_queue": 1000},
                jobs={"dedupe_window": 0},  # one prompt (the fake renders it once), a job per interaction
            )
            async with new_http_session() as session, open_core(settings, session) as core:
                adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
                await adapter.start()
                settle_after_start()  # as `imagebot run` does once its adapters are up
                try:
                    say(fake, "go")
                    stats: dict[str, float] = json.loads(await line(fake))
                finally:
                    await adapter.stop()
        return stats
    finally:
        for process in (fake, openai):
            if process is not None:
                if process.stdin is not None:
                    process.stdin.close()
                await process.wait()


async def _bare_bot(fake: asyncio.subprocess.Process, urls: dict[str, str]) -> dict[str, float]:
    """A bare discord.py client, pointed at the fake as the adapter points it, that only defers."""
    import discord
    import yarl

    discord.http.Route.BASE = urls["api"].rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(urls["gateway"])
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)

    @client.event
    async def on_interaction(interaction: discord.Interaction) -> None:
        await interaction.response.defer()

    await client.login(urls["token"])
    connection = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 30)
        say(fake, "go")
        stats: dict[str, float] = json.loads(await line(fake))
    finally:
        await client.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await connection
    return stats


async def main(interactions: int, latency: float, concurrent: int, spread: float, bare: bool) -> None:
    stats = await defer_latencies(interactions, latency, concurrent, spread, bare=bare)
    floor = latency * -(-interactions // concurrent)
    who = "a bare discord.py client that only defers" if bare else f"provider latency {latency:.1f} s"
    print(f"interactions: {interactions}, {who}, {concurrent} provider calls at once")
    print(
        f"defer latency: p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms, max {stats['max']:.1f} ms "
        f"(min {stats['min']:.1f} ms)"
    )
    print(f"the fake sent the burst in {stats['dispatched']:.2f} s")
    if not bare:
        print(f"all results delivered after {stats['total']:.1f} s (floor with this concurrency: {floor:.1f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--interactions", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--spread", type=float, default=0.0, help="seconds over which to send the burst (0: at once)")
    parser.add_argument("--bare", action="store_true", help="a bare discord.py client that only defers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(args.interactions, args.latency, args.concurrent, args.spread, args.bare))
