"""A fake Discord (REST API v10 + gateway websocket + attachment CDN) on 127.0.0.1 for the real discord.py client.

    async with FakeDiscord() as fake, running_client(client, fake):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"})
        assert (await fake.next_callback(inter.id)).type == 5        # deferred within 3 s
        sent = await fake.next_webhook_message(inter.id)             # PATCH .../messages/@original
        assert sent.files[0].data.startswith(b"\\x89PNG")
        fake.assert_no_errors()                                      # late/duplicate acks, dead tokens...

Wire facts checked against discord.py 2.7.1: JSON answers need ``Content-Type: application/json`` exactly;
``POST /interactions/{id}/{token}/callback?with_response=1`` must answer ``{"interaction": {...}}``; the gateway
may send plain JSON text frames whatever ``compress`` the client asked for (it only inflates binary frames).
The fake enforces what discord.py does not: the 3 s initial-response deadline, one initial response per
interaction, webhook use only after it, and the Message Content intent on MESSAGE_CREATE.

Sharding as Discord does it: IDENTIFY's ``shard: [id, num_shards]`` picks the session's guilds (READY,
GUILD_CREATE) and events: a guild's go only to the session whose id is ``(guild_id >> 22) % num_shards``, DMs
to shard 0 (``FakeInteraction.shard`` records where each went). A bad shard closes with 4010, a session with more
than ``max_guilds_per_session`` guilds with 4011, and an IDENTIFY sooner than ``identify_window`` (5 s) after
another in its rate-limit bucket (``shard_id % max_concurrency``, from /gateway/bot) gets op 9 and is an error.
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
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar, Unpack

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from PIL import Image

from tests.fakes.loopback import LoopbackServer

T = TypeVar("T")
Json = dict[str, Any]

APP_ID = BOT_ID = "1185000000000000001"  # a bot user shares its application's id
GUILD_ID = "1185000000000000100"
CHANNEL_ID = "1185000000000000200"
USER_ID = "1185000000000000300"
ARTIST_ROLE_ID = "1185000000000000500"  # a role of the default guild (for role allow-lists)
TOKEN = "MTE4NTAwMDAwMDAwMDAwMDAwMQ.GfAkE0.not-a-real-discord-bot-token"
FILE_LIMIT = 10 * 1024 * 1024  # default per-file upload limit (2025-01-16)
REQUEST_LIMIT = 25 * 1024 * 1024
ACK_DEADLINE = 3.0
NONCE_WINDOW = 5 * 60.0  # Discord drops a repeat of an enforced nonce from the same author for a few minutes
TOKEN_LIFETIME = 15 * 60.0
IDENTIFY_WINDOW = 5.0  # seconds: max_concurrency IDENTIFYs per rate-limit bucket per window
MAX_GUILDS_PER_SESSION = 2500  # more than this on one session: close 4011 (sharding required)
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT
# VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY, ADD_REACTIONS, USE_APPLICATION_COMMANDS
BOT_PERMISSIONS = str((1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6) | (1 << 31))
MEMBER_PERMISSIONS = str(int(BOT_PERMISSIONS) | (1 << 38))
_DISCORD_EPOCH_MS = 1_420_070_400_000
_MESSAGE_TYPE = {1: 20, 2: 23, 3: 23}  # command type -> message type (CHAT_INPUT_COMMAND / CONTEXT_MENU_COMMAND)
_OPTION_TYPE = {bool: 5, int: 4, float: 10}  # else 3 (string)
_USER_NULLS = ("avatar", "avatar_decoration_data", "banner", "accent_color", "collectibles", "primary_guild")
_MEMBER_NULLS = ("nick", "avatar", "banner", "premium_since", "communication_disabled_until")
_CHANNEL_NULLS = ("parent_id", "topic", "last_message_id")
_GUILD_LISTS: tuple[str, ...] = ("features", "threads", "presences", "voice_states", "emojis", "stickers")
_GUILD_LISTS += ("stage_instances", "guild_scheduled_events", "soundboard_sounds")
_MESSAGE_LISTS = ("mentions", "mention_roles", "attachments", "embeds", "components")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def make_user(user_id: str = USER_ID, username: str = "ada", *, bot: bool = False) -> Json:
    user: Json = {"id": user_id, "username": username, "global_name": None if bot else username.title()}
    user |= {"discriminator": "4821" if bot else "0", "public_flags": 0, "flags": 0} | dict.fromkeys(_USER_NULLS)
    return user | ({"bot": True} if bot else {})


def make_member(user: Json, *, permissions: str | None = None, roles: Sequence[str] = ()) -> Json:
    member: Json = {"user": user, "roles": list(roles), "joined_at": "2025-06-01T12:00:00.000000+00:00", "flags": 0}
    member |= {"deaf": False, "mute": False, "pending": False} | dict.fromkeys(_MEMBER_NULLS)
    return member | ({"permissions": permissions} if permissions is not None else {})


def make_text_channel(channel_id: str = CHANNEL_ID, guild_id: str = GUILD_ID, name: str = "general") -> Json:
    channel: Json = {"id": channel_id, "type": 0, "guild_id": guild_id, "name": name, "position": 0, "flags": 0}
    return (
        channel | {"nsfw": False, "rate_limit_per_user": 0, "permission_overwrites": []} | dict.fromkeys(_CHANNEL_NULLS)
    )


def make_guild(guild_id: str = GUILD_ID, channels: Sequence[Json] | None = None, members: Sequence[Json] = ()) -> Json:
    """A GUILD_CREATE payload: @everyone role, text channels, the bot's member (plus ``members``)."""
    guild: Json = {"id": guild_id, "name": "Fake Guild", "owner_id": USER_ID, "unavailable": False, "large": False}
    guild |= {"member_count": 2 + len(members), "joined_at": "2025-06-01T12:00:00.000000+00:00"}
    guild |= {"preferred_locale": "en-US", "premium_tier": 0, "icon": None, "system_channel_id": None}
    guild |= {key: [] for key in _GUILD_LISTS}
    guild["roles"] = [{"id": guild_id, "name": "@everyone", "permissions": MEMBER_PERMISSIONS, "position": 0}]
    guild["roles"].append({"id": ARTIST_ROLE_ID, "name": "artists", "permissions": "0", "position": 1})
    guild["channels"] = list(channels) if channels is not None else [make_text_channel(guild_id=guild_id)]
    guild["members"] = [make_member(make_user(BOT_ID, "imagebot", bot=True)), *members]
    return guild


DISCORD_LOCALES = frozenset(locale.value for locale in discord.Locale)


def _valid_name(name: object, *, slash: bool) -> bool:
    """``^[-_\\p{L}\\p{N}]{1,32}$``, lowercase, for slash commands and options; 1-32 characters for menus."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        return False
    return not slash or (name == name.lower() and all(c in "-_" or unicodedata.category(c)[0] in "LN" for c in name))


def _localisation_problems(spec: Mapping[str, Any], *, slash: bool | None = None) -> Iterator[str]:
    """What Discord refuses in a command's (or option's, or choice's) localisations."""
    slash = spec.get("type", 1) != 3 if slash is None else slash  # message menus may have spaces and capitals
    for key, limit in (("name_localizations", 32), ("description_localizations", 100)):
        for locale, text in (spec.get(key) or {}).items():
            if locale not in DISCORD_LOCALES:
                yield f"{spec.get('name')}: unknown locale {locale!r}"
            elif key == "name_localizations" and not _valid_name(text, slash=slash):
                yield f"{spec.get('name')}: invalid {locale} name {text!r}"
            elif not isinstance(text, str) or not 1 <= len(text) <= limit:
                yield f"{spec.get('name')}: {locale} {key} outside 1-{limit} characters"
    for option in spec.get("options") or []:
        yield from _localisation_problems(option, slash=True)
        for choice in option.get("choices") or []:
            for locale, text in (choice.get("name_localizations") or {}).items():
                if locale not in DISCORD_LOCALES or not isinstance(text, str) or not 1 <= len(text) <= 100:
                    yield f"choice {choice.get('name')}: bad {locale} name"


def _error(status: int, message: str, code: int = 0, errors: Json | None = None) -> web.Response:
    body: Json = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return _json(body, status)


def _json(body: Any, status: int = 200) -> web.Response:
    # exactly "application/json": discord.py treats "...; charset=utf-8" as text (json_response adds it)
    return web.Response(status=status, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def _form_error(path: str, code: str, message: str) -> web.Response:
    errors: Json = {}
    node = errors
    for part in path.split("."):
        node = node.setdefault(part, {})
    node["_errors"] = [{"code": code, "message": message}]
    return _error(400, "Invalid Form Body", 50035, errors)


UNKNOWN_INTERACTION = (404, "Unknown interaction", 10062)
ALREADY_ACKNOWLEDGED = (400, "Interaction has already been acknowledged.", 40060)
UNKNOWN_WEBHOOK = (404, "Unknown Webhook", 10015)
INVALID_WEBHOOK_TOKEN = (401, "Invalid Webhook Token", 50027)
UNKNOWN_MESSAGE = (404, "Unknown Message", 10008)
UNKNOWN_CHANNEL = (404, "Unknown Channel", 10003)


@dataclass(frozen=True)
class SentFile:
    index: int  # n of the multipart field files[n]
    filename: str
    content_type: str  # the part's header as sent (discord.py always says application/octet-stream)
    data: bytes


@dataclass
class SentMessage:
    """A message the bot created or edited, as it came over the wire, plus the message object the fake answered."""

    kind: str  # "callback" (type 4/7), "original" (edit @original), "followup", "webhook_edit", "channel"
    method: str
    path: str
    payload: Json  # the JSON body or payload_json (for callbacks: the callback's "data")
    files: list[SentFile]
    at: float  # time.monotonic() on arrival
    message: Json
    interaction_id: str | None = None

    @property
    def message_id(self) -> str:
        return str(self.message["id"])

    @property
    def content(self) -> str | None:
        return self.payload.get("content")

    @property
    def embeds(self) -> list[Json]:
        return list(self.payload.get("embeds") or [])

    @property
    def components(self) -> list[Json]:
        return list(self.payload.get("components") or [])

    @property
    def attachments(self) -> list[Json]:
        """The ``attachments`` metadata as sent: ``{"id": n, "filename", "description"?}`` per file (n = files[n])."""
        return list(self.payload.get("attachments") or [])

    @property
    def alt_texts(self) -> dict[str, str | None]:
        return {a["filename"]: a.get("description") for a in self.attachments if "filename" in a}

    def file(self, filename: str) -> SentFile:
        return next(f for f in self.files if f.filename == filename)


@dataclass
class Callback:
    interaction_id: str
    type: int  # 4 message, 5 deferred message, 6 deferred update, 7 update, 9 modal
    data: Json
    files: list[SentFile]
    at: float
    latency: float  # seconds since the INTERACTION_CREATE was sent
    status: int  # what the fake answered: 200, or 404 (late) / 400 (second response)
    with_response: bool


@dataclass
class FakeInteraction:
    id: str
    token: str
    type: int  # 2 application command, 3 component, 5 modal submit
    payload: Json  # the INTERACTION_CREATE "d" exactly as sent
    dispatched_at: float
    expect_ack: bool = True
    callbacks: list[Callback] = field(default_factory=list)
    original_message_id: str | None = None
    shard: int | None = None  # the gateway shard it was sent on

    @property
    def acked(self) -> bool:
        return any(c.status == 200 for c in self.callbacks)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    at: float
    status: int = 0


class InteractionContext(TypedDict, total=False):
    """Where and by whom an interaction happens (defaults: ``fake.user`` in the default guild channel)."""

    user: Json
    dm: bool
    guild_id: str
    channel_id: str
    locale: str
    attachment_size_limit: int
    app_permissions: str
    message: Json  # the message a component / modal-from-component interaction belongs to
    roles: list[str]  # the member's role ids (in a guild)
    member_permissions: str  # the member's resolved permissions in the channel (default MEMBER_PERMISSIONS)
    expect_ack: bool  # False: never being acknowledged is not an error


@dataclass
class _CdnFile:
    data: bytes
    content_type: str
    signature: str
    expires: int
    served: int | None = None  # serve this many bytes instead of ``data`` (streamed, no Content-Length)
    redirect: str | None = None  # answer 302 to this URL instead
    sent: int = 0  # body bytes written so far


@dataclass
class _GatewaySession:
    ws: web.WebSocketResponse
    query: dict[str, str]
    seq: int = 0
    identified: bool = False
    shard: tuple[int, int] = (0, 1)  # [shard_id, num_shards] as identified; an unsharded session is [0, 1]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self.lock:
            s = None
            if op == 0:
                self.seq += 1
                s = self.seq
            await self.ws.send_str(json.dumps({"op": op, "d": d, "s": s, "t": t}))


def _shard_of(value: Any) -> tuple[int, int] | None:
    """A valid IDENTIFY ``shard`` ([shard_id, num_shards], 0 <= id < num_shards) as a tuple, else None."""
    if not isinstance(value, list) or len(value) != 2 or not all(type(v) is int for v in value):
        return None
    shard_id, count = value
    return (shard_id, count) if 0 <= shard_id < count else None


def _walk_components(components: Sequence[Json]) -> Iterator[Json]:
    for comp in components:
        yield comp
        yield from _walk_components(comp.get("components") or [])
        for key in ("component", "accessory"):
            if isinstance(comp.get(key), dict):
                yield from _walk_components([comp[key]])


def _sniff(data: bytes, filename: str) -> tuple[str, int | None, int | None]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = Image.MIME.get(img.format or "", "application/octet-stream")
            return mime, img.width, img.height
    except Exception:
        return mimetypes.guess_type(filename)[0] or "application/octet-stream", None, None


class FakeDiscord(LoopbackServer):
    """Discord for one bot: REST under /api/v10, the gateway at ws://127.0.0.1:PORT/, a CDN under /attachments."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        guilds: Sequence[Json] | None = None,
        commands: Sequence[Json] = (),
        ack_deadline: float = ACK_DEADLINE,
        token_lifetime: float = TOKEN_LIFETIME,
        heartbeat_interval_ms: int = 41_250,
        allowed_intents: int | None = None,
        application_flags: int = 0,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        identify_window: float = IDENTIFY_WINDOW,
        max_guilds_per_session: int = MAX_GUILDS_PER_SESSION,
    ) -> None:
        self.token = token
        self.bot_user = make_user(BOT_ID, "imagebot", bot=True)
        self.user = make_user()
        self.guilds = list(guilds) if guilds is not None else [make_guild()]
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allowed_intents = allowed_intents  # privileged intents enabled in the portal; None: all
        self.application_flags = application_flags
        self.commands: list[Json] = [self._command(c) for c in commands]  # GET .../commands answers these
        self.guild_commands: dict[str, list[Json]] = {}
        self.command_puts: list[tuple[str | None, list[Json]]] = []  # (guild_id or None, payload) per PUT
        self.identify: Json | None = None  # the IDENTIFY "d" (token included)
        self.identifies: list[tuple[float, Json]] = []  # (time.monotonic(), IDENTIFY "d") of every IDENTIFY
        self.recommended_shards = recommended_shards  # GET /gateway/bot "shards"
        self.max_concurrency = max_concurrency  # session_start_limit.max_concurrency
        self.identify_window = identify_window
        self.max_guilds_per_session = max_guilds_per_session
        self._bucket_started: dict[int, list[float]] = {}  # rate-limit key -> recent session starts
        self._session_shards: dict[str, tuple[int, int]] = {}  # session_id -> shard (RESUME keeps the shard)
        self.gateway_query: dict[str, str] = {}  # v, encoding, compress asked by the client
        self.heartbeats = 0
        self.interactions: dict[str, FakeInteraction] = {}
        self.callbacks: list[Callback] = []
        self.sent: list[SentMessage] = []
        self.messages: dict[str, Json] = {}  # every message object the fake knows, by id
        self.dm_channels: dict[str, Json] = {}  # DM channels seen in dispatched events, by id
        self.requests: list[RecordedRequest] = []
        self.nonce_window = NONCE_WINDOW
        self.deduplicated: list[SentMessage] = []  # channel posts Discord dropped as repeats of a nonce
        self._nonces: dict[tuple[str, str], tuple[float, str]] = {}  # (channel, nonce) -> (when, message id)
        self.errors: list[str] = []
        self._cdn: dict[str, _CdnFile] = {}
        self._cdn_key = secrets.token_bytes(16)
        self._command_ids: dict[tuple[str, int], str] = {}
        self._consumed: set[int] = set()
        self._sessions: list[_GatewaySession] = []
        self._tick = asyncio.Event()  # set and replaced on every change: wakes all waiters
        self._last_snowflake = 0
        self._counter = itertools.count()
        self.port = 0
        self.app = web.Application(client_max_size=64 * 1024**2, middlewares=[self._middleware])
        api = "/api/v10"
        routes = self.app.router
        routes.add_get("/", self._gateway)
        routes.add_get(f"{api}/users/@me", self._users_me)
        routes.add_get(f"{api}/oauth2/applications/@me", self._application)
        routes.add_get(f"{api}/gateway", self._gateway_info)
        routes.add_get(f"{api}/gateway/bot", self._gateway_info)
        routes.add_route("*", api + "/applications/{app}/commands", self._commands_route)
        routes.add_route("*", api + "/applications/{app}/guilds/{guild}/commands", self._commands_route)
        routes.add_post(api + "/interactions/{interaction}/{token}/callback", self._callback)
        routes.add_post(api + "/webhooks/{app}/{token}", self._followup)
        routes.add_route("*", api + "/webhooks/{app}/{token}/messages/{message}", self._webhook_message)
        routes.add_post(api + "/channels/{channel}/messages", self._channel_post)
        routes.add_get(api + "/channels/{channel}/messages", self._channel_list)
        routes.add_get(api + "/channels/{channel}/messages/{message}", self._channel_get)
        routes.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn_get)
        routes.add_route("*", "/{tail:.*}", self._not_found)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def _before_close(self) -> None:
        for session in list(self._sessions):
            await session.ws.close(code=1001)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def application_info(self) -> Json:
        info: Json = {"id": APP_ID, "name": "imagebot", "description": "", "icon": None, "team": None}
        info |= {"bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64, "owner": self.user}
        return info | {"flags": self.application_flags, "bot": self.bot_user, "integration_types_config": {"0": {}}}

    # --- assertions and waiting -----------------------------------------------------------------------------

    def ack_latency(self, interaction_id: str | int) -> float | None:
        """Seconds from dispatch to the first callback (whatever it answered), None while unacknowledged."""
        inter = self.interactions[str(interaction_id)]
        return inter.callbacks[0].latency if inter.callbacks else None

    def assert_no_errors(self) -> None:
        """Raise if the bot broke a platform rule (late, duplicate or missing ack, dead token, unknown route...)."""
        now = time.monotonic()
        missing = [
            f"interaction {i.id} was never acknowledged (deadline {self.ack_deadline} s)"
            for i in self.interactions.values()
            if i.expect_ack and not i.callbacks and now - i.dispatched_at > self.ack_deadline
        ]
        if self.errors or missing:
            raise AssertionError("fake Discord saw protocol errors:\n  " + "\n  ".join([*self.errors, *missing]))

    def report(self, error: object) -> None:
        """Record a failure seen elsewhere (e.g. in the bot's ``on_error``): waits stop at once, asserts fail."""
        self.errors.append(f"reported: {error!r}")
        self._notify()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "a condition") -> T:
        """Wait until ``predicate()`` is truthy (re-checked after every request the fake records) and return it.

        Fails at once if a new error is recorded meanwhile (a protocol error or a ``report``), else after ``timeout``.
        """
        known = len(self.errors)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick
                    if result := predicate():
                        return result
                    if len(self.errors) > known:
                        raise AssertionError(f"while waiting for {what}: {self.errors[known:]}")
                    await tick.wait()
        except TimeoutError:
            recent = [(r.method, r.path, r.status) for r in self.requests[-10:]]
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; requests={recent}") from None

    async def next_callback(self, interaction_id: str | int, timeout: float = 5.0) -> Callback:
        """The first callback for this interaction not yet returned by this method."""
        iid = str(interaction_id)

        def find() -> Callback | None:
            return next((c for c in self.callbacks if c.interaction_id == iid and id(c) not in self._consumed), None)

        found = await self.wait_for(find, timeout, f"a callback for interaction {iid}")
        self._consumed.add(id(found))
        return found

    async def next_message(
        self,
        interaction_id: str | int | None = None,
        *,
        kinds: Sequence[str] = ("callback", "original", "followup", "webhook_edit", "channel"),
        channel_id: str | int | None = None,
        timeout: float = 5.0,
    ) -> SentMessage:
        """The first message write (create or edit) matching the filters that this method has not returned yet."""

        def find() -> SentMessage | None:
            for sent in self.sent:
                if id(sent) in self._consumed or sent.kind not in kinds:
                    continue
                if interaction_id is not None and sent.interaction_id != str(interaction_id):
                    continue
                if channel_id is not None and str(sent.message.get("channel_id")) != str(channel_id):
                    continue
                return sent
            return None

        found = await self.wait_for(find, timeout, f"a message ({', '.join(kinds)}) for {interaction_id}")
        self._consumed.add(id(found))
        return found

    async def next_webhook_message(self, interaction_id: str | int | None = None, timeout: float = 5.0) -> SentMessage:
        """The next edit of @original, followup or webhook-message edit (not callbacks or channel posts)."""
        kinds = ("original", "followup", "webhook_edit")
        return await self.next_message(interaction_id, kinds=kinds, timeout=timeout)

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    # --- ids, attachments, messages ---------------------------------------------------------------------------

    def snowflake(self) -> str:
        value = ((int(time.time() * 1000) - _DISCORD_EPOCH_MS) << 22) | (next(self._counter) % 4096)
        self._last_snowflake = max(value, self._last_snowflake + 1)
        return str(self._last_snowflake)

    def add_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        channel_id: str = CHANNEL_ID,
        description: str | None = None,
    ) -> Json:
        """Serve ``data`` on the fake CDN; return the attachment object Discord would send (signed url, size...)."""
        attachment_id = self.snowflake()
        sniffed, width, height = _sniff(data, filename)
        content_type = content_type or sniffed
        issued = int(time.time())
        expires = issued + 24 * 3600
        path = f"/attachments/{channel_id}/{attachment_id}/{filename}"
        signature = hmac.new(self._cdn_key, f"{path}|{expires:x}|{issued:x}".encode(), hashlib.sha256).hexdigest()
        self._cdn[attachment_id] = _CdnFile(data, content_type, signature, expires)
        url = f"{self.url}{path}?ex={expires:x}&is={issued:x}&hm={signature}&"
        attachment: Json = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }
        if width is not None:
            attachment |= {"width": width, "height": height, "placeholder": "", "placeholder_version": 1}
        if description is not None:
            attachment["description"] = description
        return attachment

    def serve_instead(self, attachment: Json, *, size: int | None = None, redirect: str | None = None) -> None:
        """Make the CDN stream ``size`` bytes for this attachment whatever it declared, or redirect elsewhere."""
        stored = self._cdn[str(attachment["id"])]
        stored.served, stored.redirect = size, redirect

    def cdn_bytes_sent(self, attachment: Json) -> int:
        """How many body bytes the CDN has written for this attachment."""
        return self._cdn[str(attachment["id"])].sent

    def expire_attachment(self, attachment: Json) -> None:
        """Make the CDN answer this attachment's signed URL like an expired one."""
        self._cdn[str(attachment["id"])].expires = 0

    def user_message(
        self,
        content: str = "",
        *,
        attachments: Sequence[Json] = (),
        author: Json | None = None,
        channel_id: str = CHANNEL_ID,
        guild_id: str | None = GUILD_ID,
        mentions: Sequence[Json] = (),
        reply_to: Json | None = None,
        roles: Sequence[str] = (),
    ) -> Json:
        """A message posted by a user (stored, not dispatched); ``reply_to`` makes it a reply (type 19)."""
        author = author or self.user
        message = self._message(channel_id, author, content, guild_id=guild_id)
        message |= {"attachments": list(attachments), "mentions": [dict(u) for u in mentions]}
        if guild_id is not None:
            message["member"] = {k: v for k, v in make_member(author, roles=roles).items() if k != "user"}
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {"type": 0, "message_id": reply_to["id"], "channel_id": channel_id}
            if guild_id is not None:
                message["message_reference"]["guild_id"] = guild_id
            message["referenced_message"] = reply_to
        self.messages[message["id"]] = message
        return message

    def _message(self, channel_id: str, author: Json, content: str, *, guild_id: str | None = None) -> Json:
        message: Json = {"id": self.snowflake(), "type": 0, "channel_id": channel_id, "author": author}
        message |= {"content": content, "timestamp": _now_iso(), "edited_timestamp": None, "flags": 0}
        message |= {"tts": False, "mention_everyone": False, "pinned": False} | {key: [] for key in _MESSAGE_LISTS}
        return message | ({"guild_id": guild_id} if guild_id is not None else {})

    def _bot_message(self, channel_id: str, inter: FakeInteraction | None, flags: int = 0) -> Json:
        guild_id = None if inter is None else inter.payload.get("guild_id")
        message = self._message(channel_id, self.bot_user, "", guild_id=guild_id) | {"flags": flags}
        if inter is not None:
            message |= {"webhook_id": APP_ID, "application_id": APP_ID}
            user = inter.payload.get("member", {}).get("user") or inter.payload.get("user")
            metadata: Json = {"id": inter.id, "type": inter.type, "user": user}
            metadata["authorizing_integration_owners"] = inter.payload["authorizing_integration_owners"]
            if inter.type == 2:
                message["type"] = _MESSAGE_TYPE.get(inter.payload["data"].get("type", 1), 20)
                metadata["name"] = inter.payload["data"]["name"]
                metadata["command_type"] = inter.payload["data"].get("type", 1)
            message["interaction_metadata"] = metadata
        return message

    # --- HTTP plumbing ----------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        entry = RecordedRequest(request.method, request.path, dict(request.query), time.monotonic())
        self.requests.append(entry)
        bot_route = request.path.startswith("/api/") and not request.path.startswith(
            ("/api/v10/interactions/", "/api/v10/webhooks/", "/api/v10/gateway")
        )
        if bot_route and request.headers.get("Authorization") != f"Bot {self.token}":
            response: web.StreamResponse = _error(401, "401: Unauthorized")
        else:
            response = await handler(request)
        entry.status = response.status
        self._notify()
        return response

    async def _read(self, request: web.Request) -> tuple[Any, list[SentFile]]:
        """JSON body or multipart payload_json + files[n]."""
        if not request.content_type.startswith("multipart/"):
            raw = await request.read()
            return (json.loads(raw) if raw else None), []
        payload: Any = None
        files: list[SentFile] = []
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            match = re.fullmatch(r"files\[(\d+)\]", part.name or "")
            if part.filename is not None and match:
                ctype = part.headers.get("Content-Type", "application/octet-stream")
                files.append(SentFile(int(match[1]), part.filename, ctype, bytes(data)))
            elif part.name == "payload_json":
                payload = json.loads(data)
        return payload, files

    def _check_message(self, payload: Json, files: list[SentFile], file_limit: int) -> web.Response | None:
        """What Discord rejects before creating a message."""
        if len(payload.get("content") or "") > 2000:
            return _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(payload.get("embeds") or []) > 10:
            return _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if len(files) > 10:
            return _form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        for comp in _walk_components(payload.get("components") or []):
            if len(str(comp.get("custom_id", ""))) > 100:
                return _form_error("components", "BASE_TYPE_MAX_LENGTH", "custom_id must be 100 or fewer in length.")
        if any(len(f.data) > file_limit for f in files) or sum(len(f.data) for f in files) > REQUEST_LIMIT:
            return _error(413, "Request entity too large", 40005)
        return None

    def _apply(self, message: Json, payload: Json, files: list[SentFile], *, edit: bool) -> Json:
        """Apply a create/edit payload to a stored message object (attachments: keep listed ids, add files[n])."""
        for key in ("content", "embeds", "components", "flags", "poll"):
            if key in payload and payload[key] is not None:
                message[key] = payload[key]
        for i, comp in enumerate(_walk_components(message["components"]), start=1):
            comp.setdefault("id", i)
        channel_id = str(message["channel_id"])
        by_index = {f.index: f for f in files}
        kept = {str(a["id"]): a for a in message["attachments"]} if edit else {}
        listed: list[Json] | None = payload.get("attachments")
        if listed is None and not files:
            return message
        entries: list[Json] = listed if listed is not None else [{"id": f.index} for f in files]
        new: list[Json] = []
        for entry in entries:
            key = str(entry.get("id"))
            if key in kept:
                new.append(kept[key] | ({"description": entry["description"]} if "description" in entry else {}))
            elif key.isdigit() and int(key) in by_index:
                upload, description = by_index.pop(int(key)), entry.get("description")
                new.append(
                    self.add_attachment(upload.data, upload.filename, channel_id=channel_id, description=description)
                )
        new += [self.add_attachment(f.data, f.filename, channel_id=channel_id) for f in by_index.values()]
        message["attachments"] = new
        if edit:
            message["edited_timestamp"] = _now_iso()
        return message

    def _edit(self, message: Json, payload: Json, files: list[SentFile]) -> Json:
        """Edit; ephemerality cannot change and a "thinking" (loading, 128) message stops loading."""
        ephemeral = int(message["flags"]) & 64
        message = self._apply(message, payload, files, edit=True)
        message["flags"] = int(message["flags"]) & ~(64 | 128) | ephemeral
        return message

    async def _record_sent(self, sent: SentMessage) -> None:
        self.messages[sent.message_id] = sent.message
        self.sent.append(sent)
        self._notify()

    def _interaction_for_token(self, token: str) -> tuple[FakeInteraction | None, tuple[int, str, int] | None]:
        inter = next((i for i in self.interactions.values() if i.token == token), None)
        if inter is None:
            self.errors.append("webhook request with an unknown interaction token")
            return None, UNKNOWN_WEBHOOK
        if time.monotonic() - inter.dispatched_at > self.token_lifetime:
            self.errors.append(f"interaction {inter.id}: token used after {self.token_lifetime:.0f} s")
            return None, INVALID_WEBHOOK_TOKEN
        if not inter.acked:
            why = "after a late initial response" if inter.callbacks else "before any initial response"
            self.errors.append(f"interaction {inter.id}: webhook used {why}")
            return None, INVALID_WEBHOOK_TOKEN if inter.callbacks else UNKNOWN_WEBHOOK
        return inter, None

    # --- REST handlers ------------------------------------------------------------------------------------

    async def _users_me(self, _: web.Request) -> web.Response:
        return _json(self.bot_user | {"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"})

    async def _application(self, _: web.Request) -> web.Response:
        return _json(self.application_info())

    async def _gateway_info(self, request: web.Request) -> web.Response:
        if not request.path.endswith("/bot"):
            return _json({"url": self.gateway_url})
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": self.max_concurrency}
        return _json({"url": self.gateway_url, "shards": self.recommended_shards, "session_start_limit": limit})

    async def _not_found(self, _: web.Request) -> web.Response:
        return _error(404, "404: Not Found")

    def _command(self, spec: Mapping[str, Any], guild_id: str | None = None) -> Json:
        key = (str(spec["name"]), int(spec.get("type", 1)))
        command_id = self._command_ids.setdefault(key, str(spec.get("id") or self.snowflake()))
        command: Json = {"type": 1, "description": "", "options": [], "default_member_permissions": None}
        command |= {"nsfw": False, "contexts": None, "integration_types": [0]} | dict(spec)
        command |= {"id": command_id, "application_id": APP_ID, "version": self.snowflake()}
        if guild_id is not None:
            command["guild_id"] = guild_id
        return command

    async def _commands_route(self, request: web.Request) -> web.Response:
        if request.match_info["app"] != APP_ID:
            return _error(403, "Missing Access", 50001)
        guild_id = request.match_info.get("guild")
        if request.method == "GET":
            return _json(self.commands if guild_id is None else self.guild_commands.get(guild_id, []))
        if request.method != "PUT":
            return _error(405, "405: Method Not Allowed")
        payload, _ = await self._read(request)
        self.command_puts.append((guild_id, payload))
        problem = next((p for spec in payload for p in _localisation_problems(spec)), None)
        if problem is not None:  # what Discord answers for a name or description outside its limits
            return _error(400, "Invalid Form Body", 50035, {"localizations": {"_errors": [{"message": problem}]}})
        commands = [self._command(spec, guild_id) for spec in payload]
        if guild_id is None:
            self.commands = commands
        else:
            self.guild_commands[guild_id] = commands
        return _json(commands)

    async def _callback(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        inter = self.interactions.get(request.match_info["interaction"])
        body, files = await self._read(request)
        if inter is None or inter.token != request.match_info["token"]:
            self.errors.append(f"callback for unknown interaction {request.match_info['interaction']}")
            return _error(*UNKNOWN_INTERACTION)
        kind, data = int(body["type"]), body.get("data") or {}
        latency = arrived - inter.dispatched_at
        callback = Callback(inter.id, kind, data, files, arrived, latency, 200, "with_response" in request.query)
        problem: tuple[int, str, int] | None = None
        rejected: web.Response | None = None
        if inter.acked:
            problem = ALREADY_ACKNOWLEDGED
            self.errors.append(f"interaction {inter.id}: second initial response (type {kind})")
        elif latency > self.ack_deadline:
            problem = UNKNOWN_INTERACTION
            self.errors.append(
                f"interaction {inter.id}: first response after {latency:.2f} s (> {self.ack_deadline} s)"
            )
        elif kind == 9 and inter.type == 5:
            problem = (400, "Interaction has already been acknowledged.", 40060)
            self.errors.append(f"interaction {inter.id}: a modal cannot answer a modal submit")
        elif kind in (4, 7):
            rejected = self._check_message(data, files, inter.payload["attachment_size_limit"])
        inter.callbacks.append(callback)
        self.callbacks.append(callback)
        if problem is not None:
            rejected = _error(*problem)
        if rejected is not None:
            callback.status = rejected.status
            self._notify()
            return rejected
        return _json(await self._callback_result(inter, callback))

    async def _callback_result(self, inter: FakeInteraction, callback: Callback) -> Json:
        flags = int(callback.data.get("flags") or 0)
        answer: Json = {"id": inter.id, "type": inter.type}
        result: Json = {"interaction": answer}
        channel_id = str(inter.payload["channel"]["id"])
        message: Json | None = None
        if callback.type in (4, 5):
            message = self._bot_message(channel_id, inter, flags | (128 if callback.type == 5 else 0))
            if callback.type == 4:
                message = self._apply(message, callback.data, callback.files, edit=False)
        elif callback.type in (6, 7) and "message" in inter.payload:
            message = self.messages.get(str(inter.payload["message"]["id"])) or inter.payload["message"]
            if callback.type == 7:
                message = self._apply(message, callback.data, callback.files, edit=True)
        if message is not None:
            inter.original_message_id = str(message["id"])
            answer |= {"response_message_id": message["id"], "response_message_loading": callback.type == 5}
            answer["response_message_ephemeral"] = bool(int(message.get("flags", 0)) & 64)
            if callback.type != 6:
                result["resource"] = {"type": callback.type, "message": message}
            if callback.type in (4, 7):
                path = f"/interactions/{inter.id}/callback"
                await self._record_sent(
                    SentMessage("callback", "POST", path, callback.data, callback.files, callback.at, message, inter.id)
                )
            else:
                self.messages[str(message["id"])] = message
        self._notify()
        return result

    async def _followup(self, request: web.Request) -> web.Response:
        inter, problem = self._interaction_for_token(request.match_info["token"])
        if inter is None:
            return _error(*(problem or UNKNOWN_WEBHOOK))
        arrived = time.monotonic()
        payload, files = await self._read(request)
        payload = payload or {}
        if rejected := self._check_message(payload, files, inter.payload["attachment_size_limit"]):
            return rejected
        original = self.messages.get(inter.original_message_id or "")
        if original is not None and int(original["flags"]) & 128:
            # deprecated but live: the first followup after a "thinking" defer replaces the loading message
            message = self._edit(original, payload, files)
        else:
            message = self._bot_message(str(inter.payload["channel"]["id"]), inter, int(payload.get("flags") or 0))
            message = self._apply(message, payload, files, edit=False)
        await self._record_sent(
            SentMessage("followup", "POST", request.path, payload, files, arrived, message, inter.id)
        )
        return _json(message) if request.query.get("wait") in ("1", "true", "True") else web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        inter, problem = self._interaction_for_token(request.match_info["token"])
        if inter is None:
            return _error(*(problem or UNKNOWN_WEBHOOK))
        arrived = time.monotonic()
        wanted = request.match_info["message"]
        message_id = inter.original_message_id if wanted == "@original" else wanted
        message = self.messages.get(message_id or "")
        if message is None:
            return _error(*UNKNOWN_MESSAGE)
        if request.method == "GET":
            return _json(message)
        if request.method == "DELETE":
            self.messages.pop(str(message["id"]), None)
            return web.Response(status=204)
        if request.method != "PATCH":
            return _error(405, "405: Method Not Allowed")
        payload, files = await self._read(request)
        payload = payload or {}
        if rejected := self._check_message(payload, files, inter.payload["attachment_size_limit"]):
            return rejected
        message = self._edit(message, payload, files)
        kind = "original" if wanted == "@original" else "webhook_edit"
        await self._record_sent(SentMessage(kind, "PATCH", request.path, payload, files, arrived, message, inter.id))
        return _json(message)

    def _channel(self, channel_id: str) -> tuple[Json, str | None] | None:
        for guild in self.guilds:
            for channel in guild["channels"]:
                if channel["id"] == channel_id:
                    return channel, guild["id"]
        return (self.dm_channels[channel_id], None) if channel_id in self.dm_channels else None

    def _dm_channel(self, channel_id: str, user: Json) -> Json:
        channel = {"id": channel_id, "type": 1, "flags": 0, "last_message_id": None, "recipients": [user]}
        return self.dm_channels.setdefault(channel_id, channel)

    async def _channel_post(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        found = self._channel(request.match_info["channel"])
        if found is None:
            return _error(*UNKNOWN_CHANNEL)
        payload, files = await self._read(request)
        payload = payload or {}
        if rejected := self._check_message(payload, files, FILE_LIMIT):
            return rejected
        channel, guild_id = found
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            seen = self._nonces.get((channel["id"], str(nonce)))
            if seen is not None and time.monotonic() - seen[0] < self.nonce_window and seen[1] in self.messages:
                earlier = self.messages[seen[1]]
                self.deduplicated.append(SentMessage("channel", "POST", request.path, payload, files, arrived, earlier))
                return _json(earlier)
        message = self._message(channel["id"], self.bot_user, "", guild_id=guild_id)
        if nonce is not None:
            message["nonce"] = nonce
            self._nonces[(channel["id"], str(nonce))] = (time.monotonic(), str(message["id"]))
        if ref := payload.get("message_reference"):
            referenced = self.messages.get(str(ref.get("message_id")))
            if referenced is None and ref.get("fail_if_not_exists", True):
                return _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
            message |= {"type": 19, "message_reference": {"type": 0, **ref}, "referenced_message": referenced}
        message = self._apply(message, payload, files, edit=False)
        await self._record_sent(SentMessage("channel", "POST", request.path, payload, files, arrived, message))
        return _json(message)

    async def _channel_list(self, request: web.Request) -> web.Response:
        """GET /channels/{id}/messages: newest first, ``limit`` (1-100), ``before`` / ``after`` ids."""
        channel_id = request.match_info["channel"]
        if self._channel(channel_id) is None:
            return _error(*UNKNOWN_CHANNEL)
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _form_error("limit", "NUMBER_TYPE_COERCE", "Value is not int.")
        if not 1 <= limit <= 100:
            return _form_error("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
        before, after = request.query.get("before"), request.query.get("after")
        found = [m for m in self.messages.values() if str(m["channel_id"]) == channel_id]
        if before:
            found = [m for m in found if int(m["id"]) < int(before)]
        if after:
            found = [m for m in found if int(m["id"]) > int(after)]
        found.sort(key=lambda m: int(m["id"]), reverse=True)
        return _json(found[:limit])

    async def _channel_get(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message"])
        if message is None or str(message["channel_id"]) != request.match_info["channel"]:
            return _error(*UNKNOWN_MESSAGE)
        return _json(message)

    async def _cdn_get(self, request: web.Request) -> web.StreamResponse:
        stored = self._cdn.get(request.match_info["attachment"])
        q = request.query
        signed = f"{request.path}|{q.get('ex', '')}|{q.get('is', '')}"
        expected = hmac.new(self._cdn_key, signed.encode(), hashlib.sha256).hexdigest()
        if stored is None or not hmac.compare_digest(q.get("hm", ""), expected) or stored.expires < time.time():
            return web.Response(status=404, text="This content is no longer available.")
        if stored.redirect is not None:
            return web.Response(status=302, headers={"Location": stored.redirect})
        if stored.served is None:
            stored.sent += len(stored.data)
            return web.Response(body=stored.data, headers={"Content-Type": stored.content_type})
        response = web.StreamResponse(headers={"Content-Type": stored.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = (stored.data * (64 * 1024 // max(1, len(stored.data)) + 1))[: 64 * 1024]
        try:
            while stored.sent < stored.served:
                part = chunk[: stored.served - stored.sent]
                await response.write(part)
                stored.sent += len(part)
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client stopped reading: what a capped download does
            pass
        return response

    # --- gateway ------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = _GatewaySession(ws, dict(request.query))
        self.gateway_query = session.query
        self._sessions.append(session)
        try:
            await session.send(10, {"heartbeat_interval": self.heartbeat_interval_ms})
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    await self._gateway_frame(session, json.loads(frame.data))
        finally:
            self._sessions.remove(session)
        return ws

    async def _gateway_frame(self, session: _GatewaySession, frame: Json) -> None:
        op, d = frame.get("op"), frame.get("d") or {}
        if op == 1:
            self.heartbeats += 1
            await session.send(11, None)
        elif op == 2 and isinstance(d, dict):
            await self._identify(session, d)
        elif op == 6 and isinstance(d, dict):
            session.shard = self._session_shards.get(str(d.get("session_id")), session.shard)
            session.seq = int(d.get("seq") or 0)
            await session.send(0, {}, "RESUMED")
            session.identified = True
        self._notify()

    async def _identify(self, session: _GatewaySession, d: Json) -> None:
        """IDENTIFY as Discord checks it: token, intents, shard, the session start rate, guilds per session."""
        self.identify = d
        self.identifies.append((time.monotonic(), d))
        if d.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if self.allowed_intents is not None and intents & PRIVILEGED_INTENTS & ~self.allowed_intents:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = _shard_of(d.get("shard", [0, 1]))
        if shard is None:
            await session.ws.close(code=4010, message=b"Invalid shard.")
            return
        guilds = [g for g in self.guilds if self.shard_of_guild(g["id"], shard[1]) == shard[0]]
        if len(guilds) > self.max_guilds_per_session:
            await session.ws.close(code=4011, message=b"Sharding required.")
            return
        if not self._may_start_session(shard[0]):
            self.errors.append(f"IDENTIFY of shard {list(shard)} faster than max_concurrency allows")
            await session.send(9, False)  # Invalid Session: the client must wait and identify again
            return
        session.shard = shard
        ready: Json = {"v": 10, "user": self.bot_user, "session_id": uuid.uuid4().hex, "auth": {}}
        self._session_shards[ready["session_id"]] = shard
        ready |= {"resume_gateway_url": self.gateway_url, "session_type": "normal", "user_settings": {}}
        ready["guilds"] = [{"id": g["id"], "unavailable": True} for g in guilds]
        ready["application"] = {"id": APP_ID, "flags": self.application_flags}
        ready |= {key: [] for key in ("private_channels", "relationships", "presences", "guild_join_requests")}
        ready |= {"geo_ordered_rtc_regions": ["local"], "_trace": ['["fake-discord",{"micros":0}]']}
        if "shard" in d:
            ready["shard"] = list(shard)
        await session.send(0, ready, "READY")
        for guild in guilds:
            await session.send(0, guild, "GUILD_CREATE")
        session.identified = True

    def _may_start_session(self, shard_id: int) -> bool:
        """At most ``max_concurrency`` session starts per window, counted per rate-limit key (shard % concurrency)."""
        now = time.monotonic()
        key = shard_id % self.max_concurrency
        recent = [t for t in self._bucket_started.get(key, []) if now - t < self.identify_window]
        if recent:
            self._bucket_started[key] = recent
            return False
        self._bucket_started[key] = [now]
        return True

    @staticmethod
    def shard_of_guild(guild_id: str | int, shard_count: int) -> int:
        """The shard that receives a guild's events: ``(guild_id >> 22) % num_shards``."""
        return (int(guild_id) >> 22) % shard_count

    async def invalidate_session(self, shard_id: int) -> None:
        """Op 9 Invalid Session (not resumable) on the shard's session: the client must IDENTIFY again."""
        for session in self._sessions:
            if session.identified and not session.ws.closed and session.shard[0] == shard_id:
                session.identified = False
                await session.send(9, False)

    def connected_shards(self) -> list[tuple[int, int]]:
        """[shard_id, num_shards] of every identified, open gateway session."""
        return [s.shard for s in self._sessions if s.identified and not s.ws.closed]

    @property
    def intents(self) -> int | None:
        return None if self.identify is None else int(self.identify.get("intents", 0))

    async def dispatch(self, event: str, data: Json) -> int:
        """Send a DISPATCH (op 0) event to the session of its guild's shard (DMs: shard 0); return that shard id."""
        guild_id = data.get("guild_id")
        for session in reversed(self._sessions):
            shard_id, count = session.shard
            wanted = 0 if guild_id is None else self.shard_of_guild(guild_id, count)
            if session.identified and not session.ws.closed and shard_id == wanted:
                await session.send(0, data, event)
                return shard_id
        raise RuntimeError(f"no client is connected to the fake gateway for {event} (guild {guild_id})")

    # --- events ---------------------------------------------------------------------------------------------

    async def dispatch_message_create(
        self,
        content: str = "",
        *,
        attachments: Sequence[Json] = (),
        author: Json | None = None,
        channel_id: str | None = None,
        dm: bool = False,
        mentions: Sequence[Json] = (),
        reply_to: Json | None = None,
        ping_reply: bool = True,
        roles: Sequence[str] = (),
    ) -> Json:
        """MESSAGE_CREATE from a user. A reply pings the replied-to author unless ``ping_reply=False``.

        Without the MESSAGE_CONTENT intent, content/embeds/attachments/components arrive empty unless the message
        is a DM, from the bot, or mentions the bot (as on Discord). The stored message keeps everything.
        """
        mentioned = list(mentions)
        if reply_to is not None and ping_reply and reply_to["author"]["id"] not in {u["id"] for u in mentioned}:
            mentioned.append(reply_to["author"])
        author = author or self.user
        guild_id = None if dm else GUILD_ID
        if dm:
            channel_id = self._dm_channel(channel_id or author["id"], author)["id"]
        channel_id = channel_id or CHANNEL_ID
        message = self.user_message(
            content, attachments=attachments, author=author, channel_id=channel_id, guild_id=guild_id,
            mentions=mentioned, reply_to=reply_to, roles=roles,
        )  # fmt: skip
        event = dict(message)
        visible = dm or message["author"]["id"] == BOT_ID or any(u["id"] == BOT_ID for u in mentioned)
        if not visible and not (self.intents or 0) & MESSAGE_CONTENT:
            event |= {"content": "", "embeds": [], "attachments": [], "components": []}
        await self.dispatch("MESSAGE_CREATE", event)
        return message

    def command_id(self, name: str, command_type: int = 1) -> str:
        """The id of a synced command (or a stable made-up one for an unsynced command)."""
        key = (name, command_type)
        return self._command_ids.setdefault(key, self.snowflake())

    def _command_guild(self, name: str, command_type: int, guild_id: str | None) -> str | None:
        if guild_id is None or any(c["name"] == name and c["type"] == command_type for c in self.commands):
            return None
        found = any(c["name"] == name and c["type"] == command_type for c in self.guild_commands.get(guild_id, []))
        return guild_id if found else None

    async def dispatch_slash_command(
        self, name: str, options: Mapping[str, Any] | None = None, **context: Unpack[InteractionContext]
    ) -> FakeInteraction:
        """CHAT_INPUT command. ``name`` may be "group sub"; option values: str/int/float/bool, an attachment
        object from ``add_attachment`` (type 11, put in ``resolved.attachments``) or a raw option dict with "type".
        """
        top, *subs = name.split()
        resolved: Json = {}
        opts: list[Json] = []
        for key, value in (options or {}).items():
            if isinstance(value, Mapping) and "url" in value and "filename" in value:
                resolved.setdefault("attachments", {})[str(value["id"])] = dict(value)
                opts.append({"name": key, "type": 11, "value": str(value["id"])})
            elif isinstance(value, Mapping):
                opts.append({"name": key, **value})
            else:
                kind = _OPTION_TYPE.get(type(value), 3)
                opts.append({"name": key, "type": kind, "value": value})
        for depth, sub in reversed(list(enumerate(subs))):
            opts = [{"name": sub, "type": 2 if depth < len(subs) - 1 else 1, "options": opts}]
        data: Json = {"id": self.command_id(top), "name": top, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        return await self._dispatch_interaction(2, data, context)

    async def dispatch_message_command(
        self, name: str, target: Json, **context: Unpack[InteractionContext]
    ) -> FakeInteraction:
        """MESSAGE context-menu command on ``target`` (full content and attachments, whatever the intents)."""
        context.setdefault("channel_id", str(target["channel_id"]))
        data: Json = {"id": self.command_id(name, 3), "name": name, "type": 3, "target_id": target["id"]}
        data["resolved"] = {"messages": {target["id"]: target}}
        return await self._dispatch_interaction(2, data, context)

    async def dispatch_component(
        self,
        custom_id: str,
        *,
        component_type: int = 2,
        values: Sequence[str] | None = None,
        **context: Unpack[InteractionContext],
    ) -> FakeInteraction:
        """A button click (or select, with ``values``) on ``context["message"]``; by default the latest stored
        message carrying ``custom_id``, else a bot message made up with that button (a message from before a
        restart)."""
        if "message" not in context:
            context["message"] = self._message_with(custom_id, component_type)
        context.setdefault("channel_id", str(context["message"]["channel_id"]))
        data: Json = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        return await self._dispatch_interaction(3, data, context)

    def _message_with(self, custom_id: str, component_type: int) -> Json:
        for message in reversed(list(self.messages.values())):
            if any(c.get("custom_id") == custom_id for c in _walk_components(message.get("components") or [])):
                return message
        item: Json = {"type": component_type, "id": 2, "custom_id": custom_id}
        item |= {"style": 2, "label": "Button"} if component_type == 2 else {"options": [], "placeholder": None}
        message = self._message(CHANNEL_ID, self.bot_user, "", guild_id=GUILD_ID)
        message["components"] = [{"type": 1, "id": 1, "components": [item]}]
        self.messages[message["id"]] = message
        return message

    async def dispatch_modal_submit(
        self, custom_id: str, values: Mapping[str, Any], **context: Unpack[InteractionContext]
    ) -> FakeInteraction:
        """Submit the modal the bot last opened with ``custom_id`` (type-9 callback), mirroring its layout.

        ``values`` by component custom_id: str for text inputs, list[str] for selects/checkbox groups, bool for a
        checkbox, a list of attachment objects (``add_attachment``) for a file upload.
        """
        modal = next(
            (c.data for c in reversed(self.callbacks) if c.type == 9 and c.data.get("custom_id") == custom_id), None
        )
        if modal is None:
            raise LookupError(f"the bot opened no modal with custom_id {custom_id!r}")
        resolved: Json = {}
        remaining = dict(values)
        ids = itertools.count(1)

        def submit(comp: Json) -> Json:
            kind, item = comp["type"], {"type": comp["type"], "id": comp.get("id") or next(ids)}
            if kind == 1:
                return item | {"components": [submit(c) for c in comp.get("components", [])]}
            if kind == 18:
                return item | {"component": submit(comp["component"])}
            if kind == 10:
                return item | {"content": comp.get("content", "")}
            value = remaining.pop(comp["custom_id"], None)
            item["custom_id"] = comp["custom_id"]
            if kind == 4:
                return item | {"value": "" if value is None else str(value)}
            if kind in (21, 23):
                return item | {"value": value if kind == 21 else bool(value)}
            if kind == 19:
                for attachment in value or []:
                    resolved.setdefault("attachments", {})[str(attachment["id"])] = dict(attachment)
                return item | {"values": [str(a["id"]) for a in value or []]}
            return item | {"values": list(value or [])}

        components = [submit(c) for c in modal.get("components", [])]
        if remaining:
            raise KeyError(f"modal {custom_id!r} has no component(s) {sorted(remaining)}")
        data: Json = {"custom_id": custom_id, "components": components}
        if resolved:
            data["resolved"] = resolved
        return await self._dispatch_interaction(5, data, context)

    async def _dispatch_interaction(self, kind: int, data: Json, context: InteractionContext) -> FakeInteraction:
        user = context.get("user", self.user)
        dm = context.get("dm", False)
        guild_id = None if dm else context.get("guild_id", GUILD_ID)
        channel_id = context.get("channel_id", str(user["id"]) if dm else CHANNEL_ID)
        interaction_id, token = self.snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(120)
        payload: Json = {"id": interaction_id, "application_id": APP_ID, "type": kind, "data": data, "token": token}
        payload |= {"version": 1, "locale": context.get("locale", "en-US"), "context": 1 if dm else 0}
        payload["app_permissions"] = context.get("app_permissions", BOT_PERMISSIONS)
        payload["attachment_size_limit"] = context.get("attachment_size_limit", FILE_LIMIT)
        payload |= {
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": guild_id or "0"},
        }
        if guild_id is None:
            payload["user"] = user
            payload["channel"] = self._dm_channel(channel_id, user)
        else:
            channel = self._channel(channel_id)
            payload |= {"guild_id": guild_id, "guild_locale": "en-US"}
            payload["guild"] = {"id": guild_id, "locale": "en-US", "features": []}
            permissions = context.get("member_permissions", MEMBER_PERMISSIONS)
            payload["member"] = make_member(user, permissions=permissions, roles=context.get("roles", ()))
            payload["channel"] = dict(channel[0] if channel else make_text_channel(channel_id, guild_id))
            payload["channel"]["permissions"] = MEMBER_PERMISSIONS
        payload["channel_id"] = channel_id
        if "message" in context:
            payload["message"] = context["message"]
        if kind == 2 and (command_guild := self._command_guild(data["name"], data["type"], guild_id)):
            data["guild_id"] = command_guild
        inter = FakeInteraction(interaction_id, token, kind, payload, time.monotonic(), context.get("expect_ack", True))
        self.interactions[interaction_id] = inter
        inter.shard = await self.dispatch("INTERACTION_CREATE", payload)
        return inter


@contextlib.contextmanager
def point_discord_at(fake: FakeDiscord) -> Iterator[None]:
    """Redirect discord.py's REST (also interaction callbacks and webhooks) and gateway to ``fake``; restore after."""
    rest, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = rest, gateway


@contextlib.asynccontextmanager
async def running_client(
    client: discord.Client, fake: FakeDiscord, *, token: str | None = None, ready_timeout: float = 5.0
) -> AsyncIterator[discord.Client]:
    """Log ``client`` in to ``fake``, connect it (no reconnects), wait for on_ready; close it cleanly on exit.

    Build the client with a small ``guild_ready_timeout`` (e.g. 0.05): READY waits that long after GUILD_CREATE.
    """
    with point_discord_at(fake):
        connection: asyncio.Task[None] | None = None
        try:
            await client.login(token or fake.token)
            connection = asyncio.create_task(client.connect(reconnect=False), name="fake-discord-client")
            ready = asyncio.create_task(client.wait_until_ready())
            await asyncio.wait({ready, connection}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                if connection.done():
                    connection.result()  # raises the connection error
                raise TimeoutError(f"discord.py was not ready after {ready_timeout} s")
            yield client
        finally:
            await client.close()
            if connection is not None:
                await connection
