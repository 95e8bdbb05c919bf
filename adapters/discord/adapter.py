"""DiscordAdapter: a discord.Client + CommandTree on the process's event loop, driving the core's JobService.

``start()`` logs in, connects, syncs the commands if they differ, then delivers what a previous process left
(``recovery``); ``stop()`` closes everything. What happens to each interaction or message lives in
``listeners``; how it is answered in ``replies``.

Intents are the defaults (no privileged intent). Replies to the bot's results are seen because a reply pings
its author; a reply with the ping turned off only arrives with its text and images if the application has the
Message Content intent (then add ``intents.message_content = True``).

Mentions are off for every message and edit the client sends (``allowed_mentions`` client-wide); a result
allows its requester explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import aiohttp
import discord
import redis.asyncio as redis
import yarl
from discord import app_commands

from adapters.base import AdapterState, PlatformUnreachableError
from adapters.common.access import AccessPolicy
from adapters.common.lifecycle import fail
from adapters.discord.admin import install_admin
from adapters.discord.commands import install_commands
from adapters.discord.components import ConfirmButton, JobButton, ResultButton
from adapters.discord.files import Attachments
from adapters.discord.listeners import Listeners, translate
from adapters.discord.recovery import Recovery
from adapters.discord.registration import application_id_from_token, ensure_commands
from adapters.discord.replies import PROGRESS_INTERVAL, TOKEN_LIFETIME, Delivery, InteractionReply
from adapters.discord.sharding import IDENTIFY_INTERVAL, IdentifyGate, claim_command_sync
from bot.bootstrap import Core
from bot.errors import ConfigurationError
from bot.settings import Settings

log = logging.getLogger(__name__)

STALE_FORM_GRACE = 0.75  # seconds a form still in memory has to answer its own submit (it defers at once)


def apply_endpoints(settings: Settings) -> None:
    """Point discord.py at DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL (each only when set).

    discord.py 2.7 has no public setting for either: REST URLs are built from the class attribute
    ``discord.http.Route.BASE`` and the gateway from ``DiscordWebSocket.DEFAULT_GATEWAY`` (process-wide).
    tests/test_discord_endpoints.py fails if either moves.
    """
    if settings.discord_api_base_url:
        discord.http.Route.BASE = settings.discord_api_base_url.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImageClient(discord.Client):
    """discord.Client with the listeners reachable from every interaction (``interaction.client.handlers``)."""

    handlers: Listeners  # set by the adapter right after the client is made

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(intents=discord.Intents.default(), **options)
        self.adapter = adapter

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ResultButton, ConfirmButton, JobButton)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        await self.adapter.identify_gate.wait(shard_id, initial=initial)

    async def on_ready(self) -> None:
        self.adapter.connected = True

    async def on_resumed(self) -> None:
        self.adapter.connected = True

    async def on_disconnect(self) -> None:
        self.adapter.connected = False

    async def on_message(self, message: discord.Message) -> None:
        try:
            await self.adapter.listeners.on_message(message)
        finally:
            self.adapter.messages_handled += 1  # tests wait on this instead of sleeping

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A form opened before a restart: discord.py keeps open forms in memory only, so nothing else would
        answer its submit and the user would see "interaction failed". Give a live form its moment first."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        kind, _, reference = str(data.get("custom_id", "")).partition(":")
        if kind not in {"remix", "edit"}:
            return
        await asyncio.sleep(STALE_FORM_GRACE)
        if not interaction.response.is_done():
            await self.adapter.listeners.stale_form(interaction, kind, reference)


class ShardedImageClient(ImageClient, discord.AutoShardedClient):
    """The same client holding only this process's shards (``shard_count`` and ``shard_ids``): Discord sends
    each shard the events of the guilds whose ``(guild_id >> 22) % shard_count`` is its id, DMs to shard 0.

    Connected means every shard is: discord.py sends ``ready`` once for all shards (a shard that identifies
    again later only gets ``shard_ready``), so the shard events keep the count."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(adapter, **options)
        self.shards_down: set[int] = set()

    def _update_connected(self) -> None:
        self.adapter.connected = self.is_ready() and not self.shards_down

    async def on_ready(self) -> None:
        self._update_connected()

    async def on_resumed(self) -> None:
        """Handled per shard (``on_shard_resumed``)."""

    async def on_disconnect(self) -> None:
        """Handled per shard (``on_shard_disconnect``)."""

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self.shards_down.add(shard_id)
        self.adapter.connected = False

    async def on_shard_ready(self, shard_id: int) -> None:
        self.shards_down.discard(shard_id)
        self._update_connected()

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.shards_down.discard(shard_id)
        self._update_connected()


class ImageTree(app_commands.CommandTree[ImageClient]):
    """Refuses requesters the access policy refuses (ephemerally, as the first response); answers errors the
    commands' own lifecycle never saw (option conversion, checks) the same one way."""

    async def interaction_check(self, interaction: discord.Interaction[ImageClient]) -> bool:
        return not await interaction.client.adapter.listeners.refused(interaction)

    async def on_error(
        self, interaction: discord.Interaction[ImageClient], error: app_commands.AppCommandError
    ) -> None:
        listeners = interaction.client.adapter.listeners
        await fail(InteractionReply(listeners.delivery, interaction, ""), error, translate)


class DiscordAdapter:
    """The Discord adapter: ``start()`` logs in, connects, syncs commands if needed and redelivers results."""

    def __init__(
        self,
        core: Core,
        settings: Settings,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        token_lifetime: float = TOKEN_LIFETIME,
        ready_timeout: float = 60.0,
        identify_interval: float = IDENTIFY_INTERVAL,
        **client_options: Any,
    ) -> None:
        self.core = core
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.shards = settings.discord_shards
        self.client = _make_client(self, settings, client_options)
        self.identify_gate = IdentifyGate(None, self._namespace(), interval=identify_interval)
        self._redis: redis.Redis | None = None
        self.tree = ImageTree(self.client)
        delivery = Delivery(self.client, core.jobs, token_lifetime, progress_interval)
        self.listeners = Listeners(core, AccessPolicy(settings.discord, settings.slack), delivery)
        self.client.handlers = self.listeners
        install_commands(self.tree, self.listeners, settings)
        install_admin(self.tree, core.jobs.store)
        self.recovery = Recovery(delivery)
        self.connected = False
        self.messages_handled = 0  # gateway messages whose handling has finished (answered or ignored)
        self.synced: bool | None = None  # whether start() had to sync the commands
        self._state = AdapterState.STOPPED
        self._connection: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return "discord"

    @property
    def state(self) -> AdapterState:
        if self._state is AdapterState.CONNECTED and not self.connected:
            return AdapterState.DISCONNECTED
        return self._state

    async def start(self) -> None:
        self._state = AdapterState.STARTING
        apply_endpoints(self.settings)
        self._session = aiohttp.ClientSession()
        self.listeners.attachments = Attachments(self._session, self.settings)
        await self.login()
        await self._share_identify_limits()
        self._connection = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        timeout = self.ready_timeout + self._identify_allowance()
        await asyncio.wait({ready, self._connection}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            failure = self._connection.exception() if self._connection.done() else None
            await self.stop()
            if _transient(failure):
                raise PlatformUnreachableError(f"cannot reach Discord's gateway ({type(failure).__name__})")
            if isinstance(failure, discord.ConnectionClosed) and failure.code in _SHARD_ADVICE:
                raise ConfigurationError(_SHARD_ADVICE[failure.code], detail=repr(failure))
            raise ConfigurationError(
                "Couldn't connect to Discord. Check DISCORD_TOKEN and the network.", detail=repr(failure)
            )
        self._state = AdapterState.CONNECTED
        await self._sync_commands()
        self.recovery.watch()  # woken while running too: jobs taken over from a process that died
        await self.recovery.woken()

    async def _share_identify_limits(self) -> None:
        """With Redis, pace IDENTIFYs with the other processes of this bot: learn max_concurrency, use the lock."""
        if self.settings.redis_url is None or self._redis is not None:
            return
        self._redis = redis.Redis.from_url(self.settings.redis_url.get_secret_value())
        try:
            _, _, limits = await self.client.http.get_bot_gateway()
            self.identify_gate.max_concurrency = max(1, int(limits.get("max_concurrency", 1)))
        except (discord.HTTPException, discord.GatewayNotFound) as exc:
            log.warning("discord: no session start limits from /gateway/bot (%s); assuming 1", type(exc).__name__)
        self.identify_gate.client = self._redis

    def _identify_allowance(self) -> float:
        """Seconds the shards may spend waiting their turn to IDENTIFY (5 s per turn of each bucket): this process's
        shards alone, or with Redis every shard of the bot (the other processes may start at the same time)."""
        if self.shards is None:
            return 0.0
        gate = self.identify_gate
        waiting = len(self.shards) if gate.client is None else (self.settings.discord_shard_count or 1)
        return gate.interval * 1.1 * math.ceil(waiting / gate.max_concurrency)

    async def _sync_commands(self) -> None:
        """Compare (and if needed sync) the commands, in one process only: the others never PUT them."""
        try:
            if not await claim_command_sync(self._redis, self._namespace(), self.shards):
                log.info("discord: another process syncs the commands")
                self.synced = False
                return
            self.synced = await ensure_commands(self.tree)
        except discord.HTTPException as exc:
            log.warning("discord: could not check the registered commands (%s %s)", exc.status, exc.code)
        except redis.RedisError as exc:
            self.synced = False
            log.warning("discord: Redis unavailable, commands left as they are (%s)", type(exc).__name__)

    def _namespace(self) -> str:
        """Redis keys of this bot (processes of another bot on the same Redis have their own limits)."""
        token = self.settings.discord_token
        application = application_id_from_token(token.get_secret_value()) if token else None
        return f"imagebot:discord:{application or 'bot'}"

    async def stop(self) -> None:
        self._state = AdapterState.STOPPING
        self.recovery.unwatch()
        await self.client.close()
        if self._connection is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._connection
            self._connection = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._redis is not None:
            self.identify_gate.client = None
            await self._redis.aclose()
            self._redis = None
        self.connected = False
        self._state = AdapterState.STOPPED

    async def login(self) -> None:
        token = self.settings.discord_token
        if token is None:
            raise ConfigurationError("DISCORD_TOKEN is not set", detail="the Discord adapter needs DISCORD_TOKEN")
        if self.client.is_closed():  # a start retried after a failed one: reopen the client
            # discord.py's own re-open steps: clear() the state, a new connector (the old one closed with its
            # session), and the loop hooks close() unset (login() only sets them up on a first start)
            self.client.clear()
            self.client.http.connector = discord.utils.MISSING
            await self.client._async_setup_hook()
        try:
            await self.client.login(token.get_secret_value())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.stop()
            raise PlatformUnreachableError(f"cannot reach Discord's API ({type(exc).__name__})") from None
        except discord.LoginFailure:
            await self.stop()
            raise ConfigurationError(
                "Discord rejected DISCORD_TOKEN. Copy the bot token again from the Developer Portal.",
                detail="discord login failed (401)",
            ) from None

    async def redeliver(self) -> int:
        """Post results a previous process finished but never delivered (used by start and by tests)."""
        return await self.recovery.redeliver()


def _make_client(adapter: DiscordAdapter, settings: Settings, options: dict[str, Any]) -> ImageClient:
    """One session (discord.Client), or this process's shards when IMAGEBOT_DISCORD_SHARD_COUNT is set."""
    if settings.discord_shard_count is None:
        return ImageClient(adapter, **options)
    shard_ids = list(settings.discord_shards or ())
    return ShardedImageClient(adapter, shard_count=settings.discord_shard_count, shard_ids=shard_ids, **options)


_SHARD_ADVICE = {
    4010: "Discord refused the shard settings: IMAGEBOT_DISCORD_SHARD_IDS must be below IMAGEBOT_DISCORD_SHARD_COUNT.",
    4011: "Discord requires sharding for this bot: set IMAGEBOT_DISCORD_SHARD_COUNT (and the shard ids per process).",
}
_REFUSED_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})  # bad token, shard or intents: permanent


def _transient(failure: BaseException | None) -> bool:
    """Is a gateway failure at start worth retrying (no answer, the network), rather than a refusal?"""
    if isinstance(failure, discord.ConnectionClosed):
        return failure.code not in _REFUSED_CLOSE_CODES
    return failure is None or isinstance(failure, (aiohttp.ClientError, OSError, TimeoutError))
