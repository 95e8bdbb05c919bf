"""Waking an adapter's redelivery: the core wakes it after taking over jobs of a process that died."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Coalesced:
    """Runs ``work`` when called; calls made while it runs lead to exactly one more run after it, never to two
    runs at once (two concurrent redeliveries could post the same result twice)."""

    def __init__(self, work: Callable[[], Awaitable[object]]) -> None:
        self._work = work
        self._running = asyncio.Lock()
        self._again = False

    async def __call__(self) -> None:
        if self._running.locked():
            self._again = True
            return
        async with self._running:
            self._again = True
            while self._again:
                self._again = False
                await self._work()
