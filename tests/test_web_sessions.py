"""Playground sessions are issued by the server with the page and signed: no cookie, a forged or a planted id
gets nothing from the API; dropping the cookie does not make a new user (per-user caps hold)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.web.session import (
    NO_SESSION,
    SECRET_FILE,
    SESSION_COOKIE,
    SESSIONS_PER_ADDRESS_PER_MINUTE,
    session_token,
)
from bot.models import JobStatus
from tests.fakes.provider import FakeImages
from tests.test_web import HEADERS, Harness, _cookie, _harness


@pytest.fixture
async def web_bot(tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _harness(tmp_path):
        yield harness


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeImages]]:
    """The playground with per_user_jobs=1 and image calls held "running" until the gate opens."""
    provider = FakeImages()
    provider.gate = asyncio.Event()
    async for bot in _harness(tmp_path, provider=provider, limits={"per_user_jobs": 1}):
        yield bot, provider
        provider.gate.set()


async def _post_as(bot: Harness, cookies: dict[str, str], text: str = "a fox") -> tuple[int, dict[str, Any]]:
    """A POST from a client holding exactly ``cookies`` (none: a client that dropped its cookie)."""
    async with (
        aiohttp.ClientSession(cookies=cookies) as client,
        client.post(bot.client.make_url("/api/imagine"), json={"text": text}, headers=HEADERS) as response,
    ):
        return response.status, await response.json()


async def test_cookie_less_requests_make_no_jobs_and_per_user_caps_hold(held: tuple[Harness, FakeImages]) -> None:
    bot, provider = held
    first = asyncio.create_task(bot.imagine("a fox"))  # the page's own session: one job, held running
    while bot.core.admission.running < 1:
        await asyncio.sleep(0.01)

    dropped = await asyncio.gather(*(_post_as(bot, {}, f"a cat {i}") for i in range(4)))
    again = await _post_as(bot, {SESSION_COOKIE: _cookie(bot)}, "a second fox")

    assert [status for status, _ in dropped] == [401] * 4
    assert all(body["error"]["message"] == NO_SESSION for _, body in dropped)  # "reload the page"
    assert again[0] == 429 and "already have 1 image request" in again[1]["error"]["message"]
    history = await bot.core.jobs.store.history(limit=10)
    assert {job.context.user for job in history} == {_cookie(bot).split(".")[0]}  # no new user was made
    assert sum(job.status is not JobStatus.FAILED for job in history) == 1  # the second was refused by the cap
    assert provider.gate is not None
    provider.gate.set()
    assert (await first)["status"] == "done"


async def test_forged_and_planted_session_ids_read_nothing(web_bot: Harness, tmp_path: Path) -> None:
    mine = await web_bot.imagine("a fox")
    user = _cookie(web_bot).split(".")[0]
    forged = [
        user,  # the id alone (what the old cookie was)
        f"{user}.{'A' * 43}",  # a made-up signature
        session_token(b"another install's secret 0123456", user),  # signed with another secret
        "alice-browser-session-0001",
    ]
    for value in forged:
        async with (
            aiohttp.ClientSession(cookies={SESSION_COOKIE: value}) as client,
            client.get(web_bot.client.make_url("/api/history")) as history,
            client.get(web_bot.client.make_url(mine["images"][0]["url"])) as image,
        ):
            assert (history.status, image.status) == (401, 401), value
            assert (await history.json())["error"]["message"] == NO_SESSION


async def test_the_secret_is_kept_private_in_the_data_folder(web_bot: Harness) -> None:
    secret = web_bot.core.settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) == 32


async def test_new_sessions_per_address_are_capped(web_bot: Harness) -> None:
    statuses = []
    for _ in range(SESSIONS_PER_ADDRESS_PER_MINUTE + 1):
        async with aiohttp.ClientSession() as browser, browser.get(web_bot.client.make_url("/")) as page:
            statuses.append((page.status, SESSION_COOKIE in page.cookies))
    # the harness's own page load was the first session from this address
    assert statuses[: SESSIONS_PER_ADDRESS_PER_MINUTE - 1] == [(200, True)] * (SESSIONS_PER_ADDRESS_PER_MINUTE - 1)
    assert statuses[-1] == (429, False)
    assert (await web_bot.client.get("/")).status == 200  # a browser that has its session still loads the page
