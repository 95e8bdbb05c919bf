"""The Slack adapter: slack-bolt (async) over Socket Mode or HTTP, on the shared core and HTTP session.

This module only starts and stops: the listeners (``listeners``) acknowledge first and answer through
``adapters.common.lifecycle``; ``replies`` posts; ``redelivery`` finishes what a previous process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import AdapterState, PlatformUnreachableError
from adapters.common.access import AccessPolicy
from adapters.common.ackgate import AckGate
from adapters.slack.admin import SlackAdmin
from adapters.slack.files import SlackFiles
from adapters.slack.http import SignedRequests
from adapters.slack.listeners import Listeners
from adapters.slack.redelivery import watch
from adapters.slack.replies import WEB_API_TIMEOUT, Outbox, ReplyTo
from adapters.slack.state import SlackState
from bot.bootstrap import Core
from bot.metrics import Metrics
from bot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 3
STOP_GRACE_SECONDS = 10.0


class SlackAdapter:
    """The ``Adapter`` for Slack: Socket Mode with an app token, else HTTP mode at ``/slack/events``."""

    def __init__(self, core: Core, settings: Settings, session: aiohttp.ClientSession):
        if settings.slack_bot_token is None:
            raise SettingsError("setting SLACK_BOT_TOKEN: the Slack adapter needs the bot token (xoxb-...)")
        if settings.slack_app_token is None and settings.slack_signing_secret is None:
            raise SettingsError(
                "setting SLACK_APP_TOKEN: set it for Socket Mode (or SLACK_SIGNING_SECRET for HTTP mode)"
            )
        self.core = core
        self.settings = settings
        self.session = session
        self.mode = "socket" if settings.slack_app_token is not None else "http"
        base_url = settings.slack_api_url or DEFAULT_API_URL
        base_url = base_url if base_url.endswith("/") else base_url + "/"
        token = settings.slack_bot_token.get_secret_value()
        self._token = token
        self.client = _client(token, base_url, session)
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        self.app = _AckTrackingApp(
            name="imagebot",
            client=_client(None, base_url, session),  # bolt makes each request's client from it, token from authorize
            authorize=self._authorizer(),
            signing_secret=secret,
            request_verification_enabled=self.mode == "http",
            process_before_response=True,  # listeners return right after ack(), their work in a task: no polling
        )
        self.app.metrics = core.metrics
        self.files = SlackFiles(
            session, token, api_url=settings.slack_api_url, max_bytes=settings.imaging.max_input_bytes
        )
        self.outbox = Outbox(core.jobs, self.client, session)
        self.listeners = Listeners(core, AccessPolicy(settings.discord, settings.slack), self.outbox, self.files)
        self.listeners.register(self.app)
        SlackAdmin(core.jobs.store, self.outbox, settings.slack.admins, self.listeners.busy).register(self.app)
        self._auth: AuthorizeResult | None = None
        self._state = AdapterState.STOPPED
        self._handler: AsyncSocketModeHandler | None = None
        self._recovery: asyncio.Task[None] | None = None

    # --- the Adapter protocol ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "slack"

    @property
    def state(self) -> AdapterState:
        if self._state is AdapterState.CONNECTED and self._handler is not None:
            socket = getattr(self._handler.client, "current_session", None)
            if socket is None or socket.closed:  # the SDK reconnects on its own; /healthz shows the gap
                return AdapterState.DISCONNECTED
        return self._state

    async def start(self) -> None:
        """Check the token, open the adapter's state, connect (Socket Mode), then tell whoever a restart cut off
        and post what a previous process never delivered."""
        self._state = AdapterState.STARTING
        await self._check_token()
        legacy = self.settings.data_dir / "slack.sqlite3"
        self.outbox.store = await SlackState.open(self.outbox.jobs.store, legacy=legacy)
        app_token = self.settings.slack_app_token
        if self.mode == "socket" and app_token is not None:
            self._handler = AsyncSocketModeHandler(self.app, app_token.get_secret_value())
            await self._handler.connect_async()  # type: ignore[no-untyped-call]
        self._state = AdapterState.CONNECTED
        log.info("slack adapter started in %s mode", "Socket Mode" if self.mode == "socket" else "HTTP")
        self._recovery = asyncio.create_task(watch(self.outbox)(), name="slack-redelivery")

    async def _check_token(self) -> None:
        """One auth.test at start; its answer authorizes every request (no auth.test before each ack)."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            self._state = AdapterState.STOPPED
            raise SettingsError(
                f"setting SLACK_BOT_TOKEN: Slack refused the bot token ({exc.response.get('error')})"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._state = AdapterState.STOPPED
            raise PlatformUnreachableError(
                f"cannot reach Slack's Web API at {self.client.base_url} ({type(exc).__name__})"
            ) from None
        scopes = auth.headers.get("x-oauth-scopes") if isinstance(auth.headers, dict) else None
        self._auth = AuthorizeResult.from_auth_test_response(
            bot_token=self._token, bot_scopes=scopes, auth_test_response=auth
        )

    def _authorizer(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """bolt's ``authorize=``: the start-up auth.test answer (None before start: bolt refuses the request).
        A plain function: bolt passes only the arguments it finds by name in the signature."""

        async def authorize(team_id: str | None) -> AuthorizeResult:
            return self._auth  # type: ignore[return-value]  # None before start: bolt answers "not authorized"

        return authorize

    async def stop(self) -> None:
        """Disconnect; listeners still working get ``STOP_GRACE_SECONDS`` to finish, then are cancelled."""
        self._state = AdapterState.STOPPING
        self.outbox.jobs.remove_deliverer("slack")
        busy = self.listeners.busy
        if busy:
            _, late = await asyncio.wait(set(busy), timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        if self._handler is not None:
            await self._handler.close_async()  # type: ignore[no-untyped-call]
            self._handler = None
        if self.outbox.store is not None:
            await self.outbox.store.close()
            self.outbox.store = None
        self._state = AdapterState.STOPPED

    async def redelivered(self) -> None:
        """Wait until the start-up redelivery (and the cut-off notices) have finished."""
        if self._recovery is not None:
            await asyncio.shield(self._recovery)

    async def idle(self) -> None:
        """Wait until no listener is working (tests and benchmarks)."""
        while self.listeners.busy:
            await asyncio.wait(set(self.listeners.busy))

    @staticmethod
    def configured(settings: Settings) -> bool:
        """True when the settings hold what the adapter needs: the bot token, and an app token or signing secret."""
        has_mode = settings.slack_app_token is not None or settings.slack_signing_secret is not None
        return settings.slack_bot_token is not None and has_mode

    def install_routes(self, app: web.Application, path: str = EVENTS_PATH) -> None:
        """Mount the HTTP-mode endpoint on the process's web server: ``SignedRequests`` checks the signature
        headers before reading at most 1 MB of body, then the signature and replays; bolt verifies it again.

        In Socket Mode nothing is mounted: requests arrive over the websocket, and an endpoint without
        signature checks must not exist.
        """
        if self.mode != "http" or self.settings.slack_signing_secret is None:
            return
        gate = SignedRequests(self.settings.slack_signing_secret.get_secret_value())

        async def events(request: web.Request) -> web.Response:
            if self._state is not AdapterState.CONNECTED:
                return web.Response(status=503, text="starting")
            body = await gate.read(request)
            if isinstance(body, web.Response):
                return body
            bolt_request = AsyncBoltRequest(
                body=body.decode("utf-8", "replace"),
                query=request.query_string,
                headers=dict(request.headers),
            )
            response = await self.app.async_dispatch(bolt_request)
            return await to_aiohttp_response(response)

        app.router.add_post(path, events)


class _AckTrackingApp(AsyncApp):
    """bolt's app, telling each request's listener when its acknowledgement is on its way (``context["acked"]``).

    bolt returns from ``async_dispatch`` once the listener has returned, right after its ``ack()``
    (``process_before_response``); the Socket Mode handler or the HTTP route sends the ack right after. A reply
    waits for that, so that nothing reaches the user before the request is acknowledged. ``context["unacked"]``:
    the gate a listener's work waits at until no request is left to acknowledge (see ``AckGate``)."""

    metrics: Metrics | None = None  # where the time to acknowledge is counted
    unacked: AckGate | None = None  # requests being dispatched, not yet acknowledged

    async def async_dispatch(self, req: AsyncBoltRequest) -> BoltResponse:
        acked = asyncio.Event()
        req.context["acked"] = acked
        if self.unacked is None:
            self.unacked = AckGate()
        req.context["unacked"] = gate = self.unacked
        gate.enter()
        started = time.monotonic()
        try:
            return await super().async_dispatch(req)
        finally:
            gate.leave()
            acked.set()
            if self.metrics is not None:
                self.metrics.ack_seconds.labels("slack").observe(time.monotonic() - started)


def _client(token: str | None, base_url: str, session: aiohttp.ClientSession) -> AsyncWebClient:
    client = AsyncWebClient(token=token, base_url=base_url, session=session, timeout=WEB_API_TIMEOUT)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES))
    return client


__all__ = ["EVENTS_PATH", "ReplyTo", "SlackAdapter"]
