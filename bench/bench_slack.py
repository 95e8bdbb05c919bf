"""A burst of 200 /imagine commands over Socket Mode: ack latency and time until every result is in Slack.

The real Slack adapter and core run against the fake Slack (same process: it measures each envelope's ack on
its side of the websocket, so its own work counts against the bot, a pessimistic figure) and the fake Images
API (a separate process, 2 s per request). Distinct users and prompts, so no per-user cap or dedupe applies.

    python bench/bench_slack.py [--commands 200] [--latency 2.0] [--concurrency 50]
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
from tests.fakes.slack_server import APP_TOKEN, BOT_TOKEN, FakeSlack  # noqa: E402


async def main(commands: int, latency: float, concurrency: int) -> None:
    async with fake_openai_process(latency) as base_url:
        await measure(commands, latency, concurrency, base_url)


async def measure(commands: int, latency: float, concurrency: int, base_url: str) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with FakeSlack() as fake, new_http_session() as session:
            users = [f"U0BENCH{i:04d}" for i in range(commands)]
            for user in users:
                fake.add_user(user, user.lower())
            settings = load_settings(
                data_dir=Path(data_dir),
                openai_api_key=DEFAULT_KEY,
                openai_base_url=base_url,
                slack_bot_token=BOT_TOKEN,
                slack_app_token=APP_TOKEN,
                slack_api_url=fake.api_url,
                limits={"max_concurrent": concurrency, "images_per_minute": 0, "max_queue": commands * 2},
            )
            async with open_core(settings, session) as core:
                adapter = SlackAdapter(core, settings, session)
                await adapter.start()
                started = time.perf_counter()
                envelopes = [
                    await fake.send_slash_command("/imagine", f"a lighthouse at dusk, take {i}", user_id=user)
                    for i, user in enumerate(users)
                ]
                sent = time.perf_counter() - started
                await fake.wait_for(lambda: all(e.ack for e in envelopes), timeout=60, what="every ack")
                await fake.wait_for_call("files.completeUploadExternal", commands, timeout=600)
                await adapter.idle()
                delivered = time.perf_counter() - started
                await adapter.stop()
            latencies = [e.latency or 0.0 for e in envelopes]
            errors = list(fake.errors)
    uploads = len(fake.calls_to("files.completeUploadExternal"))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"commands: {commands} over Socket Mode in {sent:.2f}s; fake Images API latency {latency:.1f}s, ", end="")
    print(f"max_concurrent {concurrency}")
    p50, p99, worst = statistics.median(latencies), percentile(latencies, 0.99), max(latencies)
    print(f"ack latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    ideal = latency * -(-commands // concurrency)
    print(f"all {uploads} results delivered after {delivered:.2f}s (ideal {ideal:.1f}s at this concurrency)")
    print(f"fake Slack complaints: {len(errors)}" + (f", first: {errors[0]}" if errors else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    options = parser.parse_args()
    asyncio.run(main(options.commands, options.latency, options.concurrency))
