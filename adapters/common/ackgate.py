"""Acknowledgements first: the work a request starts waits for a moment when no other request is waiting to be
acknowledged (Slack's ack, Discord's defer), so that in a burst every acknowledgement goes out before the jobs'
own work (store, posts, the Images API) takes the event loop."""

from __future__ import annotations

import asyncio


class AckGate:
    """The requests not acknowledged yet and when the last one came or went. A request's work after its
    acknowledgement waits for a quiet moment (``quiet``): none left to acknowledge and none for ``QUIET_AFTER``
    (a burst's requests arrive a fraction of a millisecond apart), at most ``QUIET_WAIT``. An acknowledgement is
    due within 3 s (Slack; Discord's within 3 s too), a job's first message is not.

    All the work waiting in one busy spell shares one future and one timer: waiting costs next to nothing on the
    loop whose time the acknowledgements need."""

    def __init__(self) -> None:
        self.pending = 0
        self._last = 0.0  # loop time of the last request's start or end
        self._quiet: asyncio.Future[None] | None = None  # resolved when the spell ends (or has been waited out)
        self._until = 0.0  # loop time by which the waiting work starts anyway
        self._timer: asyncio.TimerHandle | None = None

    def enter(self) -> None:
        self.pending += 1
        self._last = asyncio.get_running_loop().time()

    def leave(self) -> None:
        self.pending = max(0, self.pending - 1)
        self._last = asyncio.get_running_loop().time()

    async def quiet(self) -> None:
        loop = asyncio.get_running_loop()
        if self._quiet is None:
            if self._is_quiet(loop.time()):
                return
            self._quiet = loop.create_future()
            self._until = loop.time() + QUIET_WAIT
            self._timer = loop.call_at(self._last + QUIET_AFTER, self._check)
        await asyncio.shield(self._quiet)  # one waiter cancelled (a stop) leaves the others waiting

    def _is_quiet(self, now: float) -> bool:
        return self.pending == 0 and now - self._last >= QUIET_AFTER

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not (self._is_quiet(now) or now >= self._until):
            self._timer = loop.call_at(min(self._until, max(now, self._last) + QUIET_AFTER), self._check)
            return
        quiet, self._quiet, self._timer = self._quiet, None, None
        if quiet is not None and not quiet.done():
            quiet.set_result(None)


QUIET_AFTER = 0.02  # s without a new request that ends a busy spell
QUIET_WAIT = 0.5  # s: under a steady stream of requests, work waits this long for a quiet moment at most
