"""`/slack/events` facing the internet: headers checked before the body, a body cap, replays and future
timestamps refused. The real adapter on a real aiohttp server; the fake Slack signs and sends the requests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.slack.http import (
    FUTURE_SKEW_SECONDS,
    MAX_BODY_BYTES,
    SIGNING_WINDOW_SECONDS,
    ReplayCache,
    check_headers,
)
from tests.fakes.slack_server import FakeSlack, command_body, sign_request
from tests.slack_harness import SlackBot, responses_to, slack_bot


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server
        await server.settle()
        server.assert_no_errors()


@pytest.fixture
async def http_bot(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackBot]:
    async with slack_bot(fake, tmp_path / "data", mode="http") as running:
        yield running


async def _jobs(bot: SlackBot) -> int:
    return len(await bot.core.jobs.store.history(limit=20))


async def test_a_replayed_signed_request_makes_no_second_job(fake: FakeSlack, http_bot: SlackBot) -> None:
    payload = fake.command_payload("/imagine", "a red fox")
    body = command_body(payload)
    captured = sign_request(body)

    first = await http_bot.send_http(body, captured)
    await http_bot.uploads_done()
    replays = [await http_bot.send_http(body, captured) for _ in range(2)]
    await http_bot.adapter.idle()

    assert (first.status, first.text) == (200, "")  # the ack: an empty 200; the note follows on the response_url
    assert [(r.status, r.text) for r in replays] == [(200, ""), (200, "")]  # answered, nothing done
    assert [p.body["text"] for p in responses_to(fake, payload)] == ["Working on it: a red fox"]  # said once
    assert await _jobs(http_bot) == 1 and len(fake.uploads) == 1


@pytest.mark.parametrize("ahead", [FUTURE_SKEW_SECONDS + 5, 280])
async def test_a_timestamp_from_the_future_is_refused(fake: FakeSlack, http_bot: SlackBot, ahead: int) -> None:
    body = command_body(fake.command_payload("/imagine", "a red fox"))
    status, _ = await http_bot.post(body, sign_request(body, timestamp=int(time.time()) + ahead))

    assert status == 401 and await _jobs(http_bot) == 0


async def test_a_small_clock_difference_is_accepted(fake: FakeSlack, http_bot: SlackBot) -> None:
    body = command_body(fake.command_payload("/imagine", "a red fox"))
    status, _ = await http_bot.post(body, sign_request(body, timestamp=int(time.time()) + 10))
    await http_bot.uploads_done()

    assert status == 200 and await _jobs(http_bot) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Slack-Request-Timestamp": "now", "X-Slack-Signature": "v0=" + "0" * 64},
        {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "sha1=abc"},
    ],
    ids=["missing", "bad-timestamp", "bad-signature-format"],
)
async def test_requests_without_well_formed_signature_headers_are_refused(
    fake: FakeSlack, http_bot: SlackBot, headers: dict[str, str]
) -> None:
    body = command_body(fake.command_payload("/imagine", "a red fox"))
    status, text = await http_bot.post(body, headers | {"Content-Type": "application/x-www-form-urlencoded"})

    assert (status, text) == (401, "Invalid request signature") and await _jobs(http_bot) == 0


async def test_an_oversized_body_is_refused_by_its_declared_length(fake: FakeSlack, http_bot: SlackBot) -> None:
    body = b"text=" + b"a" * (MAX_BODY_BYTES + 1)
    status, _ = await http_bot.post(body, sign_request(body))  # correctly signed, still too large

    assert status == 413 and await _jobs(http_bot) == 0


async def test_an_oversized_chunked_body_is_cut_off_at_the_cap(http_bot: SlackBot) -> None:
    """No Content-Length: the cap holds while reading (the server answers before the client has sent it all)."""
    body = b"text=" + b"a" * (8 * MAX_BODY_BYTES)
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(body), 64 * 1024):
            sent += 64 * 1024
            yield body[start : start + 64 * 1024]

    assert http_bot.http is not None
    async with aiohttp.ClientSession() as client:
        try:
            async with client.post(
                str(http_bot.http.make_url("/slack/events")), data=stream(), headers=sign_request(body)
            ) as response:
                status = response.status
        except aiohttp.ClientError:  # the server closed the connection while the client was still sending
            status = 413
    assert status == 413 and await _jobs(http_bot) == 0


@given(
    timestamp=st.one_of(st.none(), st.text(max_size=20), st.integers(-(10**13), 10**13).map(str)),
    signature=st.one_of(st.none(), st.text(max_size=80), st.from_regex(r"\Av0=[0-9a-f]{64}\Z")),
)
def test_header_checks_never_raise_and_accept_only_fresh_well_formed_headers(
    timestamp: str | None, signature: str | None
) -> None:
    now = 1_800_000_000.0
    refusal = check_headers(timestamp, signature, now)
    if refusal is None:
        assert timestamp is not None and signature is not None and signature.startswith("v0=")
        assert -FUTURE_SKEW_SECONDS <= now - int(timestamp) <= SIGNING_WINDOW_SECONDS
    else:
        assert refusal.status == 401


def test_the_replay_cache_forgets_pairs_after_the_window() -> None:
    cache = ReplayCache(max_entries=2)
    now = 1_800_000_000
    assert cache.first_time(str(now), "v0=a", now) and not cache.first_time(str(now), "v0=a", now + 1)
    later = now + SIGNING_WINDOW_SECONDS + FUTURE_SKEW_SECONDS + 1
    assert cache.first_time(str(now), "v0=a", later)  # (bolt and the header check refuse it by then anyway)
