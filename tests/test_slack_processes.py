"""Slack in two `imagebot run` processes sharing PostgreSQL, Redis and the data folder, in Socket Mode (Slack
spreads the envelopes over both connections) and in HTTP mode behind a load balancer (requests alternate between
the processes): each request is answered exactly once, and a retried event that reaches the other process is not
answered twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp

from tests.fakes.slack_server import (
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL_ID,
    MAX_SOCKET_CONNECTIONS,
    SIGNING_SECRET,
    FakeSlack,
    command_body,
    event_body,
    retry_headers,
    sign_request,
)
from tests.images import png
from tests.test_run import run_env, running_bot


def slack_env(
    tmp_path: Path, fake: FakeSlack, postgres_url: str, redis_url: str, *, http: bool = False
) -> dict[str, str]:
    mode = {"SLACK_SIGNING_SECRET": SIGNING_SECRET} if http else {"SLACK_APP_TOKEN": APP_TOKEN}
    return run_env(
        tmp_path,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=fake.api_url,
        IMAGEBOT_DATABASE_URL=postgres_url,
        IMAGEBOT_REDIS_URL=redis_url,
        IMAGEBOT_LIMITS__PER_USER_JOBS="10",  # one user sends every request: with Redis the per-user cap is shared
        **mode,
    )


def uploads(fake: FakeSlack) -> int:
    return len([call for call in fake.calls_to("files.completeUploadExternal") if call.ok])


async def settle(fake: FakeSlack, expected: int) -> None:
    """Wait for ``expected`` uploads, then give a duplicate the time it would take to show up as well."""
    await fake.wait_for(lambda: uploads(fake) >= expected, timeout=30, what=f"{expected} uploads")
    await fake.wait_for(lambda: all(e.ack for e in fake.envelopes.values()), what="every envelope acknowledged")
    await asyncio.sleep(1.0)  # a second answer would be one more upload: none may come


async def test_two_socket_mode_processes_share_the_envelopes(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    async with FakeSlack(spread=True) as fake:
        envs = [slack_env(tmp_path, fake, postgres_url, redis_url) for _ in range(2)]
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(running_bot(env, tmp_path)) for env in envs))
            await fake.wait_for(lambda: fake.open_connections == 2, what="a connection per process")
            sent = [
                await fake.send_slash_command("/imagine", f"fox number {n}", channel_id=CHANNEL_ID) for n in range(4)
            ]
            assert len({envelope.connection for envelope in sent}) == 2
            await settle(fake, 4)
            assert uploads(fake) == 4

            shared = fake.add_file(png(), "cat.png", "image/png")
            event = fake.app_mention_event("vary please", files=[shared])
            first = await fake.send_event(event)
            retry = await fake.send_event(
                event, event_id=first.payload["event_id"], retry_attempt=1, retry_reason="timeout"
            )
            assert first.connection != retry.connection  # the retry went to the other process
            await settle(fake, 5)
            assert uploads(fake) == 5, "the retried event was answered by both processes"
        assert not fake.errors


async def test_two_http_mode_processes_behind_a_load_balancer(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    async with FakeSlack() as fake:
        envs = [slack_env(tmp_path, fake, postgres_url, redis_url, http=True) for _ in range(2)]
        urls = [f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}/slack/events" for env in envs]
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(running_bot(env, tmp_path)) for env in envs))
            for n in range(4):  # the load balancer alternates
                await fake.send_http(urls[n % 2], command_body(fake.command_payload("/imagine", f"fox number {n}")))
            await settle(fake, 4)
            assert uploads(fake) == 4

            shared = fake.add_file(png(), "cat.png", "image/png")
            body = event_body(fake.event_payload(fake.app_mention_event("vary please", files=[shared])))
            await fake.send_http(urls[0], body)
            await fake.wait_for(lambda: uploads(fake) >= 5, timeout=30, what="the event answered")
            retried = await fake.send_http(urls[1], body, sign_request(body) | retry_headers(1))
            assert retried.status == 200
            await settle(fake, 5)
            assert uploads(fake) == 5, "the retried event was answered by both processes"
        assert not fake.errors


async def test_the_fake_spreads_envelopes_and_refuses_an_eleventh_connection() -> None:
    async with FakeSlack(spread=True) as fake, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {APP_TOKEN}"}
        sockets = []
        for _ in range(MAX_SOCKET_CONNECTIONS + 1):
            async with http.post(fake.api_url + "apps.connections.open", headers=headers) as opened:
                url = (await opened.json())["url"]
            ws = await http.ws_connect(url)
            sockets.append((ws, json.loads((await ws.receive()).data)))
        assert [hello["type"] for _, hello in sockets] == ["hello"] * MAX_SOCKET_CONNECTIONS + ["disconnect"]
        assert sockets[-1][1]["reason"] == "too_many_websockets"
        await fake.wait_for(lambda: fake.open_connections == MAX_SOCKET_CONNECTIONS or None, what="ten open")
        envelopes = [await fake.send_slash_command("/imagine", f"fox {n}") for n in range(MAX_SOCKET_CONNECTIONS)]
        assert sorted(e.connection for e in envelopes) == list(range(1, MAX_SOCKET_CONNECTIONS + 1))
        for ws, _ in sockets:
            await ws.close()
