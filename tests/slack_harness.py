"""Test support (no tests here): the real Slack adapter, on the real core, against the fake Slack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.slack import SlackAdapter
from bot.bootstrap import Core, new_http_session, open_core
from bot.models import Job
from bot.settings import load_settings
from tests.fakes.slack_server import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    HttpExchange,
    PostedMessage,
    ResponsePost,
    SlackCall,
)


@dataclass
class SlackBot:
    fake: FakeSlack
    core: Core
    adapter: SlackAdapter
    http: TestClient[Any, Any] | None = None  # HTTP mode: a client of the web app with /slack/events

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """The fake Slack POSTs a body, signed (or with the given headers), to /slack/events (recorded there)."""
        exchange = await self.send_http(body, headers)
        return exchange.status or 0, exchange.text

    async def send_http(self, body: bytes, headers: dict[str, str] | None = None) -> HttpExchange:
        assert self.http is not None, "HTTP mode only"
        return await self.fake.send_http(str(self.http.make_url("/slack/events")), body, headers)

    async def job(self, job_id: str) -> Job:
        job = await self.core.jobs.store.get(job_id)
        assert job is not None
        return job

    async def uploads_done(self, count: int = 1, timeout: float = 10.0) -> SlackCall:
        """The ``count``-th completed upload, after its controls message was posted too."""
        call = await self.fake.wait_for_call("files.completeUploadExternal", count, timeout)
        await self.fake.wait_for(lambda: len(self.controls()) >= count, timeout, f"{count} controls messages")
        await asyncio.wait_for(self.adapter.idle(), timeout)
        return call

    def controls(self) -> list[PostedMessage]:
        """The bot's button messages under results, oldest first."""
        return [m for m in self.fake.messages if m.method == "chat.postMessage" and _has_vary(m)]

    def image_messages(self, channel: str, thread_ts: str | None = None) -> list[PostedMessage]:
        return [m for m in self.fake.messages_in(channel, thread_ts) if m.method == "files.completeUploadExternal"]

    def ephemeral_texts(self) -> list[str]:
        """Everything said privately to users: response_url posts and chat.postEphemeral."""
        texts = [str(post.body.get("text", "")) for post in self.fake.responses if isinstance(post.body, dict)]
        return texts + [m.text for m in self.fake.messages if m.ephemeral_to is not None]


def responses_to(fake: FakeSlack, payload: dict[str, Any]) -> list[ResponsePost]:
    """The posts to the response_url of one request (a slash command's or a button's payload), oldest first."""
    response_id = str(payload.get("response_url", "")).rsplit("/", 1)[-1]
    return [post for post in fake.responses if post.response_id == response_id]


async def response_saying(fake: FakeSlack, payload: dict[str, Any], text: str, timeout: float = 5.0) -> ResponsePost:
    """The first ephemeral post to the request's response_url whose text contains ``text`` (waiting for it)."""

    def found() -> ResponsePost | None:
        posts = [p for p in responses_to(fake, payload) if isinstance(p.body, dict) and text in str(p.body.get("text"))]
        return posts[0] if posts else None

    return await fake.wait_for(found, timeout, f"a response saying {text!r}")


def as_message(body: dict[str, Any]) -> PostedMessage:
    """An ephemeral message posted to a response_url, as a message object (for ``button``)."""
    return PostedMessage("", "0", "", str(body.get("text", "")), body.get("blocks"))


async def response_button(fake: FakeSlack, prefix: str, timeout: float = 5.0) -> dict[str, Any]:
    """The body of the first response_url post with a button whose value starts with ``prefix`` (e.g. the
    confirmation's "confirm:"; the "Working on it" note before it has no buttons), waiting for it."""

    def found() -> dict[str, Any] | None:
        for post in fake.responses:
            if isinstance(post.body, dict) and _button_or_none(as_message(post.body), prefix) is not None:
                return dict(post.body)
        return None

    return await fake.wait_for(found, timeout, f"a response with a {prefix} button")


def _has_vary(message: PostedMessage) -> bool:
    for block in message.blocks or []:
        for element in block.get("elements", []):
            if str(element.get("value", "")).startswith("vary:"):
                return True
    return False


def button(message: PostedMessage, prefix: str) -> dict[str, Any]:
    """The button of a message whose value starts with ``prefix`` (e.g. "vary:" or "reroll:")."""
    found = _button_or_none(message, prefix)
    if found is None:
        raise AssertionError(f"no {prefix} button in {message.blocks}")
    return found


def _button_or_none(message: PostedMessage, prefix: str) -> dict[str, Any] | None:
    for block in message.blocks or []:
        for element in block.get("elements", []) if isinstance(block, dict) else []:
            if element.get("type") == "button" and str(element.get("value", "")).startswith(prefix):
                return dict(element)
    return None


@contextlib.asynccontextmanager
async def slack_bot(
    fake: FakeSlack, data_dir: Path, *, mode: str = "socket", **overrides: Any
) -> AsyncIterator[SlackBot]:
    """The adapter started on a fresh core over ``data_dir`` (the same dir again = a restart)."""
    credentials: dict[str, Any] = {"slack_bot_token": BOT_TOKEN, "slack_api_url": fake.api_url}
    if mode == "socket":
        credentials["slack_app_token"] = APP_TOKEN
    else:
        credentials["slack_signing_secret"] = SIGNING_SECRET
    settings = load_settings(data_dir=data_dir, **(credentials | overrides))
    async with new_http_session() as session, open_core(settings, session) as core:
        adapter = SlackAdapter(core, settings, session)
        await adapter.start()
        try:
            if mode == "socket":
                yield SlackBot(fake, core, adapter)
            else:
                app = web.Application()
                adapter.install_routes(app)
                async with TestClient(TestServer(app, host="127.0.0.1")) as http:
                    yield SlackBot(fake, core, adapter, http)
        finally:
            await fake.settle()  # every envelope acknowledged (or reported) before the socket closes
            await adapter.stop()
