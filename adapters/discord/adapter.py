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
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.base import AdapterState, PlatformUnreachableError
from adapters.common.access import AccessPolicy
from adapters.common.lifecycle import fail
from adapters.discord.commands import install_commands
from adapters.discord.components import ConfirmButton, JobButton, ResultButton
from adapters.discord.files import Attachments
from adapters.discord.listeners import Listeners, translate
from adapters.discord.recovery import Recovery
from adapters.discord.registration import ensure_commands
from adapters.discord.replies import PROGRESS_INTERVAL, TOKEN_LIFETIME, Delivery, InteractionReply
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
        **client_options: Any,
    ) -> None:
        self.core = core
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.client = ImageClient(self, **client_options)
        self.tree = ImageTree(self.client)
        delivery = Delivery(self.client, core.jobs, token_lifetime, progress_interval)
        self.listeners = Listeners(core, AccessPolicy(settings.discord, settings.slack), delivery)
        self.client.handlers = self.listeners
        install_commands(self.tree, self.listeners, settings)
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
        self._connection = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        await asyncio.wait({ready, self._connection}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            failure = self._connection.exception() if self._connection.done() else None
            await self.stop()
            if _transient(failure):
                raise PlatformUnreachableError(f"cannot reach Discord's gateway ({type(failure).__name__})")
            raise ConfigurationError(
                "Couldn't connect to Discord. Check DISCORD_TOKEN and the network.", detail=repr(failure)
            )
        self._state = AdapterState.CONNECTED
        try:
            self.synced = await ensure_commands(self.tree)
        except discord.HTTPException as exc:
            log.warning("discord: could not check the registered commands (%s %s)", exc.status, exc.code)
        await self.recovery.run()

    async def stop(self) -> None:
        self._state = AdapterState.STOPPING
        await self.client.close()
        if self._connection is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._connection
            self._connection = None
        if self._session is not None:
            await self._session.close()
            self._session = None
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


_REFUSED_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})  # bad token, shard or intents: permanent


def _transient(failure: BaseException | None) -> bool:
    """Is a gateway failure at start worth retrying (no answer, the network), rather than a refusal?"""
    if isinstance(failure, discord.ConnectionClosed):
        return failure.code not in _REFUSED_CLOSE_CODES
    return failure is None or isinstance(failure, (aiohttp.ClientError, OSError, TimeoutError))
