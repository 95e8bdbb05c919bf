"""A burst of 200 /imagine commands over Socket Mode: ack latency and time until every result is in Slack.

The real Slack adapter and core run against the fake Slack (same process: it measures each envelope's ack on
its side of the websocket, so its own work counts against the bot, a pessimistic figure) and the fake Images
API (a separate process, 2 s per request). Distinct users and prompts, so no per-user cap or dedupe applies.
``--bare``: the same burst against a bare slack-bolt AsyncApp that only acks (the baseline of the ratio that
bench/run_all.py prints).

    python bench/bench_slack.py [--commands 200] [--latency 2.0] [--concurrency 50] [--bare]
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench.common import fake_openai_process, percentile  # noqa: E402
from bot.bootstrap import new_http_session, open_core  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.fakes.openai_server import DEFAULT_KEY  # noqa: E402
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, Envelope, FakeSlack  # noqa: E402

PROMPT = "a lighthouse at dusk"


async def main(commands: int, latency: float, concurrency: int, bare: bool) -> None:
    if bare:
        latencies = await bare_ack_latencies(commands)
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(f"bare slack-bolt app, {commands} commands: ack p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        return
    async with fake_openai_process(latency) as base_url:
        await measure(commands, latency, concurrency, base_url)


def _users(fake: FakeSlack, commands: int) -> list[str]:
    users = [f"U0BENCH{i:04d}" for i in range(commands)]
    for user in users:
        fake.add_user(user, user.lower())
    return users


async def _burst(fake: FakeSlack, users: list[str]) -> list[Envelope]:
    """One /imagine per user, sent as fast as the fake can, after one warm-up command (bolt's first request
    checks the token); returns once every one is acknowledged. One prompt: the fake Images API renders it once."""
    warmup = await fake.send_slash_command("/imagine", PROMPT, user_id=users[0])
    await fake.wait_for_ack(warmup.envelope_id, timeout=30)
    envelopes = [await fake.send_slash_command("/imagine", PROMPT, user_id=user) for user in users]
    await fake.wait_for(lambda: all(e.ack for e in envelopes), timeout=60, what="every ack")
    return envelopes


async def bare_ack_latencies(commands: int) -> list[float]:
    """Ack latencies (s) of a bare slack-bolt AsyncApp over Socket Mode whose /imagine listener only acks."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    async with FakeSlack() as fake:
        users = _users(fake, commands)
        app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))

        @app.command("/imagine")
        async def imagine(ack: AsyncAck) -> None:
            await ack()

        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:
            envelopes = await _burst(fake, users)
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]
        fake.assert_no_errors()
    return [e.latency or 0.0 for e in envelopes]


async def ack_latencies(commands: int, concurrency: int, base_url: str) -> list[float]:
    """Ack latencies (s) of the whole bot (Slack adapter, core, store) for a burst; every result is delivered."""
    with tempfile.TemporaryDirectory() as data_dir:
        async with FakeSlack() as fake, new_http_session() as session:
            users = _users(fake, commands)
            settings = load_settings(
                data_dir=Path(data_dir),
                openai_api_key=DEFAULT_KEY,
                openai_base_url=base_url,
                slack_bot_token=BOT_TOKEN,
                slack_app_token=APP_TOKEN,
                slack_api_url=fake.api_url,
                limits={"max_concurrent": concurrency, "images_per_minute": 0, "max_queue": commands * 2},
                jobs={"dedupe_window": 0},
            )
            async with open_core(settings, session) as core:
                adapter = SlackAdapter(core, settings, session)
                await adapter.start()
                try:
                    envelopes = await _burst(fake, users)
                    await fake.wait_for_call("files.completeUploadExternal", commands + 1, timeout=600)
                    await adapter.idle()
                finally:
                    await adapter.stop()
            fake.assert_no_errors()
    return [e.latency or 0.0 for e in envelopes]


async def measure(commands: int, latency: float, concurrency: int, base_url: str) -> None:
    started = time.perf_counter()
    latencies = await ack_latencies(commands, concurrency, base_url)
    delivered = time.perf_counter() - started
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"commands: {commands} over Socket Mode; fake Images API latency {latency:.1f}s, ", end="")
    print(f"max_concurrent {concurrency}")
    p50, p99, worst = statistics.median(latencies), percentile(latencies, 0.99), max(latencies)
    print(f"ack latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    ideal = latency * -(-commands // concurrency)
    print(f"all results delivered after {delivered:.2f}s (ideal {ideal:.1f}s at this concurrency)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--bare", action="store_true", help="a bare slack-bolt app that only acks")
    options = parser.parse_args()
    asyncio.run(main(options.commands, options.latency, options.concurrency, options.bare))
