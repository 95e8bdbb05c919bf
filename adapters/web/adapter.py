"""The local playground: a chat page that behaves like the bot in Discord, over a JSON API on the shared core.

A browser session is a user (a server-issued, signed id in a cookie, given with the page). Each job request is
one POST that answers with the finished job (or a friendly error); while it runs, queue position and state
arrive on the session's server-sent event stream (``GET /api/events``), keyed by the ``task`` id the page chose
for the request.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from adapters.base import AdapterState
from adapters.common import i18n
from bot.bootstrap import Core

from .listeners import Listeners, read_assets
from .replies import EventStreams
from .session import Handler, Sessions, load_secret

log = logging.getLogger(__name__)


class Playground:
    """The playground adapter: routes on the shared web app, state for /healthz."""

    def __init__(self, core: Core, *, password: str | None = None, local_only: bool = True):
        self.core = core
        self.max_upload_bytes = core.settings.imaging.max_input_bytes
        self._state = AdapterState.STARTING
        self._streams = EventStreams()
        self._listeners = Listeners(core, self._streams, max_upload_bytes=self.max_upload_bytes)
        self._sessions = Sessions(password=password, local_only=local_only, max_upload_bytes=self.max_upload_bytes)

    @property
    def name(self) -> str:
        return "playground"

    @property
    def state(self) -> AdapterState:
        return self._state

    async def start(self) -> None:
        """Read the page's files (in a thread) and start serving; the web server is already listening."""
        self._listeners.assets = await asyncio.to_thread(read_assets)
        self._sessions.secret = await asyncio.to_thread(load_secret, self.core.settings.data_dir)
        cut_off = await self.core.jobs.cut_off("web")
        if cut_off:  # their pages show them, marked interrupted, when they load their history
            log.info("%d playground job(s) were cut off by a restart", len(cut_off))
        self._state = AdapterState.CONNECTED

    async def stop(self) -> None:
        """End every progress stream (pages reconnect when the bot is back)."""
        self._state = AdapterState.STOPPED
        self._streams.close()

    def install(self, app: web.Application) -> None:
        """Add the playground's routes and its middleware (auth, session, errors) to the web app."""
        app.middlewares.append(reader_language)
        app.middlewares.append(self._sessions.middleware)
        on = self._listeners
        router = app.router
        router.add_get("/", on.page)
        router.add_get("/static/{name}", on.static)
        router.add_get("/api/config", on.config)
        router.add_get("/api/events", on.events)
        router.add_get("/api/history", on.history)
        router.add_post("/api/imagine", on.imagine)
        router.add_post("/api/edit", on.edit)
        router.add_post("/api/vary", on.vary)
        router.add_post("/api/jobs/{job}/reroll", on.reroll)
        router.add_post("/api/jobs/{job}/remix", on.remix)
        router.add_post("/api/jobs/{job}/vary/{index}", on.vary_result)
        router.add_post("/api/jobs/{job}/upscale/{index}", on.upscale)
        router.add_post("/api/jobs/{job}/outpaint/{index}", on.outpaint)
        router.add_post("/api/jobs/{job}/confirm", on.confirm)
        router.add_post("/api/jobs/{job}/cancel", on.cancel)
        router.add_get("/api/jobs/{job}/images/{index}", on.image)


@web.middleware
async def reader_language(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer each playground request in the browser's language (``Accept-Language``), English otherwise."""
    i18n.use(i18n.from_accept_language(request.headers.get("Accept-Language")))
    return await handler(request)
