"""`imagebot run`: the process's composition root — the core, every adapter with credentials (or else the local
playground) and the one web server, on one loop; SIGINT/SIGTERM drain running jobs and stop in order.

An adapter that cannot reach its platform at start (``PlatformUnreachableError``) is retried in the background
with capped backoff while /healthz names it (503) and the others serve; a permanent refusal (a bad token) ends
the process with one line and exit code 2, at start or when a retry meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from adapters.base import Adapter, AdapterState, PlatformUnreachableError
from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from adapters.web.adapter import Playground
from adapters.web.server import WebServer, create_app, is_loopback
from bot.bootstrap import Core, new_http_session, open_core, settle_after_start
from bot.errors import ConfigurationError, ImageBotError, UnexpectedError
from bot.settings import Settings, SettingsError
from bot.store import StoreError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


@dataclass
class Wiring:
    """The web app and the adapters on it (the playground only when no platform has credentials)."""

    app: web.Application
    adapters: list[Adapter] = field(default_factory=list)
    playground: Playground | None = None


def wire(core: Core, settings: Settings, session: aiohttp.ClientSession) -> Wiring:
    """Every adapter whose credentials are set, on one web app; with none, the local playground."""
    adapters: list[Adapter] = []
    wiring = Wiring(create_app(core, adapters), adapters)
    if settings.discord_token is not None:
        adapters.append(DiscordAdapter(core, settings))
    if SlackAdapter.configured(settings):
        slack = SlackAdapter(core, settings, session)
        slack.install_routes(wiring.app)  # HTTP mode: /slack/events on this server (Socket Mode: nothing)
        adapters.append(slack)
    if not adapters:  # no platform credentials at all: the local playground is the bot
        password = settings.web_password.get_secret_value() if settings.web_password is not None else None
        wiring.playground = Playground(core, password=password, local_only=is_loopback(settings.web_host))
        wiring.playground.install(wiring.app)
        adapters.append(wiring.playground)
    return wiring


def discord(settings: Settings, action: str) -> int:
    """`imagebot discord sync | invite`."""
    from adapters.discord.cli import main

    return main(settings, action)


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (a set-up problem: one line on stderr)."""
    playground_only = settings.discord_token is None and settings.slack_bot_token is None
    if settings.web_password is None and playground_only and not is_loopback(settings.web_host):
        print(
            f"imagebot: setting IMAGEBOT_WEB_HOST: {settings.web_host} is not a loopback address; "
            "set IMAGEBOT_WEB_PASSWORD to protect the playground, or use 127.0.0.1",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        return asyncio.run(serve(settings))
    except (SettingsError, StoreError) as exc:
        print(f"imagebot: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    except ImageBotError as exc:
        print(f"imagebot: {exc.friendly()}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
        log.exception("imagebot run failed (ref %s)", wrapped.ref)
        print(f"imagebot: {wrapped.friendly()}", file=sys.stderr)
        return EXIT_FAILED


async def serve(settings: Settings, stopping: asyncio.Event | None = None) -> int:
    """Start the web server and the adapters; when ``stopping`` is set (by SIGINT/SIGTERM unless one is given),
    drain running jobs and stop in order."""
    if settings.slack_bot_token is not None and not SlackAdapter.configured(settings):
        raise SettingsError("setting SLACK_APP_TOKEN: set it for Socket Mode (or SLACK_SIGNING_SECRET for HTTP mode)")
    loop = asyncio.get_running_loop()
    on_signals = stopping is None and threading.current_thread() is threading.main_thread()
    stopping = stopping or asyncio.Event()
    if on_signals:  # (signal handlers can only be set from the main thread)
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stopping.set)
    try:
        async with new_http_session() as session, open_core(settings, session, serving=True) as core:
            return await _serve(settings, core, wire(core, settings, session), stopping)
    finally:
        if on_signals:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)


async def _serve(settings: Settings, core: Core, wiring: Wiring, stopping: asyncio.Event) -> int:
    server = WebServer(wiring.app, settings.web_host, settings.web_port)
    try:
        await server.start()
    except OSError as exc:  # the port is taken, or the address is not this machine's
        where = f"{settings.web_host}:{settings.web_port}"
        print(f"imagebot: cannot listen on {where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    started: list[Adapter] = []
    refused: list[str] = []

    def refuse(line: str) -> None:  # a permanent refusal met by a background retry: the process ends
        refused.append(line)
        stopping.set()

    try:
        for index, adapter in enumerate(wiring.adapters):
            try:
                await adapter.start()
            except PlatformUnreachableError as exc:
                print(f"imagebot: {adapter.name}: {exc}; retrying in the background", file=sys.stderr, flush=True)
                await _quietly_stop(adapter)
                adapter = wiring.adapters[index] = Retrying(adapter, refuse)  # /healthz reads this list
            except ConfigurationError as exc:
                print(f"imagebot: {adapter.name}: {exc.user_message}", file=sys.stderr, flush=True)
                return EXIT_CONFIG
            started.append(adapter)
        settle_after_start()
        everywhere = f" (listening on all interfaces, port {server.port})" if server.on_all_interfaces else ""
        if wiring.playground is not None:
            print(f"imagebot: playground at {server.url}{everywhere}", flush=True)
        else:
            names = ", ".join(adapter.name for adapter in wiring.adapters)
            print(f"imagebot: running {names}; health at {server.url}healthz{everywhere}", flush=True)
        await stopping.wait()
        log.info(
            "shutting down: no new jobs; %d running get up to %gs", core.admission.running, settings.shutdown_grace
        )
    finally:
        await _drain(core, settings.shutdown_grace)
        for adapter in reversed(started):
            await adapter.stop()
        await server.stop()
    log.info("stopped")
    if refused:
        print(f"imagebot: {refused[0]}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    return EXIT_OK


class Retrying:
    """An adapter whose platform was unreachable at start: started again in the background, with backoff
    from ``RETRY_FIRST_SECONDS`` doubling up to ``RETRY_MAX_SECONDS``; "disconnected" for /healthz until then."""

    def __init__(self, adapter: Adapter, refuse: Callable[[str], None]):
        self._adapter = adapter
        self._refuse = refuse
        self._connected = False
        self._task = asyncio.create_task(self._keep_starting(), name=f"{adapter.name}-start-retry")

    @property
    def name(self) -> str:
        return self._adapter.name

    @property
    def state(self) -> AdapterState:
        return self._adapter.state if self._connected else AdapterState.DISCONNECTED

    async def start(self) -> None:
        """(Started by its own background task.)"""

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._adapter.stop()

    async def _keep_starting(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            try:
                await self._adapter.start()
            except PlatformUnreachableError as exc:
                log.info("%s still unreachable (%s); next try in %gs", self.name, exc, delay)
                await _quietly_stop(self._adapter)
                continue
            except ConfigurationError as exc:
                await _quietly_stop(self._adapter)
                self._refuse(f"{self.name}: {exc.user_message}")
                return
            except Exception as exc:  # a bug: keep the others serving, and say so once
                wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
                log.error("%s failed to start (ref %s)", self.name, wrapped.ref, exc_info=exc)
                await _quietly_stop(self._adapter)
                continue
            self._connected = True
            log.info("%s connected after its platform came back", self.name)
            return


async def _quietly_stop(adapter: Adapter) -> None:
    """Release what a failed start opened (sessions, sockets): nothing of it must leak into the retry."""
    try:
        await adapter.stop()
    except Exception as exc:
        log.info("%s: cleaning up after a failed start: %s", adapter.name, type(exc).__name__)


async def _drain(core: Core, grace: float) -> None:
    """Refuse new work (queued jobs fail with a "restarting" message their users see); give running ones ``grace``."""
    core.admission.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while core.admission.running and loop.time() < deadline:  # noqa: ASYNC110 (Admission has no event)
        await asyncio.sleep(0.1)
    if core.admission.running:
        log.warning("%d job(s) still running after %gs: interrupting", core.admission.running, grace)
