"""A burst of 200 /imagine commands over Socket Mode: ack latency and time until every result is in Slack.

The fake Slack and the fake Images API (2 s per request, photo-like 1024² PNGs) each run in a process of their
own, as the real services do: neither's work counts against the bot being measured. The fake Slack measures
each envelope's ack on its side of the websocket. Distinct users and prompts, so no per-user cap or dedupe
applies. ``--bare``: the same burst against a bare slack-bolt AsyncApp that only acks (the baseline of the ratio
that bench/run_all.py prints).

    python bench/bench_slack.py [--commands 200] [--latency 2.0] [--concurrency 50] [--bursts 1] [--bare]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.slack import SlackAdapter  # noqa: E402
from bench.bench_discord import line, say, spawn  # noqa: E402
from bench.common import fake_openai_process, percentile  # noqa: E402
from bot.bootstrap import new_http_session, open_core, settle_after_start  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.fakes.openai_server import DEFAULT_KEY  # noqa: E402
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN  # noqa: E402

PROMPT = "a lighthouse at dusk"

# The fake Slack in a process of its own: prints its API URL, waits for "go" (the app is connected), sends one
# warm-up command (bolt's first request checks the token; the bot's first job loads what it loads once) and
# waits for its answer, then ``bursts`` bursts, each once the last is acknowledged and, for the whole bot,
# every result of it uploaded; prints the ack latencies of each burst.
SLACK = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from tests.fakes.slack_server import FakeSlack

async def main(count, bursts, uploads, prompt):
    loop = asyncio.get_running_loop()
    async with FakeSlack() as fake:
        users = [f"U0BENCH{{i:04d}}" for i in range(count)]
        for user in users:
            fake.add_user(user, user.lower())
        print(json.dumps({{"api": fake.api_url}}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        warmup = await fake.send_slash_command("/imagine", prompt, user_id=users[0])
        await fake.wait_for_ack(warmup.envelope_id, timeout=30)
        if uploads:  # the warm-up's whole job: what a process does once (imports, connections) is not measured
            await fake.wait_for_call("files.completeUploadExternal", 1, timeout=60)
        latencies = []
        for burst in range(bursts):
            envelopes = [await fake.send_slash_command("/imagine", prompt, user_id=user) for user in users]
            await fake.wait_for(lambda: all(e.ack for e in envelopes), timeout=60, what="every ack")
            if uploads:  # every result of the burst is in Slack before the next burst
                await fake.wait_for_call("files.completeUploadExternal", 1 + count * (burst + 1), timeout=600)
            latencies.append([e.latency or 0.0 for e in envelopes])
        fake.assert_no_errors()
        print(json.dumps(latencies), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

asyncio.run(main({count}, {bursts}, {uploads}, {prompt!r}))
"""


async def main(commands: int, latency: float, concurrency: int, bursts: int, bare: bool) -> None:
    if bare:
        for latencies in await bare_ack_latencies(commands, bursts):
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            print(f"bare slack-bolt app, {commands} commands: ack p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        return
    async with fake_openai_process(latency) as base_url:
        await measure(commands, latency, concurrency, bursts, base_url)


async def _fake_slack(commands: int, bursts: int, *, uploads: bool) -> asyncio.subprocess.Process:
    return await spawn(SLACK.format(root=str(ROOT), count=commands, bursts=bursts, uploads=uploads, prompt=PROMPT))


async def _finish(fake: asyncio.subprocess.Process) -> None:
    if fake.stdin is not None:
        fake.stdin.close()
    await fake.wait()


async def bare_ack_latencies(commands: int, bursts: int = 1) -> list[list[float]]:
    """Ack latencies (s) of each burst to a bare slack-bolt AsyncApp over Socket Mode whose /imagine listener
    only acks."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    fake = await _fake_slack(commands, bursts, uploads=False)
    try:
        api_url = json.loads(await line(fake))["api"]
        app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=api_url))

        @app.command("/imagine")
        async def imagine(ack: AsyncAck) -> None:
            await ack()

        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:
            say(fake, "go")
            latencies: list[list[float]] = json.loads(await line(fake))
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]
    finally:
        await _finish(fake)
    return latencies


async def ack_latencies(commands: int, concurrency: int, base_url: str, bursts: int = 1) -> list[list[float]]:
    """Ack latencies (s) of each burst to the whole bot (Slack adapter, core, store) as ``imagebot run`` sets it
    up; every result is delivered before the next burst."""
    fake = await _fake_slack(commands, bursts, uploads=True)
    try:
        api_url = json.loads(await line(fake))["api"]
        with tempfile.TemporaryDirectory() as data_dir:
            settings = load_settings(
                data_dir=Path(data_dir),
                openai_api_key=DEFAULT_KEY,
                openai_base_url=base_url,
                slack_bot_token=BOT_TOKEN,
                slack_app_token=APP_TOKEN,
                slack_api_url=api_url,
                limits={"max_concurrent": concurrency, "images_per_minute": 0, "max_queue": commands * 2},
                jobs={"dedupe_window": 0},
            )
            async with new_http_session() as session, open_core(settings, session) as core:
                adapter = SlackAdapter(core, settings, session)
                await adapter.start()
                settle_after_start()
                try:
                    say(fake, "go")
                    latencies: list[list[float]] = json.loads(await line(fake))
                    await adapter.idle()
                finally:
                    await adapter.stop()
    finally:
        await _finish(fake)
    return latencies


async def measure(commands: int, latency: float, concurrency: int, bursts: int, base_url: str) -> None:
    started = time.perf_counter()
    bursts_latencies = await ack_latencies(commands, concurrency, base_url, bursts)
    delivered = time.perf_counter() - started
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"commands: {commands} over Socket Mode; fake Images API latency {latency:.1f}s, ", end="")
    print(f"max_concurrent {concurrency}")
    for latencies in bursts_latencies:
        p50, p99, worst = statistics.median(latencies), percentile(latencies, 0.99), max(latencies)
        print(f"ack latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    ideal = bursts * latency * -(-commands // concurrency)
    print(f"all results delivered after {delivered:.2f}s (ideal {ideal:.1f}s at this concurrency)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=1, help="bursts, one after the other's results are in")
    parser.add_argument("--bare", action="store_true", help="a bare slack-bolt app that only acks")
    options = parser.parse_args()
    asyncio.run(main(options.commands, options.latency, options.concurrency, options.bursts, options.bare))
