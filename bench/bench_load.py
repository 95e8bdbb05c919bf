"""200 concurrent /imagine-style jobs through the real core against the fake Images API (2 s latency).

Prints event-loop lag (p50/p99/max), total wall time and peak memory of the bot process. The fake server
runs in a separate process so its work does not count against the bot.

    python bench/bench_load.py [--jobs 200] [--latency 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fake_openai_process, percentile  # noqa: E402
from bot.bootstrap import build_images, new_http_session  # noqa: E402
from bot.models import GenerateRequest  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.fakes.openai_server import DEFAULT_KEY  # noqa: E402


async def lag_probe(samples: list[float], stop: asyncio.Event, interval: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - started - interval)


async def main(jobs: int, latency: float) -> None:
    async with fake_openai_process(latency) as base_url:
        await measure(jobs, latency, base_url)


async def measure(jobs: int, latency: float, base_url: str) -> None:
    os.environ.update(
        {
            "OPENAI_API_KEY": DEFAULT_KEY,
            "OPENAI_BASE_URL": base_url,
            "IMAGEBOT_LIMITS__MAX_CONCURRENT": str(jobs),
            "IMAGEBOT_LIMITS__IMAGES_PER_MINUTE": "0",
            "IMAGEBOT_LIMITS__PER_USER_JOBS": str(jobs),
        }
    )
    settings = load_settings()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    samples: list[float] = []
    stop = asyncio.Event()
    async with new_http_session() as session:
        core = build_images(settings, session)
        probe = asyncio.create_task(lag_probe(samples, stop))
        started = time.perf_counter()
        cpu_started = time.process_time()
        results = await asyncio.gather(
            *(
                core.service.generate(GenerateRequest(prompt="a lighthouse at dusk", requester=f"user{i % 50}"))
                for i in range(jobs)
            ),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stop.set()
        await probe
    failures = [r for r in results if isinstance(r, BaseException)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"jobs: {jobs} x 1 image 1024x1024, fake latency {latency:.1f}s, failures: {len(failures)}")
    print(f"wall time: {wall:.2f}s (ideal {latency:.1f}s); bot CPU: {cpu:.2f}s ({cpu / jobs * 1000:.1f} ms/job)")
    p50, p99, worst = statistics.median(samples), percentile(samples, 0.99), max(samples)
    print(f"event-loop lag: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms", end="")
    print(f" over {len(samples)} samples")
    print(f"peak RSS: {peak / 1024:.0f} MiB (before the jobs: {rss_before / 1024:.0f} MiB)")
    if failures:
        print(f"first failure: {failures[0]!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    options = parser.parse_args()
    asyncio.run(main(options.jobs, options.latency))
