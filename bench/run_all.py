"""Every performance figure of issue 12 in one table, each the median of 3 runs in a fresh process.

The fake Images API runs in a process of its own and serves photo-like images of the requested size
(~2.4 MB PNG at 1024², as the API does). CPU is the bot process's (all threads) from getrusage.

    python bench/run_all.py [--runs 3] [--only cpu,lag,rss,admission,pacing,slack_ack,discord_defer]
    python bench/run_all.py --figure cpu   # one measurement, printed as JSON (what the table is made of)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fake_openai_process, percentile  # noqa: E402

PROMPT = "a lighthouse at dusk"  # one prompt: the fake renders (and caches) one image, not one per job


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _kernel_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


async def _lag_probe(samples: list[float], stop: asyncio.Event, interval: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - started - interval)


async def _core_jobs(
    jobs: int, latency: float, *, concurrency: int, warmup: int = 0, durable: bool = True
) -> dict[str, Any]:
    """``jobs`` 1024² results through the whole core and the Discord render: bytes in -> files ready to post.

    Each job is recorded in the store, its answer spooled, decoded, verified and saved, the delivery recorded,
    the upload prepared and the job marked delivered: what ``imagebot run`` does apart from the HTTP post.
    ``durable=False``: the image pipeline alone (no store, no spool, no result files), for comparison.
    """
    from adapters.discord.render import upload_files
    from bot.bootstrap import new_http_session, open_core, settle_after_start
    from bot.models import GenerateRequest, JobContext
    from bot.settings import load_settings
    from tests.fakes.openai_server import DEFAULT_KEY

    async with fake_openai_process(latency) as base_url:
        with _data_folder() as data_dir:
            settings = load_settings(
                data_dir=Path(data_dir),
                openai_api_key=DEFAULT_KEY,
                openai_base_url=base_url,
                limits={
                    "max_concurrent": concurrency,
                    "images_per_minute": 0,
                    "per_user_jobs": jobs,
                    "max_queue": jobs * 2,
                },
                jobs={"dedupe_window": 0},
            )
            async with new_http_session() as session, open_core(settings, session) as core:

                async def one(i: int) -> int:
                    if not durable:
                        result = await core.service.generate(
                            GenerateRequest(prompt=PROMPT, size="1024x1024", requester=f"user{i}")
                        )
                        return len(await upload_files(result.images, 25 * 1024**2))
                    context = JobContext("discord", f"user{i}", workspace="G1", channel="C1")
                    outcome = await core.jobs.submit(context, GenerateRequest(prompt=PROMPT, size="1024x1024"))
                    assert outcome.result is not None
                    await core.jobs.begin_delivery(outcome.job.id)
                    files = await upload_files(outcome.result.images, 25 * 1024**2)
                    await core.jobs.mark_delivered(outcome.job.id)
                    return len(files)

                await asyncio.gather(*(one(i) for i in range(warmup)))
                settle_after_start()  # as `imagebot run` does once its adapters are up
                samples: list[float] = []
                stop = asyncio.Event()
                probe = asyncio.create_task(_lag_probe(samples, stop))
                rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                cpu_started, kernel_started, started = _cpu_seconds(), _kernel_seconds(), time.perf_counter()
                counts = await asyncio.gather(*(one(i) for i in range(jobs)))
                cpu, wall = _cpu_seconds() - cpu_started, time.perf_counter() - started
                kernel = _kernel_seconds() - kernel_started
                stop.set()
                await probe
    return {
        "images": sum(counts),
        "cpu_ms_per_image": cpu / max(1, sum(counts)) * 1000,
        "kernel_ms_per_image": kernel / max(1, sum(counts)) * 1000,
        "wall_s": wall,
        "lag_p99_ms": percentile(samples, 0.99) * 1000,
        "lag_max_ms": max(samples) * 1000,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before / 1024,
    }


@contextlib.contextmanager
def _data_folder() -> Iterator[str]:
    """A fresh data folder. Under ``main`` it is left in place until every run is over: deleting hundreds of files
    makes every file the next run creates for 30 s cost more (ext4 skips recently deleted inodes one by one)."""
    keep_in = os.environ.get(KEEP_DATA_IN)
    if keep_in:
        yield tempfile.mkdtemp(dir=keep_in)
        return
    with tempfile.TemporaryDirectory() as folder:
        yield folder


KEEP_DATA_IN = "IMAGEBOT_BENCH_DATA"


# --- a loop whose clock jumps ahead when it would sleep: minutes of pacing in milliseconds -------------


class _WarpSelector(selectors.DefaultSelector):
    def __init__(self, loop: _VirtualTimeLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and timeout:
            self._loop.virtual_now += timeout
        return events


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.virtual_now = 0.0
        super().__init__(_WarpSelector(self))

    def time(self) -> float:
        return self.virtual_now


def _in_virtual_time(make: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    loop = _VirtualTimeLoop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


def _admission(**options: Any) -> Any:
    """An Admission on the loop's clock, with the packaged default for how often places in line are sent."""
    import inspect

    from bot.limits import Admission
    from bot.settings import LimitsSettings

    defaults = LimitsSettings()
    if "position_interval" in inspect.signature(Admission).parameters:  # absent before issue 12
        options.setdefault("position_interval", defaults.position_interval)
    loop = asyncio.get_running_loop()
    return Admission(clock=loop.time, **options)


async def _edits_figure(queued: int) -> dict[str, Any]:
    """``queued`` jobs from queued/4 users at once, 4 running at a time, 2 s each: place-in-line edits."""
    from bot.models import JobStatus, Progress

    admission = _admission(max_concurrent=4, images_per_minute=0, per_user_jobs=10, max_queue=queued * 2)
    loop = asyncio.get_running_loop()
    edits = 0
    waited = 0.0

    async def progress(update: Progress) -> None:
        nonlocal edits
        if update.status is JobStatus.QUEUED:
            edits += 1

    async def job(i: int) -> None:
        nonlocal waited
        asked = loop.time()
        async with admission.slot(f"user{i % max(1, queued // 4)}", 1, progress):
            waited += loop.time() - asked
            await asyncio.sleep(2.0)

    await asyncio.gather(*(job(i) for i in range(queued)))
    return {"edits_per_job": edits / queued, "edits_per_minute_waited": edits / (waited / 60)}


async def _grant_cost(queued: int) -> float:
    """CPU µs per job to admit ``queued`` waiting jobs one at a time (each done at once)."""
    admission = _admission(max_concurrent=1, images_per_minute=0, per_user_jobs=10, max_queue=queued * 2)

    async def job(i: int) -> None:
        async with admission.slot(f"user{i % max(1, queued // 4)}", 1):
            await asyncio.sleep(0)

    cpu_started = time.process_time()
    await asyncio.gather(*(job(i) for i in range(queued)))
    return (time.process_time() - cpu_started) / queued * 1e6


async def _pacing_figure(allowance: int = 30, backlog: int = 120, call_seconds: float = 5.0) -> dict[str, Any]:
    """A backlog against a fake upstream that answers 429 above ``allowance`` images in any rolling 60 s."""
    admission = _admission(max_concurrent=10, images_per_minute=allowance, per_user_jobs=backlog, max_queue=backlog)
    loop = asyncio.get_running_loop()
    arrivals: deque[float] = deque()
    refused = 0
    accepted: list[float] = []

    def upstream() -> float | None:
        """None: accepted; else the Retry-After of a 429."""
        nonlocal refused
        now = loop.time()
        while arrivals and arrivals[0] <= now - 60:
            arrivals.popleft()
        if len(arrivals) >= allowance:
            refused += 1
            return arrivals[0] + 60 - now
        arrivals.append(now)
        accepted.append(now)
        return None

    async def job(i: int) -> None:
        async with admission.slot(f"user{i}", 1):
            while (retry_after := upstream()) is not None:
                admission.throttle(retry_after)  # what the provider does on a 429
                await asyncio.sleep(retry_after)
            await asyncio.sleep(call_seconds)

    started = loop.time()
    await asyncio.gather(*(job(i) for i in range(backlog)))
    span = max(accepted) - started
    # The most that could be let through: a full allowance per started minute of the run.
    possible = allowance * (int(span // 60) + 1)
    return {"upstream_429s": refused, "allowance_used_pct": 100 * backlog / possible, "minutes": span / 60}


async def _slack_ack_figure(commands: int = 200, bursts: int = 5) -> dict[str, Any]:
    """Bursts of /imagine over Socket Mode: a bare slack-bolt app that only acks, then the whole bot; each p99
    is the median of ``bursts`` bursts' (one burst's p99 is its slowest acks: it swings ±40% run to run)."""
    from bench.bench_slack import ack_latencies, bare_ack_latencies

    def p99(bursts_latencies: list[list[float]]) -> float:
        return statistics.median(percentile(latencies, 0.99) for latencies in bursts_latencies) * 1000

    bare = p99(await bare_ack_latencies(commands, bursts))
    async with fake_openai_process(0.5) as base_url:
        ours = p99(await ack_latencies(commands, 50, base_url, bursts))
    return {"bare_p99_ms": bare, "p99_ms": ours, "ratio": ours / bare}


async def _discord_defer_figure(interactions: int = 200) -> dict[str, Any]:
    """A burst of /imagine interactions: a bare discord.py client that only defers, then the whole bot."""
    from bench.bench_discord import defer_latencies

    bare = (await defer_latencies(interactions, 0.5, 50, bare=True))["p99"]
    ours = (await defer_latencies(interactions, 0.5, 50))["p99"]
    return {"bare_p99_ms": bare, "p99_ms": ours, "ratio": ours / bare}


def measure(figure: str) -> dict[str, Any]:
    if figure == "cpu":
        return asyncio.run(_core_jobs(40, 0.5, concurrency=8, warmup=4))
    if figure == "cpu_pipeline":
        return asyncio.run(_core_jobs(40, 0.5, concurrency=8, warmup=4, durable=False))
    if figure == "lag":
        return asyncio.run(_core_jobs(200, 2.0, concurrency=200))
    if figure == "rss":
        return asyncio.run(_core_jobs(100, 2.0, concurrency=100))
    if figure == "admission":
        edits = _in_virtual_time(lambda: _edits_figure(800))
        small = asyncio.run(_grant_cost(800))
        large = asyncio.run(_grant_cost(8000))
        return {**edits, "us_per_grant": small, "us_per_grant_8000": large, "grant_growth": large / small}
    if figure == "pacing":
        return _in_virtual_time(_pacing_figure)
    if figure == "slack_ack":
        return asyncio.run(_slack_ack_figure())
    if figure == "discord_defer":
        return asyncio.run(_discord_defer_figure())
    raise SystemExit(f"unknown figure {figure}")


# --- the table --------------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str, str, Callable[[float], bool]]] = [
    # (figure, key, label, target, met)
    (
        "cpu",
        "cpu_ms_per_image",
        "CPU per 1024² result, whole core: jobs, store, spool, result files, Discord render (ms)",
        "≤ 10",
        lambda v: v <= 10,
    ),
    (
        "cpu_pipeline",
        "cpu_ms_per_image",
        "CPU per 1024² result, image pipeline only: provider, checks, Discord render (ms)",
        "≤ 10",
        lambda v: v <= 10,
    ),
    ("lag", "lag_p99_ms", "loop lag p99, 200 jobs in flight (ms)", "≤ 20", lambda v: v <= 20),
    ("rss", "rss_peak_mib", "peak RSS, 100 jobs upstream at once (MiB)", "≤ 250", lambda v: v <= 250),
    (
        "admission",
        "edits_per_minute_waited",
        "place-in-line edits per job per minute waited, 800 queued",
        "≤ 20 (one per 3 s)",
        lambda v: v <= 20,
    ),
    ("admission", "us_per_grant", "admission CPU per job, 800 queued (µs)", "-", lambda v: True),
    ("admission", "grant_growth", "CPU per job, 8000 queued ÷ 800 queued", "≤ 1.5 (O(n): ~10)", lambda v: v <= 1.5),
    ("pacing", "upstream_429s", "upstream 429s, 30/min allowance, 120-job backlog", "0", lambda v: v == 0),
    ("pacing", "allowance_used_pct", "allowance used (%)", "≥ 95", lambda v: v >= 95),
    (
        "slack_ack",
        "ratio",
        "Slack ack p99, 200-command burst over Socket Mode, ÷ a bare slack-bolt app that only acks (same run)",
        "≤ 1.2",
        lambda v: v <= 1.2,
    ),
    ("slack_ack", "p99_ms", "Slack ack p99, whole bot (ms)", "-", lambda v: True),
    ("slack_ack", "bare_p99_ms", "Slack ack p99, bare slack-bolt app (ms)", "-", lambda v: True),
    (
        "discord_defer",
        "ratio",
        "Discord defer p99, 200-interaction burst, ÷ a bare discord.py client that only defers (same run)",
        "≤ 1.1",
        lambda v: v <= 1.1,
    ),
    ("discord_defer", "p99_ms", "Discord defer p99, whole bot (ms)", "-", lambda v: True),
    ("discord_defer", "bare_p99_ms", "Discord defer p99, bare discord.py client (ms)", "-", lambda v: True),
]


def _run_figure(figure: str, data: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--figure", figure],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, KEEP_DATA_IN: data},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(runs: int, only: set[str]) -> None:
    figures = [f for f in dict.fromkeys(row[0] for row in ROWS) if not only or f in only]
    with tempfile.TemporaryDirectory(prefix="imagebot-bench-") as data:
        results: dict[str, list[dict[str, Any]]] = {f: [_run_figure(f, data) for _ in range(runs)] for f in figures}
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; median of {runs} runs each")
    print()
    print("| figure | median | runs | target | met |")
    print("|---|---|---|---|---|")
    for figure, key, label, target, met in ROWS:
        if figure not in results:
            continue
        values = [r[key] for r in results[figure]]
        median = statistics.median(values)
        shown = ", ".join(_number(v) for v in values)
        print(f"| {label} | {_number(median)} | {shown} | {target} | {'yes' if met(median) else 'NO'} |")


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--figure")
    options = parser.parse_args()
    if options.figure:
        print(json.dumps(measure(options.figure)))
    else:
        main(options.runs, {f for f in options.only.split(",") if f})
