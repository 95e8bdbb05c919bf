"""Three real ``imagebot run`` processes on one API key share PostgreSQL and Redis; the fake OpenAI enforces an
images-per-minute limit the way the API does (a rolling window of arrivals, 429 above it).

The issue's done-when is 300 jobs at 30 per minute: ``IMAGEBOT_FULL_PACING=1`` (bench/bench_admission_redis.py --full)
runs exactly that, in about 11 minutes, and asks for 98% of the allowance.
Here the window is shortened with ``limits.pace_window_seconds``, so the same properties run as 180 jobs at 30 per
6 s: six windows, about 45 s (after one warm-up job per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from adapters.web.session import SECRET_FILE, SESSION_COOKIE, session_token
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.test_run import run_env, running_bot
from tests.test_web import HEADERS

FULL = os.environ.get("IMAGEBOT_FULL_PACING") == "1"  # the issue's own scale (bench/bench_admission_redis.py --full)
ALLOWANCE = 30
WINDOW = 60.0 if FULL else 6.0
# The margin is the packaged 1 s, not scaled down with the window: it covers the time between a call counting in
# Redis and reaching the upstream, which does not shrink with the window (on this loaded 2-core box it reached
# 0.5 s). So the best a 6 s window can use is 6/7 of the allowance; the test asks for 98% of that, and the
# bench's 60 s window (60/61 = 98.4% at best) for 98% of the allowance itself.
MARGIN = 1.0
USERS = 20
JOBS_PER_USER = 15 if FULL else 9
PROCESSES = 3


def _user(index: int) -> str:
    return f"user{index:02d}".ljust(24, "_")  # the shape of a playground session id


def _bot_env(tmp_path: Path, index: int, secret: bytes, fake: FakeOpenAI, postgres_url: str, redis_url: str) -> Any:
    folder = tmp_path / f"p{index}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / SECRET_FILE).write_text(secret.hex() + "\n")  # one install: a session works on every process
    (folder / "data" / SECRET_FILE).chmod(0o600)
    return folder, run_env(
        folder,
        OPENAI_API_KEY=DEFAULT_KEY,
        OPENAI_BASE_URL=fake.base_url,
        IMAGEBOT_DATABASE_URL=postgres_url,
        IMAGEBOT_REDIS_URL=redis_url,
        IMAGEBOT_LIMITS__IMAGES_PER_MINUTE=str(ALLOWANCE),
        IMAGEBOT_LIMITS__PACE_WINDOW_SECONDS=str(WINDOW),
        IMAGEBOT_LIMITS__PACE_MARGIN_SECONDS=str(MARGIN),
        IMAGEBOT_LIMITS__MAX_CONCURRENT="8",
        IMAGEBOT_LIMITS__PER_USER_JOBS="50",
        IMAGEBOT_LIMITS__MAX_QUEUE="1000",
        IMAGEBOT_LOG_LEVEL="WARNING",
    )


async def _imagine(base_url: str, user: str, secret: bytes, prompt: str) -> dict[str, Any]:
    cookies = {SESSION_COOKIE: session_token(secret, user)}
    timeout = aiohttp.ClientTimeout(total=1200)
    async with (
        aiohttp.ClientSession(cookies=cookies, timeout=timeout) as client,
        client.post(f"{base_url}/api/imagine", json={"text": prompt}, headers=HEADERS) as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


def _user_of(prompt: str) -> str:
    match = re.match(r"a picture for (user\d\d) number \d+", prompt)
    assert match is not None, prompt
    return match.group(1)


def test_the_fake_answers_429_above_its_images_per_minute() -> None:
    async def scenario() -> tuple[list[int], str]:
        async with FakeOpenAI(images_per_minute=3, rate_window=60) as fake, aiohttp.ClientSession() as http:
            statuses: list[int] = []
            retry_after = ""
            for n in (2, 1, 1):
                async with http.post(
                    f"{fake.base_url}/images/generations",
                    json={"model": "gpt-image-2", "prompt": "a fox", "n": n},
                    headers={"Authorization": f"Bearer {DEFAULT_KEY}"},
                ) as response:
                    statuses.append(response.status)
                    body = await response.json()
                    if response.status == 429:
                        assert body["error"]["code"] == "rate_limit_exceeded"
                        retry_after = response.headers["retry-after"]
            return statuses, retry_after

    statuses, retry_after = asyncio.run(scenario())
    assert statuses == [200, 200, 429]  # 2 + 1 fill the 3 per minute; the next image is refused
    assert 55 <= int(retry_after) <= 60


async def test_three_processes_share_the_pace_and_serve_users_in_turn(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    secret = secrets.token_bytes(32)
    async with (
        FakeOpenAI(images_per_minute=ALLOWANCE, rate_window=WINDOW) as fake,
        contextlib.AsyncExitStack() as stack,
    ):
        urls = []
        for index in range(PROCESSES):
            folder, env = _bot_env(tmp_path, index, secret, fake, postgres_url, redis_url)
            await stack.enter_async_context(running_bot(env, folder))
            urls.append(f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}")

        # one job per process first (a process's first call is slower on its way out), then an empty window
        await asyncio.gather(*(_imagine(url, _user(99), secret, f"warm-up {i}") for i, url in enumerate(urls)))
        await asyncio.sleep(WINDOW + MARGIN)
        warm_up = len(fake.image_requests)

        # each user's jobs, one user after the other (a plain FIFO would serve them user by user), spread over
        # the processes
        jobs = []
        for user, number in itertools.product(range(USERS), range(JOBS_PER_USER)):
            process = urls[(user + number) % PROCESSES]
            prompt = f"a picture for user{user:02d} number {number}"
            jobs.append(_imagine(process, _user(user), secret, prompt))
        started = time.monotonic()
        answers = await asyncio.gather(*jobs)
        took = time.monotonic() - started

    assert all(answer["status"] == "done" for answer in answers)
    assert fake.rate_limited_count == 0  # not one upstream 429
    backlog = fake.image_requests[warm_up:]
    arrivals = sorted((r.received_at, _user_of(r.json["prompt"])) for r in backlog)
    assert len(arrivals) == USERS * JOBS_PER_USER and all(r.status == 200 for r in backlog)
    times = [t for t, _ in arrivals]

    for index, start in enumerate(times):  # no rolling window ever holds more than the allowance
        assert sum(1 for t in times[index:] if t < start + WINDOW) <= ALLOWANCE

    # each image went as soon as the one it replaced left the window (plus the margin): no time was lost
    gaps = [times[k] - times[k - ALLOWANCE] for k in range(ALLOWANCE, len(times))]
    used = WINDOW / (sum(gaps) / len(gaps))
    best = WINDOW / (WINDOW + MARGIN)
    print(f"\n{len(times)} images in {took:.1f}s; allowance used {used:.1%} (best {best:.1%} with this margin)")
    assert used >= (0.98 if FULL else 0.98 * best)

    # after the first window (whoever asked first went first), users take turns: at every point, the users who
    # still have jobs have been served within 2 turns of each other, across the three processes
    totals = Counter(user for _, user in arrivals)
    served: Counter[str] = Counter()
    since: Counter[str] = Counter()
    for index, (_, user) in enumerate(arrivals):
        served[user] += 1
        if index < ALLOWANCE:
            continue
        since[user] += 1
        active = [u for u in totals if served[u] < totals[u]]
        if active:
            counts = [since[u] for u in active]
            assert max(counts) - min(counts) <= 2, (index, dict(since))
