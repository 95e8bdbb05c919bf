"""Admission through Redis: the round trip of one turn, and turns per second, against the in-process admission.

    python bench/bench_admission_redis.py [--turns 3000] [--full]

Starts Debian's ``redis-server`` on a free loopback port (tests/redis_server.py), then measures:

- script round trip: one ``enqueue`` script (take a turn) as the caller sees it, p50/p99 (target: p99 < 2 ms);
- turn: a whole ``async with admission.slot(...)`` with nothing in the body (enqueue, mark sent, release);
- turns/s: 3 admissions (as 3 processes would hold them) in one loop, 48 jobs at a time, cap 16, no pacing;
  and the in-process ``Admission`` doing the same, as the baseline.

``--full`` then runs the issue's done-when at its own scale (about 11 minutes): 3 ``imagebot run`` processes,
300 jobs from 20 users at 30 images per 60 s (tests/test_multiprocess_pacing.py with IMAGEBOT_FULL_PACING=1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import percentile  # noqa: E402
from bot.admission_redis import AdmissionRules, AdmissionScripts, RedisAdmission, connect  # noqa: E402
from bot.limits import Admission, AdmissionControl  # noqa: E402
from tests.redis_server import running_server  # noqa: E402


async def script_round_trips(url: str, turns: int) -> list[float]:
    """Seconds per enqueue+release pair of scripts, timed on the enqueue (the call a waiting job makes)."""
    client = connect(url)
    scripts = AdmissionScripts(client, AdmissionRules(1000, 0, 1000, 100_000, prefix="bench:rt:"), "p1")
    times: list[float] = []
    try:
        for index in range(turns):
            started = time.perf_counter()
            await scripts("enqueue", f"t{index}", f"user{index % 20}", 1)
            times.append(time.perf_counter() - started)
            await scripts("release", f"t{index}")
    finally:
        await client.aclose()
    return times


async def ping_round_trips(url: str, turns: int) -> list[float]:
    """The bare-library baseline: redis-py's PING on the same server."""
    client = connect(url)
    times: list[float] = []
    try:
        for _ in range(turns):
            started = time.perf_counter()
            await client.ping()
            times.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return times


def _ms(times: list[float]) -> str:
    return f"p50 {percentile(times, 0.5) * 1e3:.3f} ms, p99 {percentile(times, 0.99) * 1e3:.3f} ms"


def _shared(url: str, prefix: str) -> RedisAdmission:
    return RedisAdmission(
        connect(url), max_concurrent=16, images_per_minute=0, per_user_jobs=100, max_queue=100_000, prefix=prefix
    )


async def slot_round_trips(url: str, turns: int) -> list[float]:
    admission = _shared(url, "bench:s:")
    times: list[float] = []
    try:
        for index in range(turns):
            started = time.perf_counter()
            async with admission.slot(f"user{index % 20}", 1):
                pass
            times.append(time.perf_counter() - started)
    finally:
        await admission.aclose()
    return times


async def throughput(admissions: list[AdmissionControl], jobs: int, parallel: int = 48) -> float:
    """Jobs per second through ``admissions`` (round robin), ``parallel`` at a time."""
    queue = iter(range(jobs))

    async def worker(number: int) -> None:
        for index in queue:
            async with admissions[index % len(admissions)].slot(f"user{(index + number) % 20}", 1):
                await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(parallel)))
    return jobs / (time.perf_counter() - started)


async def measure(url: str, turns: int) -> None:
    await script_round_trips(url, 200)  # warm up: scripts loaded, connections open
    ping = await ping_round_trips(url, turns)
    rt = await script_round_trips(url, turns)
    slot = await slot_round_trips(url, turns)
    print(f"PING (redis-py baseline):    {_ms(ping)}")
    print(f"script round trip (enqueue): {_ms(rt)} (target p99 < 2 ms)")
    print(f"whole turn (slot):           {_ms(slot)}")
    shared = [_shared(url, "bench:t:") for _ in range(3)]
    try:
        redis_rate = await throughput(list[AdmissionControl](shared), turns)
    finally:
        for admission in shared:
            await admission.aclose()
    local = Admission(max_concurrent=16, images_per_minute=0, per_user_jobs=100, max_queue=100_000)
    local_rate = await throughput([local], turns)
    print(f"turns/s through Redis (3 admissions, 48 at a time): {redis_rate:,.0f}")
    print(f"turns/s in-process (baseline): {local_rate:,.0f} (Redis: {redis_rate / local_rate:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--full", action="store_true", help="also the 10-minute, 3-process done-when run")
    args = parser.parse_args()
    with running_server() as server:
        asyncio.run(measure(server.url(), args.turns))
    if args.full:
        env = {**os.environ, "IMAGEBOT_FULL_PACING": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "-p", "no:cacheprovider"]
        command += ["tests/test_multiprocess_pacing.py", "-k", "three_processes"]
        sys.exit(subprocess.call(command, cwd=ROOT, env=env))


if __name__ == "__main__":
    main()
