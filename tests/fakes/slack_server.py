"""A fake Slack on 127.0.0.1 (aiohttp, port 0): Web API, file upload/download, Socket Mode and response_urls.

    async with FakeSlack() as fake:
        app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))
        handler = AsyncSocketModeHandler(app, APP_TOKEN)
        await handler.connect_async()
        envelope = await fake.send_slash_command("/imagine", "a red fox")
        await fake.wait_for_call("files.completeUploadExternal")
        assert fake.ack_latency(envelope.envelope_id) < 3
        await handler.close_async()
        fake.assert_no_errors()

Wire behaviour as slack_sdk 3.48 / slack-bolt 1.30 expect it: Web API errors are HTTP 200 with
``{"ok": false, "error": ...}`` (only scripted failures change the status, e.g. 429 + Retry-After); arguments arrive
as query string (files.* in slack_sdk), urlencoded/multipart form or JSON (chat.*, views.*) and are merged; the upload
URL answers ``text/plain`` "OK - <length>"; url_private without the bot token or without ``files:read`` answers an HTML
login page with status 200. Anything the fake can tell is a client bug (late ack, wrong upload length, a response_url
used too often) is also appended to ``fake.errors``, which ``assert_no_errors()`` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import mimetypes
import secrets
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import BodyPartReader, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from PIL import Image

from tests.fakes.loopback import LoopbackServer

BOT_TOKEN = "xoxb-1111111111-2222222222-FakeBotToken0123456789"
APP_TOKEN = "xapp-1-A0IMAGEBOT-3333333333-fakeapptoken0123456789abcdef"
SIGNING_SECRET = "fake0signing0secret0123456789abc"
VERIFICATION_TOKEN = "FakeVerificationToken123"  # the deprecated "token" field Slack still puts in payloads
TEAM_ID, TEAM_DOMAIN = "T0IMAGEBOT", "imagebot-test"
APP_ID, BOT_ID, BOT_USER_ID = "A0IMAGEBOT", "B0IMAGEBOT", "U0IMAGEBOT"
USER_ID = "U0HUMAN001"  # a human, "alice"
CHANNEL_ID = "C0GENERAL1"  # public #general, the bot is a member
DEFAULT_SCOPES = frozenset(
    {
        "commands",
        "chat:write",
        "files:write",
        "files:read",
        "app_mentions:read",
        "channels:read",
        "users:read",
        "im:write",
    }
    | {"channels:history", "groups:history", "im:history", "mpim:history"}
)
ACK_DEADLINE = 3.0  # seconds Slack waits for an envelope ack
MAX_SOCKET_CONNECTIONS = 10  # open Socket Mode connections per app; one more is told "too_many_websockets"
TRIGGER_TTL = 3.0  # trigger_ids are short-lived and single use
RESPONSE_URL_USES, RESPONSE_URL_TTL = 5, 30 * 60.0
UPLOAD = "upload"  # pseudo method name of the upload-URL step, in fake.calls and for fail_next()
LOGIN_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><title>Slack</title></head><body>'
    '<h1>Sign in to imagebot-test</h1><form action="/signin" method="post"><input name="email">'
    '<input name="password" type="password"><button>Sign in</button></form></body></html>'
)
_SCOPE_NEEDED = {
    "chat.postMessage": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "files.info": "files:read",
    "conversations.info": "channels:read",
    "conversations.open": "im:write",
    "users.info": "users:read",
    "conversations.history": "channels:history",
    "conversations.replies": "channels:history",
}
_HISTORY_MAX = 999  # conversations.history/replies refuse a larger limit
_JSON_ARGS = ("blocks", "attachments", "files", "view", "metadata")  # JSON-encoded strings when sent as a form
_VIEW_MAX_BYTES, _VIEW_STACK_MAX = 250_000, 3
T = TypeVar("T")


@dataclass(frozen=True)
class SlackCall:
    """One Web API call (or, with method ``UPLOAD``, one POST to an upload URL) and what the fake answered."""

    method: str
    args: dict[str, Any]  # query + body merged, JSON-ish arguments decoded, "token" removed
    headers: Mapping[str, str]  # case-insensitive
    at: float  # time.monotonic() on arrival
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)
    response_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        return self.response.get("error")


@dataclass
class UploadedFile:
    file_id: str
    filename: str
    declared_length: int  # the "length" given to files.getUploadURLExternal
    alt_txt: str | None = None
    data: bytes | None = None  # None until POSTed to the upload URL
    title: str | None = None  # set by files.completeUploadExternal
    completed: bool = False
    channels: list[str] = field(default_factory=list)


@dataclass
class PostedMessage:
    channel: str
    ts: str
    user: str
    text: str = ""
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    ephemeral_to: str | None = None  # chat.postEphemeral: the only user who sees it
    method: str = "chat.postMessage"  # the call that created it; "" for add_message()
    edited: bool = False
    metadata: dict[str, Any] | None = None  # chat.postMessage's message metadata (event_type, event_payload)

    def to_slack(self, *, with_metadata: bool = False) -> dict[str, Any]:
        """The message object as Slack puts it in API responses, events and shortcut payloads (metadata only
        where the caller asked for it, as conversations.history's ``include_all_metadata``)."""
        message: dict[str, Any] = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts}
        if with_metadata and self.metadata is not None:
            message["metadata"] = self.metadata
        message["team"] = TEAM_ID
        if self.user == BOT_USER_ID:
            message |= {"bot_id": BOT_ID, "app_id": APP_ID}
        if self.blocks is not None:
            message["blocks"] = self.blocks
        if self.thread_ts is not None:
            message["thread_ts"] = self.thread_ts
        if self.files:
            message |= {"subtype": "file_share", "files": self.files, "upload": True}
        return message


@dataclass(frozen=True)
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None  # what ack(...) sent back, if anything
    at: float


@dataclass
class Envelope:
    """A Socket Mode envelope the fake sent, and the client's acknowledgement."""

    envelope_id: str
    type: str  # "slash_commands" | "events_api" | "interactive"
    payload: dict[str, Any]
    accepts_response_payload: bool
    sent_at: float
    retry_attempt: int = 0
    retry_reason: str = ""
    ack: Ack | None = None
    late: bool = False
    connection: int = 0  # which Socket Mode connection carried it (numbered from 1 in the order they opened)

    @property
    def latency(self) -> float | None:
        return None if self.ack is None else self.ack.at - self.sent_at

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"envelope_id": self.envelope_id, "type": self.type, "payload": self.payload}
        wire["accepts_response_payload"] = self.accepts_response_payload
        if self.type == "events_api":  # Slack sends these on every events_api envelope, 0 and "" the first time
            wire |= {"retry_attempt": self.retry_attempt, "retry_reason": self.retry_reason}
        return wire

    def describe(self) -> str:
        what = self.payload.get("command") or self.payload.get("type") or ""
        if self.type == "events_api":
            what = self.payload.get("event", {}).get("type", "")
        return f"{self.type} envelope {self.envelope_id} ({what})"


@dataclass(frozen=True)
class HttpExchange:
    """An HTTP-mode request the fake (as Slack) POSTed to the app, and what came back in time."""

    body: bytes
    status: int | None  # None: no answer at all (connection error or timeout)
    text: str
    latency: float

    @property
    def payload(self) -> dict[str, Any] | None:
        """The JSON the app answered with (an ack's message), or None for an empty 200."""
        try:
            value = json.loads(self.text) if self.text.strip() else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class ResponsePost:
    response_id: str
    body: Any  # the JSON posted to the response_url
    at: float
    status: int


@dataclass(frozen=True)
class Download:
    file_id: str
    authorized: bool  # False: the fake answered the HTML login page
    at: float


@dataclass
class Channel:
    id: str
    name: str
    is_member: bool = True
    is_private: bool = False
    is_im: bool = False

    def to_slack(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": not (self.is_private or self.is_im),
            "is_group": self.is_private,
            "is_im": self.is_im,
            "is_private": self.is_private or self.is_im,
            "is_member": self.is_member,
            "is_archived": False,
            "created": 1700000000,
            "context_team_id": TEAM_ID,
        }


@dataclass(frozen=True)
class _Failure:
    status: int
    error: str
    retry_after: int | None
    extra: Mapping[str, Any]


@dataclass
class _Trigger:
    issued_at: float
    view_id: str | None = None  # set when the trigger came from an interaction inside a modal
    used: bool = False


@dataclass
class _ResponseUrl:
    issued_at: float
    uses: int = 0


class SlackError(Exception):
    """Raised inside a method handler: becomes ``{"ok": false, "error": error, **extra}``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error, self.extra = error, extra


# --- HTTP mode helpers ---------------------------------------------------------------------------------------


def sign_request(body: bytes, signing_secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with an HTTP-mode request: signature over ``v0:{timestamp}:{body}`` and Content-Type."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    content_type = "application/json" if body.lstrip().startswith(b"{") else "application/x-www-form-urlencoded"
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}", "Content-Type": content_type}


def retry_headers(attempt: int, reason: str = "http_timeout") -> dict[str, str]:
    """The headers of an Events API retry over HTTP."""
    return {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": reason}


def command_body(payload: Mapping[str, str]) -> bytes:
    """A slash command as Slack POSTs it: urlencoded form fields."""
    return urllib.parse.urlencode(payload).encode()


def event_body(payload: Mapping[str, Any]) -> bytes:
    """An Events API callback as Slack POSTs it: JSON."""
    return json.dumps(payload).encode()


def interactive_body(payload: Mapping[str, Any]) -> bytes:
    """Shortcuts, block actions and view submissions as Slack POSTs them: a form with one JSON ``payload`` field."""
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


# --- the fake ------------------------------------------------------------------------------------------------


class FakeSlack(LoopbackServer):
    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        ack_deadline: float = ACK_DEADLINE,
        trigger_ttl: float = TRIGGER_TTL,
        spread: bool = False,
    ) -> None:
        """``spread``: send each envelope on the next open Socket Mode connection in turn, as Slack spreads an app's
        events over its connections (up to 10, e.g. one per process; Slack picks one at random, turn by turn keeps
        tests deterministic); otherwise on the newest connection."""
        self.bot_token, self.app_token = bot_token, app_token
        self.spread = spread
        self._connection_numbers: dict[int, int] = {}  # id(ws) -> its number
        self._connections_opened = itertools.count(1)
        self._turn = itertools.count()
        self.scopes = set(scopes)  # the bot token's scopes; mutable in tests
        self.ack_deadline, self.trigger_ttl = ack_deadline, trigger_ttl
        self.calls: list[SlackCall] = []
        self.uploads: dict[str, UploadedFile] = {}
        self.messages: list[PostedMessage] = []
        self.files: dict[str, dict[str, Any]] = {}  # hosted file objects by id (add_file and completed uploads)
        self.views: dict[str, dict[str, Any]] = {}  # view objects by id, as last opened/updated/pushed
        self.envelopes: dict[str, Envelope] = {}
        self.responses: list[ResponsePost] = []
        self.http_exchanges: list[HttpExchange] = []
        self.downloads: list[Download] = []
        self.errors: list[str] = []
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.port = 0
        self._file_data: dict[str, bytes] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._socket_tickets: set[str] = set()
        self._upload_tickets: dict[str, str] = {}
        self._view_stacks: dict[str, list[str]] = {}  # root view id -> stack of view ids
        self._sockets: list[web.WebSocketResponse] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._changed = asyncio.Event()
        self._counter = itertools.count(1)
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.update": self._update_message,
            "chat.delete": self._delete_message,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "files.info": self._files_info,
            "files.upload": self._files_upload_v1,
            "conversations.info": self._conversations_info,
            "conversations.open": self._conversations_open,
            "users.info": self._users_info,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
        }
        self.app = web.Application(client_max_size=1024**3)
        self.app.router.add_route("*", "/api/{method}", self._api)
        self.app.router.add_post("/upload/v1/{ticket}", self._upload)
        self.app.router.add_get("/files-pri/{team_file}/{tail:.*}", self._download)
        self.app.router.add_post("/response/{id}", self._response_url)
        self.app.router.add_get("/socket", self._socket)
        self.add_channel(CHANNEL_ID, "general")
        self.add_user(USER_ID, "alice")
        self.add_user(BOT_USER_ID, "imagebot", is_bot=True)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def _before_close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for ws in list(self._sockets):
            await ws.close(code=1001)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"  # the trailing slash matters: slack_sdk urljoin()s the method name onto it

    @property
    def connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets)

    @property
    def open_connections(self) -> int:
        """How many Socket Mode connections are open (one per process running Socket Mode)."""
        return sum(not ws.closed for ws in self._sockets)

    # --- set-up ------------------------------------------------------------------------------------------

    def add_channel(
        self, channel_id: str, name: str, *, member: bool = True, private: bool = False, im: bool = False
    ) -> Channel:
        """A channel the fake knows; the bot outside a public one gets ``not_in_channel``, a private one is hidden."""
        self.channels[channel_id] = channel = Channel(channel_id, name, member, private, im)
        return channel

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        is_bot: bool = False,
        is_admin: bool = False,
        is_owner: bool = False,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        profile = {"display_name": name, "real_name": name.title(), "image_48": f"{self.url}/avatars/{user_id}.png"}
        user = {"id": user_id, "team_id": TEAM_ID, "name": name, "real_name": name.title(), "deleted": False}
        roles = {"is_admin": is_admin or is_owner, "is_owner": is_owner, "is_primary_owner": False}  # owners are admins
        extra = {"is_bot": is_bot, "tz": "Europe/London", "profile": profile, "locale": locale}
        self.users[user_id] = user | extra | roles
        return self.users[user_id]

    def add_file(self, data: bytes, name: str, mimetype: str, *, owner: str = USER_ID) -> dict[str, Any]:
        """Host a file a user shared; returns the Slack file object (``url_private`` etc. point at the fake)."""
        return self._host(self._new_id("F"), data, name, name, mimetype, owner)

    def add_message(
        self,
        channel: str,
        text: str = "",
        *,
        user: str = USER_ID,
        files: Iterable[Mapping[str, Any]] = (),
        thread_ts: str | None = None,
    ) -> PostedMessage:
        """A message someone else posted (e.g. the target of a message shortcut); ``.to_slack()`` gives its JSON."""
        message = PostedMessage(
            channel, self._new_ts(), user, text, None, thread_ts, [dict(f) for f in files], method=""
        )
        self._record_message(message)
        return message

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
        **extra: Any,
    ) -> None:
        """The next ``times`` calls of ``method`` (or ``UPLOAD``) answer this error, before any other check."""
        if status == 429 and retry_after is None:
            retry_after = 1
        queue = self._failures.setdefault(method, deque())
        queue.extend(_Failure(status, error, retry_after, extra) for _ in range(times))

    # --- inspection and waiting --------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        return [call for call in self.calls if call.method == method]

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[PostedMessage]:
        """Messages in a channel's main timeline, or (thread_ts given) in that thread."""
        return [m for m in self.messages if m.channel == channel and m.thread_ts == thread_ts]

    def ack_latency(self, envelope_id: str) -> float | None:
        """Seconds from sending the envelope to its ack; None while unacknowledged."""
        return self.envelopes[envelope_id].latency

    def assert_no_errors(self) -> None:
        if self.errors:
            raise AssertionError("the fake Slack saw client mistakes:\n- " + "\n- ".join(self.errors))

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "") -> T:
        """Return the predicate's first truthy value; re-checked on every fake event and at least every 50 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := predicate()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake Slack: nothing after {timeout} s waiting for {what or predicate}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
        return value

    async def wait_for_call(self, method: str, count: int = 1, timeout: float = 5.0) -> SlackCall:
        """The ``count``-th call of ``method`` (waiting for it)."""
        await self.wait_for(lambda: len(self.calls_to(method)) >= count, timeout, f"{count} x {method}")
        return self.calls_to(method)[count - 1]

    async def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        return await self.wait_for(lambda: self.envelopes[envelope_id].ack, timeout, f"ack of {envelope_id}")

    async def settle(self) -> None:
        """Wait until every envelope sent has been acknowledged or is past its deadline (a missing ack is an
        error, as for Slack: the user sees "dispatch_failed" / "operation_timeout")."""
        for envelope in list(self.envelopes.values()):
            remaining = envelope.sent_at + self.ack_deadline - time.monotonic()
            if envelope.ack is None and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await self.wait_for(lambda e=envelope: e.ack, remaining, f"ack of {envelope.envelope_id}")
            if envelope.ack is None and not envelope.late:
                envelope.late = True
                self._error(f"{envelope.describe()} was never acknowledged")

    async def send_http(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> HttpExchange:
        """POST ``body`` (signed, unless ``headers`` are given) to the app's Request URL, as Slack does in HTTP
        mode, and record the answer: anything but a 200 within the ack deadline is an error (a 401 is expected
        only when the test gave its own bad headers)."""
        import aiohttp  # the fake's own client: Slack's side of the connection

        sent = time.monotonic()
        status: int | None = None
        text = ""
        timeout = aiohttp.ClientTimeout(total=self.ack_deadline + 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                async with session.post(url, data=body, headers=dict(headers or sign_request(body))) as resp:
                    status, text = resp.status, await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                pass
        exchange = HttpExchange(body, status, text, time.monotonic() - sent)
        self.http_exchanges.append(exchange)
        if headers is None and (status != 200 or exchange.latency > self.ack_deadline):
            self._error(f"HTTP request to {url} answered {status} after {exchange.latency:.2f} s (not a timely 200)")
        self._notify()
        return exchange

    # --- payload builders (also for HTTP mode) -----------------------------------------------------------

    def new_trigger_id(self, view_id: str | None = None) -> str:
        trigger_id = f"{int(time.time())}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = _Trigger(time.monotonic(), view_id)
        return trigger_id

    def new_response_url(self) -> str:
        response_id = secrets.token_hex(12)
        self._response_urls[response_id] = _ResponseUrl(time.monotonic())
        return f"{self.url}/response/{response_id}"

    def command_payload(
        self, command: str = "/imagine", text: str = "", *, user_id: str = USER_ID, channel_id: str = CHANNEL_ID
    ) -> dict[str, str]:
        """A slash command's fields (all strings), with a fresh trigger_id and response_url."""
        channel = self.channels.get(channel_id)
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": channel.name if channel else "privategroup",
            "user_id": user_id,
            "user_name": self._user_name(user_id),
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": self.new_response_url(),
            "trigger_id": self.new_trigger_id(),
        }

    def event_payload(self, event: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """An ``event_callback`` wrapping ``event`` (same ``event_id`` again = a retry of the same event)."""
        inner = dict(event)
        inner.setdefault("event_ts", inner.get("ts") or self._new_ts())
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "context_team_id": TEAM_ID,
            "context_enterprise_id": None,
            "api_app_id": APP_ID,
            "event": inner,
            "type": "event_callback",
            "event_id": event_id or self._new_id("Ev"),
            "event_time": int(time.time()),
            "authorizations": [
                {"enterprise_id": None, "team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}
                | {"is_enterprise_install": False}
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_hex(20)}",
        }

    def app_mention_event(
        self,
        text: str,
        *,
        user: str = USER_ID,
        channel: str = CHANNEL_ID,
        thread_ts: str | None = None,
        files: Iterable[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        ts = self._new_ts()
        event: dict[str, Any] = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}", "ts": ts}
        event |= {"team": TEAM_ID, "channel": channel, "event_ts": ts}
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if files:
            event["files"] = [dict(f) for f in files]
        return event

    def message_shortcut_payload(
        self, callback_id: str, message: Mapping[str, Any], *, user_id: str = USER_ID, channel_id: str = CHANNEL_ID
    ) -> dict[str, Any]:
        return self._interactive("message_action", user_id, channel_id) | {
            "callback_id": callback_id,
            "action_ts": f"{time.time():.6f}",
            "message_ts": message["ts"],
            "message": dict(message),
            "response_url": self.new_response_url(),
        }

    def block_actions_payload(
        self,
        action_id: str,
        value: str = "",
        *,
        message: Mapping[str, Any] | None = None,
        view_id: str | None = None,
        block_id: str = "actions",
        user_id: str = USER_ID,
        channel_id: str = CHANNEL_ID,
    ) -> dict[str, Any]:
        """A button click on ``message`` (a message object, e.g. ``PostedMessage.to_slack()``) or in open modal."""
        action: dict[str, Any] = {"action_id": action_id, "block_id": block_id, "value": value, "type": "button"}
        action |= {"text": {"type": "plain_text", "text": value or action_id}, "action_ts": f"{time.time():.6f}"}
        in_view = view_id is not None
        payload = self._interactive("block_actions", user_id, None if in_view else channel_id, view_id)
        payload |= {"actions": [action], "state": {"values": {}}}
        if view_id is not None:
            payload |= {"container": {"type": "view", "view_id": view_id}, "view": self.views[view_id]}
        elif message is not None:
            container = {"type": "message", "message_ts": message["ts"], "channel_id": channel_id}
            payload |= {"container": container | {"is_ephemeral": False}, "message": dict(message)}
            payload["response_url"] = self.new_response_url()
        return payload

    def view_submission_payload(
        self, view_id: str, values: Mapping[str, Any], *, user_id: str = USER_ID
    ) -> dict[str, Any]:
        """Submitting an open modal; ``values`` is ``view.state.values`` ({block_id: {action_id: {...}}})."""
        view = self.views[view_id] | {"state": {"values": dict(values)}}
        payload = self._interactive("view_submission", user_id, None, view_id) | {"view": view}
        return payload | {"response_urls": []}

    # --- Socket Mode -------------------------------------------------------------------------------------

    async def send_slash_command(
        self, command: str = "/imagine", text: str = "", *, user_id: str = USER_ID, channel_id: str = CHANNEL_ID
    ) -> Envelope:
        payload = self.command_payload(command, text, user_id=user_id, channel_id=channel_id)
        return await self._send("slash_commands", payload, accepts_response_payload=True)

    async def send_event(
        self, event: Mapping[str, Any], *, event_id: str | None = None, retry_attempt: int = 0, retry_reason: str = ""
    ) -> Envelope:
        """An events_api envelope; a retry is the same ``event_id`` with ``retry_attempt`` >= 1 in a new envelope."""
        payload = self.event_payload(event, event_id=event_id)
        return await self._send("events_api", payload, False, retry_attempt, retry_reason)

    async def send_interactive(self, payload: Mapping[str, Any]) -> Envelope:
        """block_actions, message_action / shortcut, view_submission...; missing common fields are filled in."""
        kind = str(payload.get("type", ""))
        channel_id = None if kind in ("view_submission", "view_closed", "shortcut") else CHANNEL_ID  # no channel there
        full = self._interactive(kind, USER_ID, channel_id) | dict(payload)
        return await self._send("interactive", full, accepts_response_payload=full["type"] == "view_submission")

    async def _send(
        self,
        kind: str,
        payload: dict[str, Any],
        accepts_response_payload: bool,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Envelope:
        await self.wait_for(lambda: self.connected, what="a Socket Mode connection")
        open_sockets = [ws for ws in self._sockets if not ws.closed]
        ws = open_sockets[next(self._turn) % len(open_sockets)] if self.spread else open_sockets[-1]
        sent_at = time.monotonic()
        envelope = Envelope(str(uuid.uuid4()), kind, payload, accepts_response_payload, sent_at)
        envelope.connection = self._connection_numbers[id(ws)]
        envelope.retry_attempt, envelope.retry_reason = retry_attempt, retry_reason
        self.envelopes[envelope.envelope_id] = envelope
        await ws.send_str(json.dumps(envelope.to_wire()))
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.ack_deadline, self._check_ack, envelope))
        return envelope

    def _check_ack(self, envelope: Envelope) -> None:
        if envelope.ack is None:
            envelope.late = True
            self._error(f"{envelope.describe()} was not acknowledged within {self.ack_deadline:.1f} s")

    def _on_ack(self, frame: str) -> None:
        try:
            message = json.loads(frame)
            envelope = self.envelopes[message["envelope_id"]]
        except (ValueError, KeyError, TypeError):
            self._error(f"unexpected Socket Mode frame from the client: {frame[:200]}")
            return
        if envelope.ack is not None:
            self._error(f"{envelope.describe()} was acknowledged twice")
            return
        envelope.ack = Ack(envelope.envelope_id, message.get("payload"), time.monotonic())
        latency = envelope.latency or 0.0
        if latency > self.ack_deadline and not envelope.late:
            envelope.late = True
            self._error(f"{envelope.describe()} was acknowledged after {latency:.2f} s (> {self.ack_deadline} s)")
        self._notify()

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._socket_tickets:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse()  # autoping: answers the SDK's "sdk-ping-pong" pings
        await ws.prepare(request)
        if self.open_connections >= MAX_SOCKET_CONNECTIONS:
            too_many = {"type": "disconnect", "reason": "too_many_websockets"}
            await ws.send_json(too_many | {"debug_info": {"host": "applink-fake"}})
            await ws.close()
            return ws
        self._sockets.append(ws)
        self._connection_numbers[id(ws)] = next(self._connections_opened)
        try:
            hello = {"type": "hello", "num_connections": len(self._sockets), "connection_info": {"app_id": APP_ID}}
            hello["debug_info"] = {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060}
            await ws.send_json(hello)
            self._notify()
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    self._on_ack(frame.data)
        finally:
            self._sockets.remove(ws)
            self._connection_numbers.pop(id(ws), None)
            self._notify()
        return ws

    # --- Web API -----------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        method = request.match_info["method"]
        args = await _read_args(request)
        token = _bearer(request) or str(args.pop("token", "")) or None
        status, headers, body = self._answer(method, args, token)
        self._record(SlackCall(method, args, CIMultiDictProxy(CIMultiDict(request.headers)), at, status, body, headers))
        return web.json_response(body, status=status, headers=headers)

    def _answer(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        headers: dict[str, str] = {}
        failure = self._pop_failure(method)
        if failure is not None:
            headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
            return failure.status, headers, {"ok": False, "error": failure.error, **failure.extra}
        handler = self._methods.get(method)
        if handler is None:
            return 200, headers, {"ok": False, "error": "unknown_method", "req_method": method}
        try:
            self._authorize(method, token)
            if token == self.bot_token:
                headers["x-oauth-scopes"] = ",".join(sorted(self.scopes))  # bolt reads the bot scopes from here
                headers["x-accepted-oauth-scopes"] = _SCOPE_NEEDED.get(method, "")
            body = {"ok": True, **handler(args)}
        except SlackError as exc:
            body = {"ok": False, "error": exc.error, **exc.extra}
        return 200, headers, body

    def _authorize(self, method: str, token: str | None) -> None:
        if not token:
            raise SlackError("not_authed")
        if token not in (self.bot_token, self.app_token):
            raise SlackError("invalid_auth")
        accepted = {"apps.connections.open": {self.app_token}, "auth.test": {self.bot_token, self.app_token}}
        if token not in accepted.get(method, {self.bot_token}):
            raise SlackError("not_allowed_token_type")
        needed = _SCOPE_NEEDED.get(method)
        if token == self.bot_token and needed and needed not in self.scopes:
            raise SlackError("missing_scope", needed=needed, provided=",".join(sorted(self.scopes)))

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Imagebot Test",
            "user": "imagebot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "is_enterprise_install": False,
        }

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._socket_tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}&app_id={APP_ID}"}

    def _post_message(self, args: dict[str, Any], method: str = "chat.postMessage") -> dict[str, Any]:
        channel = self._visible_channel(args.get("channel"))
        if not channel.is_member and "chat:write.public" not in self.scopes:
            raise SlackError("not_in_channel")
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        ephemeral = method == "chat.postEphemeral"
        if ephemeral and args.get("user") not in self.users:
            raise SlackError("user_not_found")
        message = PostedMessage(channel.id, self._new_ts(), BOT_USER_ID, str(args.get("text") or ""), method=method)
        message.blocks, message.thread_ts = args.get("blocks"), args.get("thread_ts") or None
        message.ephemeral_to = str(args["user"]) if ephemeral else None
        if not ephemeral and args.get("metadata") is not None:
            message.metadata = _metadata(args["metadata"])
        self._record_message(message)
        if ephemeral:
            return {"message_ts": message.ts}
        return {"channel": channel.id, "ts": message.ts, "message": message.to_slack()}

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._post_message(args, "chat.postEphemeral")

    def _find_message(self, args: dict[str, Any], refusal: str) -> PostedMessage:
        channel = self._visible_channel(args.get("channel"))
        for message in self.messages:
            if message.channel == channel.id and message.ts == args.get("ts") and message.ephemeral_to is None:
                if message.user != BOT_USER_ID:
                    raise SlackError(refusal)
                return message
        raise SlackError("message_not_found")

    def _update_message(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find_message(args, "cant_update_message")
        if "text" in args:
            message.text = str(args["text"])
        if "blocks" in args:
            message.blocks = args["blocks"]
        message.edited = True
        self._notify()
        return {"channel": message.channel, "ts": message.ts, "text": message.text, "message": message.to_slack()}

    def _delete_message(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find_message(args, "cant_delete_message")
        self.messages.remove(message)
        self._notify()
        return {"channel": message.channel, "ts": message.ts}

    # views: trigger_ids are single use and short-lived; a modal's stack holds at most 3 views

    def _exchange_trigger(self, args: dict[str, Any]) -> _Trigger:
        trigger = self._triggers.get(str(args.get("trigger_id") or args.get("interactivity_pointer") or ""))
        if trigger is None:
            raise SlackError("invalid_trigger_id")
        if trigger.used:
            raise SlackError("exchanged_trigger_id")
        if time.monotonic() - trigger.issued_at > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        trigger.used = True
        return trigger

    def _view_arg(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments")
        if len(json.dumps(view)) > _VIEW_MAX_BYTES:
            raise SlackError("view_too_large")
        return view

    def _store_view(self, view: dict[str, Any], view_id: str, root_id: str, previous: str | None) -> dict[str, Any]:
        stored = {key: view.get(key) for key in ("type", "title", "submit", "close", "blocks")}
        stored |= {key: view.get(key, "") for key in ("private_metadata", "callback_id", "external_id")}
        stored |= {key: bool(view.get(key)) for key in ("clear_on_close", "notify_on_close")}
        stored |= {"id": view_id, "team_id": TEAM_ID, "state": {"values": {}}, "root_view_id": root_id}
        stored |= {"hash": f"{int(time.time())}.{secrets.token_hex(4)}", "previous_view_id": previous}
        stored |= {"app_id": APP_ID, "bot_id": BOT_ID}
        self.views[view_id] = stored
        self._notify()
        return {"view": stored}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._view_arg(args)
        self._exchange_trigger(args)
        view_id = self._new_id("V")
        self._view_stacks[view_id] = [view_id]
        return self._store_view(view, view_id, view_id, None)

    def _views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._view_arg(args)
        trigger = self._exchange_trigger(args)
        if trigger.view_id is None or trigger.view_id not in self.views:
            raise SlackError("not_found")
        root_id = self.views[trigger.view_id]["root_view_id"]
        stack = self._view_stacks[root_id]
        if len(stack) >= _VIEW_STACK_MAX:
            raise SlackError("push_limit_reached")
        view_id = self._new_id("V")
        previous = stack[-1]
        stack.append(view_id)
        return self._store_view(view, view_id, root_id, previous)

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._view_arg(args)
        external_id = args.get("external_id")
        by_external_id = {view["external_id"]: view for view in self.views.values() if view["external_id"]}
        old = self.views.get(str(args.get("view_id"))) or (by_external_id.get(external_id) if external_id else None)
        if old is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != old["hash"]:
            raise SlackError("hash_conflict")
        return self._store_view(view, old["id"], old["root_view_id"], old["previous_view_id"])

    # files: getUploadURLExternal -> POST bytes to upload_url -> completeUploadExternal

    def _get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            length = int(args["length"])
            filename = str(args["filename"])
        except (KeyError, TypeError, ValueError):
            raise SlackError("invalid_arguments") from None
        alt_txt = args.get("alt_txt")
        if alt_txt is not None and len(str(alt_txt)) > 1000:
            raise SlackError("alt_txt_too_large")
        file_id, ticket = self._new_id("F"), secrets.token_urlsafe(24)
        self._upload_tickets[ticket] = file_id
        self.uploads[file_id] = UploadedFile(file_id, filename, length, None if alt_txt is None else str(alt_txt))
        return {"upload_url": f"{self.url}/upload/v1/{ticket}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        file_id = self._upload_tickets.get(request.match_info["ticket"], "")
        data = await _read_upload(request)
        failure = self._pop_failure(UPLOAD)
        if failure is not None:
            status, text = failure.status, failure.error
        elif file_id not in self.uploads:
            status, text = 404, "Not Found"
        else:
            status, text = 200, f"OK - {len(data)}"
            self.uploads[file_id].data = data
        args = {"file_id": file_id, "length": len(data), "content_type": request.content_type}
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        self._record(SlackCall(UPLOAD, args, headers, at, status, {"ok": status == 200, "body": text}))
        return web.Response(status=status, text=text)  # text/plain, as slack_sdk expects from files.slack.com

    def _complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        items = args.get("files")
        if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
            raise SlackError("invalid_arguments")
        channel_ids = [args["channel_id"]] if args.get("channel_id") else str(args.get("channels") or "").split(",")
        channels = [self._upload_channel(channel_id) for channel_id in channel_ids if channel_id]
        uploads = [self._uploaded(str(item.get("id"))) for item in items]
        files = []
        for upload, item in zip(uploads, items, strict=True):
            upload.title = str(item.get("title") or upload.filename)
            upload.completed, upload.channels = True, [channel.id for channel in channels]
            mimetype = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            file = self._host(upload.file_id, upload.data or b"", upload.filename, upload.title, mimetype, BOT_USER_ID)
            if upload.alt_txt is not None:
                file["alt_txt"] = upload.alt_txt
            files.append(file)
        comment = args.get("initial_comment")
        for channel in channels:
            message = PostedMessage(channel.id, self._new_ts(), BOT_USER_ID, str(comment or ""), files=files)
            message.blocks = None if comment else args.get("blocks")  # Slack ignores blocks next to initial_comment
            message.thread_ts, message.method = args.get("thread_ts") or None, "files.completeUploadExternal"
            self._record_message(message)
            for file in files:
                share = {"ts": message.ts, "channel_name": channel.name, "team_id": TEAM_ID}
                share |= {"thread_ts": message.thread_ts} if message.thread_ts else {}
                kind = "private" if channel.is_private or channel.is_im else "public"
                file["shares"].setdefault(kind, {}).setdefault(channel.id, []).append(share)
                file["channels" if kind == "public" else "groups"].append(channel.id)
        # as Slack: only id and title, no message ts (files.info has it later, under "shares")
        return {"files": [{"id": file["id"], "title": file["title"]} for file in files]}

    def _uploaded(self, file_id: str) -> UploadedFile:
        upload = self.uploads.get(file_id)
        if upload is None or upload.data is None or upload.completed:
            raise SlackError("file_not_found")
        if len(upload.data) != upload.declared_length:
            problem = f"{file_id}: uploaded {len(upload.data)} bytes but declared length {upload.declared_length}"
            self._error(f"files.completeUploadExternal: {problem}")
            raise SlackError("file_not_found", response_metadata={"messages": [f"[ERROR] {problem}"]})
        return upload

    def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        file = self.files.get(str(args.get("file")))
        if file is None:
            raise SlackError("file_not_found")
        return {"file": file, "comments": [], "response_metadata": {"next_cursor": ""}}

    def _files_upload_v1(self, args: dict[str, Any]) -> dict[str, Any]:
        raise SlackError("method_deprecated")  # sunset on 2025-11-12: use files_upload_v2

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"channel": self._visible_channel(args.get("channel")).to_slack()}

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        """A channel's main timeline (thread replies excluded), newest first, from ``oldest`` on."""
        channel = self._readable_channel(args.get("channel"))
        found = [m for m in self.messages if m.channel == channel.id and m.ephemeral_to is None]
        found = [m for m in found if m.thread_ts is None or m.thread_ts == m.ts]
        return self._page(found, args, newest_first=True)

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """A thread: its parent first, then the replies, oldest first."""
        channel = self._readable_channel(args.get("channel"))
        ts = str(args.get("ts") or "")
        if not ts:
            raise SlackError("invalid_arguments")
        found = [m for m in self.messages if m.channel == channel.id and m.ephemeral_to is None]
        thread = [m for m in found if m.ts == ts or m.thread_ts == ts]
        if not thread and not any(m.ts == ts for m in found):
            raise SlackError("thread_not_found")
        return self._page(thread, args, newest_first=False)

    def _page(self, found: list[PostedMessage], args: dict[str, Any], *, newest_first: bool) -> dict[str, Any]:
        try:
            limit = int(args.get("limit") or 100)
            oldest = float(args.get("oldest") or 0)
        except (TypeError, ValueError):
            raise SlackError("invalid_arguments") from None
        if not 0 < limit <= _HISTORY_MAX:
            raise SlackError("invalid_limit")
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        found = sorted((m for m in found if float(m.ts) >= oldest), key=lambda m: float(m.ts), reverse=newest_first)
        messages = [m.to_slack(with_metadata=with_metadata) for m in found[:limit]]
        return {"messages": messages, "has_more": len(found) > limit, "response_metadata": {"next_cursor": ""}}

    def _readable_channel(self, channel_id: object) -> Channel:
        channel = self._visible_channel(channel_id)
        if not channel.is_member and not channel.is_im:
            raise SlackError("not_in_channel")
        return channel

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        """The bot's DM with one user (``users``: a single user id here), created on first use."""
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if len(users) != 1:
            raise SlackError("invalid_arguments" if not users else "not_implemented")
        if users[0] not in self.users:
            raise SlackError("user_not_found")
        channel_id = "D" + users[0][1:]
        if channel_id not in self.channels:
            self.add_channel(channel_id, users[0], im=True)
        return {"channel": {"id": channel_id}}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user")))
        if user is None:
            raise SlackError("user_not_found")
        if str(args.get("include_locale")).lower() not in ("true", "1"):  # Slack's locale is opt-in
            user = {key: value for key, value in user.items() if key != "locale"}
        return {"user": user}

    # --- url_private and response_url ----------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["team_file"].partition("-")[2]
        authorized = _bearer(request) == self.bot_token and "files:read" in self.scopes
        self.downloads.append(Download(file_id, authorized, time.monotonic()))
        self._notify()
        if not authorized:  # what real Slack does: a sign-in page, status 200
            return web.Response(text=LOGIN_PAGE, content_type="text/html")
        if file_id not in self._file_data:
            return web.Response(status=404, text="Not Found")
        file = self.files[file_id]
        headers = {"Content-Disposition": f'attachment; filename="{file["name"]}"'}
        return web.Response(body=self._file_data[file_id], content_type=file["mimetype"], headers=headers)

    async def _response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        state = self._response_urls.get(response_id)
        if state is None:
            status, text = 404, "invalid_url"
        elif time.monotonic() - state.issued_at > RESPONSE_URL_TTL:
            status, text = 404, "expired_url"
        elif state.uses >= RESPONSE_URL_USES:
            status, text = 404, "used_url"
        else:
            state.uses += 1
            status, text = 200, "ok"
        if status != 200:
            self._error(f"response_url {response_id}: {text}")
        self.responses.append(ResponsePost(response_id, body, time.monotonic(), status))
        self._notify()
        return web.Response(status=status, text=text)

    # --- plumbing --------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, call: SlackCall) -> None:
        self.calls.append(call)
        self._notify()

    def _record_message(self, message: PostedMessage) -> None:
        self.messages.append(message)
        self._notify()

    def _error(self, problem: str) -> None:
        self.errors.append(problem)
        self._notify()

    def _pop_failure(self, method: str) -> _Failure | None:
        queue = self._failures.get(method)
        return queue.popleft() if queue else None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter):09d}"

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._counter):06d}"

    def _user_name(self, user_id: str) -> str:
        return str(self.users.get(user_id, {}).get("name", user_id.lower()))

    def _visible_channel(self, channel_id: object) -> Channel:
        channel = self.channels.get(str(channel_id or ""))
        if channel is None or (channel.is_private and not channel.is_member):
            raise SlackError("channel_not_found")
        return channel

    def _upload_channel(self, channel_id: str) -> Channel:
        channel = self._visible_channel(channel_id)
        if not channel.is_member:
            raise SlackError("not_in_channel")
        return channel

    def _interactive(
        self, kind: str, user_id: str, channel_id: str | None, view_id: str | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"type": kind, "token": VERIFICATION_TOKEN, "api_app_id": APP_ID}
        payload["team"] = {"id": TEAM_ID, "domain": TEAM_DOMAIN}
        payload["user"] = {"id": user_id, "username": self._user_name(user_id), "team_id": TEAM_ID}
        payload |= {"is_enterprise_install": False, "enterprise": None, "trigger_id": self.new_trigger_id(view_id)}
        if channel_id is not None:
            channel = self.channels.get(channel_id)
            payload["channel"] = {"id": channel_id, "name": channel.name if channel else "privategroup"}
        return payload

    def _host(self, file_id: str, data: bytes, name: str, title: str, mimetype: str, owner: str) -> dict[str, Any]:
        now, quoted = int(time.time()), urllib.parse.quote(name)
        base = f"{self.url}/files-pri/{TEAM_ID}-{file_id}"
        filetype = name.rpartition(".")[2].lower() if "." in name else "binary"
        file: dict[str, Any] = {"id": file_id, "created": now, "timestamp": now, "name": name, "title": title}
        file |= {"mimetype": mimetype, "filetype": filetype, "pretty_type": filetype.upper(), "user": owner}
        file |= {"user_team": TEAM_ID, "editable": False, "size": len(data), "mode": "hosted", "is_external": False}
        file |= {"external_type": "", "is_public": False, "public_url_shared": False, "display_as_bot": False}
        file |= {"url_private": f"{base}/{quoted}", "url_private_download": f"{base}/download/{quoted}"}
        file |= {"permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{owner}/{file_id}/{quoted}"}
        file |= {"channels": [], "groups": [], "ims": [], "shares": {}, "has_rich_preview": False}
        file["file_access"] = "visible"
        if mimetype.startswith("image/"):
            with contextlib.suppress(Exception):
                file["original_w"], file["original_h"] = Image.open(io.BytesIO(data)).size
        self.files[file_id], self._file_data[file_id] = file, data
        return file


def _metadata(value: object) -> dict[str, Any]:
    """Message metadata as chat.postMessage accepts it: an event_type and an object payload."""
    if not isinstance(value, dict) or not isinstance(value.get("event_type"), str):
        raise SlackError("invalid_metadata_format")
    if not isinstance(value.get("event_payload", {}), dict):
        raise SlackError("invalid_metadata_format")
    return {"event_type": value["event_type"], "event_payload": dict(value.get("event_payload") or {})}


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _read_args(request: web.Request) -> dict[str, Any]:
    """Query string, then the body (JSON, urlencoded or multipart form) on top, like Slack merges them."""
    args: dict[str, Any] = {key: request.query.getone(key) for key in request.query}
    if request.content_type == "application/json":
        raw = await request.read()
        body = json.loads(raw) if raw.strip() else {}
        if isinstance(body, dict):
            args.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key in form:
            value = form.getone(key)
            args[key] = value.file.read() if isinstance(value, web.FileField) else value
    for key in _JSON_ARGS:
        if isinstance(args.get(key), str):
            with contextlib.suppress(ValueError):
                args[key] = json.loads(args[key])
    return args


async def _read_upload(request: web.Request) -> bytes:
    """The raw body, or the first file (else first field) of a multipart body."""
    if request.content_type != "multipart/form-data":
        return await request.read()
    reader = await request.multipart()
    first: bytes | None = None
    async for part in reader:
        if isinstance(part, BodyPartReader):
            data = await part.read()
            if part.filename is not None:
                return bytes(data)
            first = bytes(data) if first is None else first
    return first or b""
