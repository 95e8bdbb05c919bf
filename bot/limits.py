"""Admission control: a global concurrency cap, images-per-minute pacing, per-user caps and fair queueing.

Jobs wait in one queue per user; a free slot goes to the waiting user who was served least recently
(ties: who asked first), so one user's burst of twenty requests cannot starve the next person's one.
Each waiting job hears its place in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bot.errors import BusyError, ImageBotError, TooManyJobsError
from bot.models import JobStatus, Progress
from bot.ports import ProgressSink

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Ticket:
    requester: str
    images: int
    seq: int
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    granted: bool = False
    error: ImageBotError | None = None
    position: int | None = None


class Admission:
    """Decides when a job may call the provider. Use ``async with admission.slot(...)`` around the call."""

    def __init__(
        self,
        *,
        max_concurrent: int,
        images_per_minute: float,
        per_user_jobs: int,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._max_concurrent = max_concurrent
        self._rate = images_per_minute / 60.0  # images per second; 0 = unpaced
        self._capacity = max(images_per_minute, 1.0)
        self._tokens = self._capacity
        self._per_user = per_user_jobs
        self._max_queue = max_queue
        self._clock = clock
        self._refilled_at = clock()
        self._paused_until = 0.0
        self._running = 0
        self._waiting: dict[str, deque[_Ticket]] = {}
        self._queued = 0  # tickets in all of _waiting (read on every progress report: keep it O(1))
        self._in_flight: dict[str, int] = {}
        self._served: dict[str, int] = {}  # requester -> when (a counter) they last got a turn
        self._serve_clock = itertools.count()
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # --- what adapters and /healthz may read ---------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def jobs_of(self, requester: str) -> int:
        return self._in_flight.get(requester, 0)

    # --- control ----------------------------------------------------------------------------------------

    def throttle(self, seconds: float) -> None:
        """Pause every new provider call for ``seconds`` (after a 429 or an exhausted rate-limit header)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            log.info("pausing new image calls for %.1fs", seconds)

    def close(self) -> None:
        """Refuse new jobs and fail the ones still waiting (shutdown); running ones finish."""
        self._closed = True
        for queue in self._waiting.values():
            for ticket in queue:
                ticket.error = BusyError(
                    "The bot is restarting, so your request was not started. Please send it again."
                )
                ticket.changed.set()
        self._waiting.clear()
        self._queued = 0

    @contextlib.asynccontextmanager
    async def slot(self, requester: str, images: int, progress: ProgressSink | None = None) -> AsyncIterator[None]:
        """Wait for a turn (reporting the place in line), hold it for the body, then give it back."""
        ticket = self._enqueue(requester, images)
        try:
            await self._wait_for_turn(ticket, progress)
        except BaseException:
            self._forget(ticket)
            raise
        try:
            yield
        finally:
            self._running -= 1
            self._release_user(requester)
            self._pump()

    # --- internals ---------------------------------------------------------------------------------------

    def _enqueue(self, requester: str, images: int) -> _Ticket:
        if self._closed:
            raise BusyError("The bot is shutting down and not taking new requests. Please try again shortly.")
        if self._in_flight.get(requester, 0) >= self._per_user:
            raise TooManyJobsError(
                f"You already have {self._per_user} image requests in progress. Wait for one to finish, then try again."
            )
        if self.queue_length >= self._max_queue:
            raise BusyError(detail=f"queue full ({self._max_queue} waiting)")
        ticket = _Ticket(requester, max(1, images), next(self._arrivals))
        self._in_flight[requester] = self._in_flight.get(requester, 0) + 1
        self._waiting.setdefault(requester, deque()).append(ticket)
        self._queued += 1
        self._pump()
        return ticket

    async def _wait_for_turn(self, ticket: _Ticket, progress: ProgressSink | None) -> None:
        reported: int | None = None
        while True:
            if ticket.error is not None:
                raise ticket.error
            if ticket.granted:
                return
            if progress is not None and ticket.position is not None and ticket.position != reported:
                reported = ticket.position
                await _safe_report(progress, Progress(JobStatus.QUEUED, ticket.position, self.queue_length))
                continue  # the position may have changed while we reported
            ticket.changed.clear()
            await ticket.changed.wait()

    def _forget(self, ticket: _Ticket) -> None:
        """Drop a ticket whose job was cancelled or failed while waiting (or undo a grant)."""
        if ticket.granted:
            self._running -= 1
        else:
            queue = self._waiting.get(ticket.requester)
            if queue is not None and ticket in queue:
                queue.remove(ticket)
                self._queued -= 1
                if not queue:
                    del self._waiting[ticket.requester]
        self._release_user(ticket.requester)
        self._pump()

    def _release_user(self, requester: str) -> None:
        left = self._in_flight.get(requester, 0) - 1
        if left > 0:
            self._in_flight[requester] = left
        else:
            self._in_flight.pop(requester, None)
            self._served.pop(requester, None)  # nothing in flight: no need to remember their last turn

    def _refill(self, now: float) -> None:
        if self._rate > 0:
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now

    def _pump(self) -> None:
        """Grant turns while there is capacity, least recently served user first; then renumber the line."""
        now = self._clock()
        self._refill(now)
        wake_at: float | None = None
        while self._waiting and self._running < self._max_concurrent:
            if now < self._paused_until:
                wake_at = self._paused_until
                break
            requester = min(self._waiting, key=self._priority)
            queue = self._waiting[requester]
            ticket = queue[0]
            if self._rate > 0:
                needed = min(float(ticket.images), self._capacity)
                if self._tokens < needed:
                    wake_at = now + (needed - self._tokens) / self._rate
                    break
                self._tokens -= ticket.images  # may go below zero: a big job borrows from the next minute
            queue.popleft()
            self._queued -= 1
            if not queue:
                del self._waiting[requester]
            self._served[requester] = next(self._serve_clock)
            self._running += 1
            ticket.granted = True
            ticket.position = None
            ticket.changed.set()
        self._renumber()
        self._schedule(wake_at, now)

    def _priority(self, requester: str) -> tuple[int, int]:
        return self._served.get(requester, -1), self._waiting[requester][0].seq

    def _renumber(self) -> None:
        """Give every waiting ticket its place, simulating the order in which ``_pump`` will grant turns."""
        heap = [(*self._priority(user), user, 0) for user in self._waiting]
        heapq.heapify(heap)
        simulated_clock = itertools.count(next(self._serve_clock) + 1)
        position = 0
        while heap:
            _, _, user, index = heapq.heappop(heap)
            queue = self._waiting[user]
            ticket = queue[index]
            position += 1
            if ticket.position != position:
                ticket.position = position
                ticket.changed.set()
            if index + 1 < len(queue):
                heapq.heappush(heap, (next(simulated_clock), queue[index + 1].seq, user, index + 1))

    def _schedule(self, wake_at: float | None, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake_at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, wake_at - now), self._pump)


async def _safe_report(progress: ProgressSink, update: Progress) -> None:
    """A broken progress display must never break the job itself."""
    try:
        await progress(update)
    except Exception:
        log.exception("progress report failed")
