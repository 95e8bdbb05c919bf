"""Admission shared by every process on one API key, kept in Redis (``IMAGEBOT_REDIS_URL``).

The same rules as ``bot.limits.Admission`` (global concurrency cap, images per rolling window, per-user caps, the
user served least recently goes first, one shared pause after an upstream 429), decided by Lua scripts that Redis
runs atomically, on Redis's clock. Each script first drops what dead processes held, then grants every turn that
capacity and pace allow and tells each ticket's owner on its pub/sub channel.

Data (every key under one prefix): ``tickets`` (hash: ticket -> state, images, arrival, owner, user), ``q:<user>``
(list: that user's waiting tickets, oldest first), ``turns`` (sorted set ordered as text: "<last served><first
arrival><user>" for each user with a waiting ticket, so the smallest member is whose turn it is), ``pace`` (sorted
set: one member per grant, scored by when), ``procs`` (sorted set: process -> lease end; heartbeats push it on) and
``owned:<process>`` (its tickets, dropped when its lease ends: a killed process never holds slots for long).

A process waits on its pub/sub channel; timers at the wake-up time a script returns and a heartbeat (which also
finds grants whose message was lost) cover the rest. If Redis goes away, new requests get a friendly "try again"
and waiting ones are failed once the lease has passed; everything works again when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from bot.errors import BusyError, ImageBotError, JobCancelledError, TooManyJobsError
from bot.limits import ByteBudget
from bot.models import JobStatus, Progress
from bot.ports import ProgressSink
from bot.text import N_

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "imagebot:admission:"
CONNECT_TIMEOUT = 2.0


class QueueUnavailableError(BusyError):
    """Redis, which holds the shared queue, cannot be reached: the request was not started."""

    default_message = N_(
        "I can't reach my job queue right now, so your request was not started. Please try again in a minute."
    )


# Every script starts with this: the configuration, Redis's clock and the shared steps.
_PRELUDE = r"""
local P = ARGV[1]
local MAXC, ALLOW, SPAN = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local PERUSER, MAXQ, LEASE = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local PROC = ARGV[8]
local now = tonumber(ARGV[9])  -- a test's clock; normally empty: Redis's own clock, one for every process
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end

local function parse(raw)  -- state ('w' waiting, 'r' running), images, arrival, owner, user
  local st, n, seq, owner, user = string.match(raw, '^(%a)\t(%d+)\t(%d+)\t([^\t]+)\t(.*)$')
  return st, tonumber(n), tonumber(seq), owner, user
end

local function count(key)
  return tonumber(redis.call('GET', P .. key) or '0')
end

local function push_turn(user)  -- (re)place the user in ``turns`` by (last served, first waiting arrival)
  local old = redis.call('HGET', P .. 'turnkey', user)
  if old then redis.call('ZREM', P .. 'turns', old) end
  local head = redis.call('LINDEX', P .. 'q:' .. user, 0)
  if not head then
    redis.call('HDEL', P .. 'turnkey', user)
    return
  end
  local _, _, seq = parse(redis.call('HGET', P .. 'tickets', head))
  local served = tonumber(redis.call('HGET', P .. 'served', user) or '0')
  local member = string.format('%015d%015d', served, seq) .. user
  redis.call('ZADD', P .. 'turns', 0, member)
  redis.call('HSET', P .. 'turnkey', user, member)
end

local function release_user(user)
  if redis.call('HINCRBY', P .. 'inflight', user, -1) <= 0 then
    redis.call('HDEL', P .. 'inflight', user)
    redis.call('HDEL', P .. 'served', user)  -- nothing in flight: no need to remember their last turn
  end
end

local function drop(ticket)  -- forget a ticket, waiting or running
  local raw = redis.call('HGET', P .. 'tickets', ticket)
  if not raw then return false end
  local st, _, _, owner, user = parse(raw)
  redis.call('HDEL', P .. 'tickets', ticket)
  redis.call('SREM', P .. 'owned:' .. owner, ticket)
  if st == 'r' then
    redis.call('DECR', P .. 'running')
  else
    local q = P .. 'q:' .. user
    local head = redis.call('LINDEX', q, 0)
    redis.call('LREM', q, 1, ticket)
    redis.call('DECR', P .. 'waiting')
    if head == ticket then push_turn(user) end
  end
  release_user(user)
  return true
end

local function expire_processes()  -- a process whose lease ended (killed, cut off) loses what it held
  local dead = redis.call('ZRANGEBYSCORE', P .. 'procs', '-inf', now, 'LIMIT', 0, 16)
  for _, proc in ipairs(dead) do
    for _, ticket in ipairs(redis.call('SMEMBERS', P .. 'owned:' .. proc)) do drop(ticket) end
    redis.call('DEL', P .. 'owned:' .. proc)
    redis.call('ZREM', P .. 'procs', proc)
  end
end

local function pace_wait(images)  -- seconds until ``images`` more may go (0: now)
  if ALLOW <= 0 then return 0 end
  local key = P .. 'pace'
  local gone = redis.call('ZRANGEBYSCORE', key, '-inf', now - SPAN + 1e-6)
  if #gone > 0 then
    local freed = 0
    for _, member in ipairs(gone) do freed = freed + tonumber(string.match(member, '|(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - SPAN + 1e-6)
    redis.call('DECRBY', P .. 'pace_in', freed)
  end
  local needed = count('pace_in') + math.min(images, ALLOW) - ALLOW
  if needed <= 0 then return 0 end
  local freed = 0
  local grants = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #grants, 2 do
    freed = freed + tonumber(string.match(grants[i], '|(%d+)$'))
    if freed >= needed then return math.max(tonumber(grants[i + 1]) + SPAN - now, 0.0005) end
  end
  return 0.0005
end

-- grant turns while capacity and pace allow; returns seconds until worth trying again (-1: none). The owner of each
-- granted ticket hears of it on its channel, except for ``asked`` (the caller's new ticket: its answer says so).
local function pump(asked)
  local paused = tonumber(redis.call('GET', P .. 'paused') or '0')
  while count('running') < MAXC do
    local first = redis.call('ZRANGE', P .. 'turns', 0, 0)[1]
    if not first then return -1 end
    if now < paused then return paused - now end
    local user = string.sub(first, 31)
    local q = P .. 'q:' .. user
    local ticket = redis.call('LINDEX', q, 0)
    local raw = redis.call('HGET', P .. 'tickets', ticket)
    local _, n, seq, owner = parse(raw)
    local delay = pace_wait(n)
    if delay > 0 then return delay end
    if ALLOW > 0 then
      redis.call('ZADD', P .. 'pace', now, ticket .. '|' .. n)
      redis.call('INCRBY', P .. 'pace_in', n)
    end
    redis.call('LPOP', q)
    redis.call('DECR', P .. 'waiting')
    redis.call('HSET', P .. 'served', user, redis.call('INCR', P .. 'served_clock'))
    push_turn(user)
    redis.call('HSET', P .. 'tickets', ticket, 'r' .. string.sub(raw, 2))
    redis.call('INCR', P .. 'running')
    if ticket ~= asked then redis.call('PUBLISH', P .. 'grant:' .. owner, ticket) end
  end
  return -1
end

local function position(user, ticket)  -- place in line if turns go round-robin from now (see positions())
  local index = redis.call('LPOS', P .. 'q:' .. user, ticket)
  if not index then return 0 end
  local place, before = 1, true  -- users before ours in the round get one more turn in our round
  for _, member in ipairs(redis.call('ZRANGE', P .. 'turns', 0, -1)) do
    local other = string.sub(member, 31)
    local length = redis.call('LLEN', P .. 'q:' .. other)
    place = place + math.min(length, index)
    if other == user then
      before = false
    elseif before and length > index then
      place = place + 1
    end
  end
  return place
end

local function answer(status, wake, extra)
  local out = {status, string.format('%.6f', wake), count('waiting'), count('running')}
  for _, value in ipairs(extra or {}) do table.insert(out, value) end
  return out
end

local function lease()
  redis.call('ZADD', P .. 'procs', now + LEASE, PROC)
end

expire_processes()
"""

# ARGV[10..]: ticket, user, images. Answers: status ('ok', 'user': per-user cap, 'full': queue full), then the place
# in line of the new ticket (0: granted).
_ENQUEUE = r"""
local ticket, user, images = ARGV[10], ARGV[11], tonumber(ARGV[12])
lease()
if redis.call('HEXISTS', P .. 'tickets', ticket) == 1 then
  local wake = pump(ticket)
  return answer('ok', wake, {position(user, ticket), string.sub(redis.call('HGET', P .. 'tickets', ticket), 1, 1)})
end
if tonumber(redis.call('HGET', P .. 'inflight', user) or '0') >= PERUSER then return answer('user', -1) end
if count('waiting') >= MAXQ then return answer('full', -1) end
local seq = redis.call('INCR', P .. 'arrivals')
redis.call('HSET', P .. 'tickets', ticket, 'w\t' .. images .. '\t' .. seq .. '\t' .. PROC .. '\t' .. user)
redis.call('SADD', P .. 'owned:' .. PROC, ticket)
local q = P .. 'q:' .. user
if redis.call('RPUSH', q, ticket) == 1 then push_turn(user) end
redis.call('INCR', P .. 'waiting')
redis.call('HINCRBY', P .. 'inflight', user, 1)
local wake = pump(ticket)
return answer('ok', wake, {position(user, ticket), string.sub(redis.call('HGET', P .. 'tickets', ticket), 1, 1)})
"""

# ARGV[10]: the ticket to give back (granted or still waiting).
_RELEASE = r"""
lease()
drop(ARGV[10])
return answer('ok', pump())
"""

# ARGV[10..]: this process's tickets. Refreshes its lease, grants what may go, and answers each ticket's state
# ('w' waiting, 'r' granted, 'm' missing: Redis lost it, e.g. restarted empty) and, when waiting, its place.
_HEARTBEAT = r"""
lease()
local wake = pump()
local states = {}
for i = 10, #ARGV do
  local raw = redis.call('HGET', P .. 'tickets', ARGV[i])
  if not raw then
    table.insert(states, 'm')
    table.insert(states, 0)
  else
    local st, _, _, _, user = parse(raw)
    table.insert(states, st)
    table.insert(states, st == 'w' and position(user, ARGV[i]) or 0)
  end
end
return answer('ok', wake, states)
"""

# ARGV[10]: seconds every process pauses new calls for (the longest pause asked for wins).
_THROTTLE = r"""
local until_ = now + tonumber(ARGV[10])
if until_ > tonumber(redis.call('GET', P .. 'paused') or '0') then
  redis.call('SET', P .. 'paused', string.format('%.6f', until_), 'PX', math.ceil(tonumber(ARGV[10]) * 1000) + 1000)
end
return answer('ok', pump())
"""

# ARGV[10]: a granted ticket whose call is about to leave: its place in the pace window moves to now (later, never
# earlier), so the window holds when calls were sent, not when turns were granted (the upstream counts arrivals).
_STAMP = r"""
local raw = redis.call('HGET', P .. 'tickets', ARGV[10])
if raw and ALLOW > 0 then
  local _, n = parse(raw)
  redis.call('ZADD', P .. 'pace', 'XX', 'GT', now, ARGV[10] .. '|' .. n)
end
return answer('ok', -1)
"""

_GONE = r"""
for _, ticket in ipairs(redis.call('SMEMBERS', P .. 'owned:' .. PROC)) do drop(ticket) end
redis.call('DEL', P .. 'owned:' .. PROC)
redis.call('ZREM', P .. 'procs', PROC)
return answer('ok', pump())
"""


@dataclass(eq=False)
class _Ticket:
    id: str
    requester: str
    images: int
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    granted: bool = False
    error: ImageBotError | None = None
    position: int | None = None
    key: str | None = None  # the job id, for cancel


@dataclass(frozen=True, slots=True)
class ScriptAnswer:
    """What every script answers: its status, when to pump again, and the shared line's size."""

    status: str  # "ok"; enqueue: "user" (per-user cap) or "full" (queue full)
    wake: float  # seconds until a pump is worth trying again; < 0: nothing waits on time
    waiting: int
    running: int  # turns held, by every process
    extra: list[Any]


@dataclass(frozen=True, slots=True)
class AdmissionRules:
    """The shared rules every script applies (each process sends its own; they should agree)."""

    max_concurrent: int
    images_per_minute: float
    per_user_jobs: int
    max_queue: int
    pacing_window: float = 60.0
    pacing_margin: float = 1.0
    lease: float = 10.0
    prefix: str = DEFAULT_PREFIX


class AdmissionScripts:
    """The Lua scripts, bound to a client, the rules and one process's name.

    ``now`` (tests only) replaces Redis's clock, so a property can be checked over hours of simulated time.
    """

    NAMES = ("enqueue", "release", "heartbeat", "throttle", "stamp", "gone")

    def __init__(self, client: redis.Redis, rules: AdmissionRules, process: str):
        bodies = {"enqueue": _ENQUEUE, "release": _RELEASE, "heartbeat": _HEARTBEAT, "throttle": _THROTTLE}
        bodies["gone"] = _GONE
        bodies["stamp"] = _STAMP
        self._scripts = {name: client.register_script(_PRELUDE + body) for name, body in bodies.items()}
        self._config: list[str | int] = [
            rules.prefix,
            rules.max_concurrent,
            _number(rules.images_per_minute),
            _number(rules.pacing_window + rules.pacing_margin),
            rules.per_user_jobs,
            rules.max_queue,
            _number(rules.lease),
            process,
        ]

    async def __call__(self, name: str, *args: str | int, now: float | None = None) -> ScriptAnswer:
        clock = "" if now is None else _number(now)
        raw = await self._scripts[name](keys=[], args=[*self._config, clock, *args])
        return ScriptAnswer(str(raw[0]), float(raw[1]), int(raw[2]), int(raw[3]), list(raw[4:]))


def redis_location(url: str) -> str:
    """``host:port/db`` (or the socket path) of a Redis URL, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return unquote(parts.path)
    db = parts.path.strip("/") or "0"
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}/{db}"


def connect(url: str) -> redis.Redis:
    """A client with short timeouts: a Redis that went away is noticed in seconds, not minutes."""
    return redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=5.0,
        health_check_interval=30,
        decode_responses=True,
    )


async def check_reachable(url: str) -> None:
    """PING the server once; raise ``RedisError``/``OSError`` when it cannot be reached or refuses us."""
    client = connect(url)
    try:
        await client.ping()
    finally:
        await client.aclose()


class RedisAdmission:
    """``AdmissionControl`` whose queue, pace and caps are shared through Redis by every process on one key.

    ``running`` counts this process's jobs holding a turn; ``queue_length`` is the shared line as last seen.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_concurrent: int,
        images_per_minute: float,
        per_user_jobs: int,
        max_queue: int,
        pacing_window: float = 60.0,
        pacing_margin: float = 1.0,
        lease: float = 10.0,
        position_interval: float = 0.0,
        max_result_bytes: int = 256 * 1024**2,
        prefix: str = DEFAULT_PREFIX,
    ):
        self.client = client
        self.result_bytes = ByteBudget(max_result_bytes)
        self.process = secrets.token_hex(8)
        self._lease = lease
        rules = AdmissionRules(
            max_concurrent, images_per_minute, per_user_jobs, max_queue, pacing_window, pacing_margin, lease, prefix
        )
        self._scripts = AdmissionScripts(client, rules, self.process)
        self._paced = images_per_minute > 0
        self._channel = f"{prefix}grant:{self.process}"
        self._tick = max(0.25, min(lease / 4, max(position_interval, 0.5)))
        self._tickets: dict[str, _Ticket] = {}
        self._keyed: dict[str, _Ticket] = {}  # job id -> its waiting ticket (Cancel)
        self._ids = itertools.count()
        self._running = 0
        self._waiting_seen = 0
        self._in_flight: dict[str, int] = {}
        self._unreleased: set[str] = set()
        self._closed = False
        self._ready: asyncio.Future[None] | None = None  # done once we listen for grants
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake_timer: asyncio.TimerHandle | None = None
        self._wake_at = float("inf")
        self._last_contact = time.monotonic()

    # --- what adapters and /healthz may read ---------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return self._waiting_seen

    @property
    def running(self) -> int:
        return self._running

    def jobs_of(self, requester: str) -> int:
        """This process's jobs of ``requester`` (the shared cap is checked in Redis)."""
        return self._in_flight.get(requester, 0)

    # --- control ----------------------------------------------------------------------------------------

    def throttle(self, seconds: float) -> None:
        """Pause every process's new provider calls for ``seconds`` (sent to Redis in the background)."""
        log.info("pausing new image calls for %.1fs (every process)", seconds)
        self._spawn(self._run_script("throttle", _number(max(0.0, seconds))))

    def close(self) -> None:
        self._closed = True
        for ticket in list(self._tickets.values()):
            if not ticket.granted:
                ticket.error = BusyError(
                    N_("The bot is restarting, so your request was not started. Please send it again.")
                )
                ticket.changed.set()

    async def aclose(self) -> None:
        """Stop the background work and give back every ticket of this process at once."""
        self._closed = True
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        tasks = [*self._tasks, *([self._listener] if self._listener is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._script("gone")
        await self.client.aclose()

    def cancel(self, key: str) -> bool:
        """Take back the waiting job ``key`` if it waits in this process (its ``slot`` raises
        ``JobCancelledError`` and gives its place back in Redis); False once it has its turn, or elsewhere."""
        ticket = self._keyed.get(key)
        if ticket is None or ticket.granted or ticket.error is not None:
            return False
        ticket.error = JobCancelledError()
        ticket.changed.set()
        return True

    @contextlib.asynccontextmanager
    async def slot(
        self, requester: str, images: int, progress: ProgressSink | None = None, *, key: str | None = None
    ) -> AsyncIterator[None]:
        ticket = await self._enqueue(requester, images)
        if key is not None:
            self._keyed[key] = ticket
            ticket.key = key
        try:
            await self._wait_for_turn(ticket, progress)
        except BaseException:
            await asyncio.shield(self._forget(ticket))
            raise
        self._running += 1
        try:
            if self._paced:
                await self._stamp(ticket)
            yield
        finally:
            self._running -= 1
            await asyncio.shield(self._forget(ticket))

    # --- internals ---------------------------------------------------------------------------------------

    async def _enqueue(self, requester: str, images: int) -> _Ticket:
        if self._closed:
            raise BusyError(N_("The bot is shutting down and not taking new requests. Please try again shortly."))
        await self._start()
        ticket = _Ticket(f"{self.process}.{next(self._ids)}", requester, max(1, images))
        self._tickets[ticket.id] = ticket  # before the script: its grant message may come before its answer
        try:
            answer = await self._script("enqueue", ticket.id, requester, ticket.images)
        except (RedisError, OSError) as exc:
            del self._tickets[ticket.id]
            raise QueueUnavailableError(detail=f"redis: {type(exc).__name__}") from None
        if answer.status != "ok":
            del self._tickets[ticket.id]
            if answer.status == "user":
                raise TooManyJobsError()
            raise BusyError(detail="queue full")
        self._in_flight[requester] = self._in_flight.get(requester, 0) + 1
        place, state = int(answer.extra[0]), str(answer.extra[1])
        if state == "r":
            self._granted(ticket.id)  # its message on the channel may still be on its way
        elif not ticket.granted and place > 0:
            ticket.position = place
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
                continue
            ticket.changed.clear()
            await ticket.changed.wait()

    async def _stamp(self, ticket: _Ticket) -> None:
        """Count the call in the pace window from now, when it leaves, rather than from its grant."""
        try:
            await self._scripts("stamp", ticket.id)
        except (RedisError, OSError) as exc:
            log.warning("could not mark a call as sent in Redis (%s); its grant time stands", type(exc).__name__)

    async def _forget(self, ticket: _Ticket) -> None:
        """Give the ticket back (granted or waiting); Redis drops it anyway with our lease if it can't be told."""
        if ticket.key is not None and self._keyed.get(ticket.key) is ticket:
            del self._keyed[ticket.key]
        if self._tickets.pop(ticket.id, None) is None:
            return
        left = self._in_flight.get(ticket.requester, 0) - 1
        if left > 0:
            self._in_flight[ticket.requester] = left
        else:
            self._in_flight.pop(ticket.requester, None)
        await self._release(ticket.id)

    async def _release(self, ticket_id: str) -> None:
        try:
            await self._script("release", ticket_id)
        except (RedisError, OSError) as exc:
            log.warning("could not give back a turn in Redis (%s); retrying with the heartbeat", type(exc).__name__)
            self._unreleased.add(ticket_id)  # our heartbeats keep our lease: Redis would never drop it by itself
        else:
            self._unreleased.discard(ticket_id)

    async def _script(self, name: str, *args: str | int) -> ScriptAnswer:
        answer = await self._scripts(name, *args)
        self._last_contact = time.monotonic()
        self._waiting_seen = answer.waiting
        self._schedule(answer.wake)
        return answer

    async def _run_script(self, name: str, *args: str | int) -> None:
        """A script whose answer only matters for its side effects (timers, grants), from a timer or a task."""
        try:
            await self._script(name, *args)
        except (RedisError, OSError) as exc:
            log.warning("redis %s failed: %s", name, type(exc).__name__)

    def _schedule(self, wake: float) -> None:
        """Pump again when the pace or the pause lets the next job go (the earliest such time wins)."""
        if wake < 0:
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + wake + 0.0005
        if self._wake_timer is not None and not self._wake_timer.cancelled() and self._wake_at <= at:
            return
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        self._wake_at = at
        self._wake_timer = loop.call_at(at, self._woken)

    def _woken(self) -> None:
        self._wake_timer = None
        self._wake_at = float("inf")
        self._spawn(self._run_script("heartbeat"))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self) -> None:
        """Subscribe to this process's grant channel (once, before any ticket) and start the heartbeat."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._listen(self._ready))
        ready = self._ready
        try:
            await asyncio.shield(ready)
        except QueueUnavailableError:
            if self._ready is ready:
                self._ready = None  # the next request tries again
            raise

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """Hear grants published for our tickets; resubscribe after Redis comes back."""
        delay = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if not ready.done():
                    ready.set_result(None)
                    self._spawn(self._heartbeats())
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._tick * 4)
                    if message is not None and message.get("type") == "message":
                        self._granted(str(message["data"]))
            except (RedisError, OSError) as exc:
                if not ready.done():
                    ready.set_exception(QueueUnavailableError(detail=f"redis: {type(exc).__name__}"))
                    return
                log.warning("lost the Redis grant channel (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _granted(self, ticket_id: str) -> None:
        ticket = self._tickets.get(ticket_id)
        if ticket is not None and not ticket.granted:
            ticket.granted = True
            ticket.position = None
            ticket.changed.set()

    async def _heartbeats(self) -> None:
        """Keep our lease, pick up grants whose message was lost, refresh places in line, notice lost tickets."""
        while True:
            await asyncio.sleep(self._tick)
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        for ticket_id in list(self._unreleased):
            await self._release(ticket_id)
        waiting = [t for t in self._tickets.values() if not t.granted and t.error is None]
        try:
            answer = await self._script("heartbeat", *(t.id for t in waiting))
        except (RedisError, OSError) as exc:
            if time.monotonic() - self._last_contact > self._lease:
                self._fail_waiting(waiting, exc)
            return
        states = answer.extra
        for index, ticket in enumerate(waiting):
            state, place = str(states[2 * index]), int(states[2 * index + 1])
            if state == "r":
                self._granted(ticket.id)
            elif state == "m":
                await self._requeue(ticket)
            elif place > 0 and place != ticket.position:
                ticket.position = place
                ticket.changed.set()

    async def _requeue(self, ticket: _Ticket) -> None:
        """Redis lost a waiting ticket (it restarted empty, or our lease lapsed): ask again, keeping the id."""
        log.info("a waiting job lost its place in Redis; queueing it again")
        try:
            answer = await self._script("enqueue", ticket.id, ticket.requester, ticket.images)
        except (RedisError, OSError) as exc:
            self._fail_waiting([ticket], exc)
            return
        if answer.status != "ok":
            ticket.error = BusyError(detail=f"requeue refused: {answer.status}")
            ticket.changed.set()
        elif str(answer.extra[1]) == "r":
            self._granted(ticket.id)

    def _fail_waiting(self, tickets: Sequence[_Ticket], exc: BaseException) -> None:
        log.warning(
            "Redis unreachable for over %.0fs (%s): failing %d waiting job(s)",
            self._lease,
            type(exc).__name__,
            len(tickets),
        )
        for ticket in tickets:
            if not ticket.granted and ticket.error is None:
                ticket.error = QueueUnavailableError(detail=f"redis: {type(exc).__name__}")
                ticket.changed.set()


def _number(value: float) -> str:
    return repr(float(value))


async def _safe_report(progress: ProgressSink, update: Progress) -> None:
    """A broken progress display must never break the job itself."""
    try:
        await progress(update)
    except Exception:
        log.exception("progress report failed")
