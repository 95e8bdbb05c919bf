"""The part every fake server shares: an aiohttp app served on 127.0.0.1, port 0, in the test's own loop."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class LoopbackServer:
    """Serve ``self.app`` on a free loopback port; ``async with`` starts and stops it.

    Subclasses build ``self.app`` in ``__init__`` and may override ``_before_start`` / ``_before_close``
    (e.g. to close their websockets first).
    """

    app: web.Application
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _before_start(self) -> None:
        """Hook: reset state before serving."""

    async def _before_close(self) -> None:
        """Hook: close websockets, cancel timers, wake sleepers."""

    async def start(self) -> Self:
        await self._before_start()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()  # a port set before start: that one
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        await self._before_close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
