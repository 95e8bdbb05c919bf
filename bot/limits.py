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
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from bot.errors import BusyError, ImageBotError, JobCancelledError, TooManyJobsError
from bot.models import JobStatus, Progress
from bot.ports import ProgressSink
from bot.text import N_, NP_

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
    key: str | None = None  # the job's id, so that its requester can take it back while it waits


class ByteBudget:
    """A semaphore counted in bytes: the results being decoded and checked hold at most ``limit`` bytes.

    Waiters are served first come, first served; a result bigger than the whole budget waits until nothing
    else is held, then runs alone (refusing it would lose a paid image).
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(max(0, size), self.limit)
        await self._acquire(size)
        try:
            yield
        finally:
            self._release(size)

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self.held + size <= self.limit:
            self.held += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def _release(self, size: int) -> None:
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += size
                waiter.set_result(None)


class PacingWindow:
    """At most ``allowance`` images in any rolling ``window`` seconds, as the upstream counts them.

    It starts empty and remembers each grant until it leaves the window (plus ``margin``, for requests that
    reach the upstream a little later than they were granted), so no burst can overshoot at the start or
    after an idle spell. A job bigger than the whole allowance goes alone, once the window is empty.
    """

    def __init__(self, allowance: float, window: float = 60.0, margin: float = 1.0):
        self.allowance = allowance
        self.span = window + margin
        self._grants: deque[tuple[float, int]] = deque()  # (when, images), oldest first
        self._in_window = 0

    def wait(self, images: int, now: float) -> float:
        """Seconds until ``images`` more may go (0: now)."""
        self._expire(now)
        needed = self._in_window + min(images, self.allowance) - self.allowance
        if needed <= 0:
            return 0.0
        freed = 0
        for when, count in self._grants:
            freed += count
            if freed >= needed:
                return when + self.span - now
        return 0.0  # unreachable: the grants in the window hold more than needed

    def take(self, images: int, now: float) -> None:
        self._grants.append((now, images))
        self._in_window += images

    def _expire(self, now: float) -> None:
        while (
            self._grants and self._grants[0][0] + self.span <= now + 1e-9
        ):  # the wait() we computed, give or take rounding
            self._in_window -= self._grants.popleft()[1]


class AdmissionControl(Protocol):
    """What the rest of the bot uses of admission: in-process (``Admission``) or shared through Redis
    (``bot.admission_redis.RedisAdmission``). Properties are read without I/O (an adapter may read them before
    its acknowledgement)."""

    result_bytes: ByteBudget

    @property
    def queue_length(self) -> int:
        """Jobs waiting for a turn (for a shared admission: everywhere, as last seen)."""
        ...

    @property
    def running(self) -> int:
        """Jobs of this process holding a turn (shutdown waits for them)."""
        ...

    def jobs_of(self, requester: str) -> int: ...

    def throttle(self, seconds: float) -> None:
        """Pause every new provider call for ``seconds`` (after a 429 or an exhausted rate-limit header)."""
        ...

    def close(self) -> None:
        """Refuse new jobs and fail the ones still waiting (shutdown); running ones finish."""
        ...

    async def aclose(self) -> None:
        """Release what the admission holds outside the process (after ``close`` and the running jobs)."""
        ...

    def slot(
        self, requester: str, images: int, progress: ProgressSink | None = None, *, key: str | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Wait for a turn (reporting the place in line), hold it for the body, then give it back. ``key`` (the
        job id) lets ``cancel`` take the waiting job back."""
        ...

    def cancel(self, key: str) -> bool:
        """Take back the waiting job ``key`` (its ``slot`` raises ``JobCancelledError``); False once it has its
        turn, or when no job with that key waits in this process."""
        ...


class Admission:
    """Decides when a job may call the provider. Use ``async with admission.slot(...)`` around the call.

    Each grant costs O(log users): the users with waiting jobs sit in a heap ordered by when they were last
    served (then by their first waiting job's arrival). Places in line are recomputed at most once per
    ``position_interval`` seconds, and a job only hears of its place when it changed.
    """

    def __init__(
        self,
        *,
        max_concurrent: int,
        images_per_minute: float,
        per_user_jobs: int,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
        pacing_window: float = 60.0,
        pacing_margin: float = 1.0,
        position_interval: float = 0.0,
        max_result_bytes: int = 256 * 1024**2,
    ):
        """``images_per_minute`` is the allowance per ``pacing_window`` seconds (60 unless a test shrinks it)."""
        self._max_concurrent = max_concurrent
        self._pacing = PacingWindow(images_per_minute, pacing_window, pacing_margin) if images_per_minute > 0 else None
        self._per_user = per_user_jobs
        self._max_queue = max_queue
        self._clock = clock
        self._position_interval = position_interval
        self.result_bytes = ByteBudget(max_result_bytes)
        self._paused_until = 0.0
        self._running = 0
        self._waiting: dict[str, deque[_Ticket]] = {}
        self._turns: list[tuple[int, int, str]] = []  # heap of (last served, first waiting seq, user); may be stale
        self._queued = 0  # tickets in all of _waiting (read on every progress report: keep it O(1))
        self._in_flight: dict[str, int] = {}
        self._served: dict[str, int] = {}  # requester -> when (a counter) they last got a turn
        self._serve_clock = itertools.count()
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._renumber_timer: asyncio.TimerHandle | None = None
        self._renumbered_at = -float("inf")
        self._closed = False
        self._keyed: dict[str, _Ticket] = {}  # waiting or running tickets that carry a key (cancel)

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
                    N_("The bot is restarting, so your request was not started. Please send it again.")
                )
                ticket.changed.set()
        self._waiting.clear()
        self._turns.clear()
        self._queued = 0

    def cancel(self, key: str) -> bool:
        """Take back the waiting job ``key`` (its ``slot`` raises ``JobCancelledError``); False once it has its
        turn, or when no job with that key waits here. O(its user's queue + log users), like any removal."""
        ticket = self._keyed.get(key)
        if ticket is None or ticket.granted or ticket.error is not None:
            return False
        self._unqueue(ticket)
        ticket.error = JobCancelledError()
        ticket.changed.set()
        self._pump()
        return True

    async def aclose(self) -> None:
        """Nothing lives outside the process."""

    @contextlib.asynccontextmanager
    async def slot(
        self, requester: str, images: int, progress: ProgressSink | None = None, *, key: str | None = None
    ) -> AsyncIterator[None]:
        """Wait for a turn (reporting the place in line), hold it for the body, then give it back.

        ``key`` (a job id) lets ``cancel`` take the job back while it waits.
        """
        ticket = self._enqueue(requester, images)
        if key is not None:
            ticket.key = key
            self._keyed[key] = ticket
        try:
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
        finally:
            if key is not None and self._keyed.get(key) is ticket:
                del self._keyed[key]

    # --- internals ---------------------------------------------------------------------------------------

    def _enqueue(self, requester: str, images: int) -> _Ticket:
        if self._closed:
            raise BusyError(N_("The bot is shutting down and not taking new requests. Please try again shortly."))
        if self._in_flight.get(requester, 0) >= self._per_user:
            raise TooManyJobsError(
                NP_(
                    "You already have {count} image request in progress. Wait for it to finish, then try again.",
                    "You already have {count} image requests in progress. Wait for one to finish, then try again.",
                    self._per_user,
                )
            )
        if self.queue_length >= self._max_queue:
            raise BusyError(detail=f"queue full ({self._max_queue} waiting)")
        ticket = _Ticket(requester, max(1, images), next(self._arrivals))
        self._in_flight[requester] = self._in_flight.get(requester, 0) + 1
        queue = self._waiting.setdefault(requester, deque())
        queue.append(ticket)
        if len(queue) == 1:
            self._push_turn(requester)
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
            self._unqueue(ticket)
        self._release_user(ticket.requester)
        self._pump()

    def _unqueue(self, ticket: _Ticket) -> None:
        """Take a waiting ticket out of its user's queue (a stale heap entry is skipped by ``_next_user``)."""
        queue = self._waiting.get(ticket.requester)
        if queue is not None and ticket in queue:
            head = queue[0] is ticket
            queue.remove(ticket)
            self._queued -= 1
            if not queue:
                del self._waiting[ticket.requester]
            elif head:
                self._push_turn(ticket.requester)  # the old heap entry is now stale

    def _release_user(self, requester: str) -> None:
        left = self._in_flight.get(requester, 0) - 1
        if left > 0:
            self._in_flight[requester] = left
        else:
            self._in_flight.pop(requester, None)
            self._served.pop(requester, None)  # nothing in flight: no need to remember their last turn

    def _priority(self, requester: str) -> tuple[int, int]:
        return self._served.get(requester, -1), self._waiting[requester][0].seq

    def _push_turn(self, requester: str) -> None:
        heapq.heappush(self._turns, (*self._priority(requester), requester))

    def _next_user(self) -> str | None:
        """The user whose turn it is (least recently served, then who asked first), dropping stale entries."""
        while self._turns:
            served, seq, user = self._turns[0]
            if user in self._waiting and (served, seq) == self._priority(user):
                return user
            heapq.heappop(self._turns)
        return None

    def _pump(self) -> None:
        """Grant turns while there is capacity and the pace allows; then update places in line (coalesced)."""
        now = self._clock()
        wake_at: float | None = None
        while self._waiting and self._running < self._max_concurrent:
            if now < self._paused_until:
                wake_at = self._paused_until
                break
            requester = self._next_user()
            if requester is None:  # pragma: no cover - every waiting user has a heap entry
                break
            queue = self._waiting[requester]
            ticket = queue[0]
            if self._pacing is not None:
                delay = self._pacing.wait(ticket.images, now)
                if delay > 0:
                    wake_at = now + delay
                    break
                self._pacing.take(ticket.images, now)
            heapq.heappop(self._turns)
            queue.popleft()
            self._queued -= 1
            self._served[requester] = next(self._serve_clock)
            if queue:
                self._push_turn(requester)
            else:
                del self._waiting[requester]
            self._running += 1
            ticket.granted = True
            ticket.position = None
            ticket.changed.set()
        self._positions_changed(now)
        self._schedule(wake_at, now)

    def _positions_changed(self, now: float) -> None:
        """Renumber now if the last renumbering is old enough, else once when it is (one timer at most)."""
        if not self._waiting:
            return
        due = self._renumbered_at + self._position_interval
        if now >= due:
            self._renumber(now)
        elif self._renumber_timer is None:
            loop = asyncio.get_running_loop()
            self._renumber_timer = loop.call_later(due - now, self._renumber_later)

    def _renumber_later(self) -> None:
        self._renumber_timer = None
        self._renumber(self._clock())

    def _renumber(self, now: float) -> None:
        """Give every waiting ticket its place, simulating the order in which ``_pump`` will grant turns.

        O(n log users), so it runs at most once per ``position_interval``, never at every grant.
        """
        self._renumbered_at = now
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
