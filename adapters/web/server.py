"""The process's one aiohttp web server: /healthz for every adapter, plus the routes adapters install."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from aiohttp import web

from adapters.base import Adapter, AdapterState
from adapters.web.session import authorised
from bot.bootstrap import Core
from bot.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

HTTP_SHUTDOWN_SECONDS = 2.0  # then in-flight responses get this long to be written
UPLOAD_OVERHEAD_BYTES = 1024 * 1024  # multipart headers and text fields around the files


# Binding to these means every interface; the address to open on this machine is the loopback one.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}  # noqa: S104


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0, names, LAN IPs."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(core: Core, adapters: Sequence[Adapter]) -> web.Application:
    """The web app with /healthz; ``adapters`` is read on every health check, so it may be filled later."""
    max_input = core.settings.imaging.max_input_bytes
    app = web.Application(client_max_size=2 * max_input + UPLOAD_OVERHEAD_BYTES)

    async def healthz(request: web.Request) -> web.Response:
        states = {adapter.name: adapter.state.value for adapter in adapters}
        healthy = bool(adapters) and all(adapter.state is AdapterState.CONNECTED for adapter in adapters)
        body = {
            "status": "ok" if healthy else "unavailable",
            "adapters": states,
            "down": [name for name, state in states.items() if state != AdapterState.CONNECTED],
            "provider": core.provider.name,
            "offline": core.provider.offline,
            "queue_length": core.admission.queue_length,
            "running": core.admission.running,
        }
        return web.json_response(body, status=200 if healthy else 503, headers={"Cache-Control": "no-store"})

    password = core.settings.web_password.get_secret_value() if core.settings.web_password is not None else None
    local_only = is_loopback(core.settings.web_host)
    core.metrics.watch_adapters(lambda: {adapter.name: adapter.state.value for adapter in adapters})

    async def metrics(request: web.Request) -> web.Response:
        refusal = metrics_refusal(request, password=password, local_only=local_only)
        if refusal is not None:
            return refusal
        body = core.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def metrics_refusal(request: web.Request, *, password: str | None, local_only: bool) -> web.Response | None:
    """Who may read /metrics: anyone on a server bound to loopback; beyond it, the playground's password (HTTP
    Basic, any user name) — or, with no password set, only this machine."""
    if local_only:
        return None
    if password is not None:
        if authorised(request, password):
            return None
        return web.Response(
            status=401,
            text="The metrics need the web password (IMAGEBOT_WEB_PASSWORD).\n",
            headers={"WWW-Authenticate": 'Basic realm="imagebot metrics", charset="UTF-8"'},
        )
    if is_loopback(request.remote or ""):
        return None
    return web.Response(status=403, text="Set IMAGEBOT_WEB_PASSWORD to read the metrics from another machine.\n")


class WebServer:
    """Runs an aiohttp app on ``host:port`` (port 0 picks a free one; ``url`` says which)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_SECONDS)
        self._host = host
        self._port = port
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """An address to open: for a bind to all interfaces (0.0.0.0, ::), this machine's loopback one."""
        host = _WILDCARD_TO_LOOPBACK.get(self._host.strip(), self._host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def on_all_interfaces(self) -> bool:
        return self._host.strip() in _WILDCARD_TO_LOOPBACK

    @property
    def port(self) -> int:
        addresses = self._runner.addresses
        return int(addresses[0][1]) if addresses else self._port

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        where = " (listening on all interfaces)" if self.on_all_interfaces else ""
        log.info("web server listening on %s%s", self.url, where)

    async def stop(self) -> None:
        """Stop listening, give in-flight responses ``HTTP_SHUTDOWN_SECONDS``, then close every connection."""
        await self._runner.cleanup()
