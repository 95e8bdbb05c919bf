"""The gate in front of ``/slack/events`` (HTTP mode), the one Slack route that faces the internet.

Before a byte of the body is read: the signature headers must be present and well-formed, and the timestamp
within Slack's 5-minute signing window (and no more than ``FUTURE_SKEW_SECONDS`` ahead of our clock); a
declared body over ``MAX_BODY_BYTES`` is refused. The body is then read in chunks up to that cap (whatever was
declared), its HMAC checked (bolt checks it again), and the (timestamp, signature) pair remembered for the
window: a replayed signed request is answered 200 with an empty body and does no work. (200 rather than 401:
a copy a proxy or load balancer re-sent must not show the user an error; either way no second job is made.)
Refusals close the connection, so an unread body is not drained.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are a few KB; a modal's view state stays far below this
SIGNING_WINDOW_SECONDS = 300  # Slack's (and bolt's) window for a request timestamp
FUTURE_SKEW_SECONDS = 30  # clock difference tolerated for a timestamp ahead of ours
REPLAY_CACHE_MAX = 100_000  # signed requests remembered (only validly signed ones get in)
_CHUNK = 64 * 1024
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^v0=[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, and the HTTP status it gets."""

    status: int
    reason: str


def check_headers(timestamp: str | None, signature: str | None, now: float) -> Refusal | None:
    """The header checks made before the body is read (None: go on and read it)."""
    if timestamp is None or signature is None:
        return Refusal(401, "missing signature headers")
    if not _TIMESTAMP.fullmatch(timestamp) or not _SIGNATURE.fullmatch(signature):
        return Refusal(401, "malformed signature headers")
    age = now - int(timestamp)
    if age > SIGNING_WINDOW_SECONDS:
        return Refusal(401, "timestamp older than the signing window")
    if -age > FUTURE_SKEW_SECONDS:
        return Refusal(401, "timestamp in the future")
    return None


def signature_of(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()


class ReplayCache:
    """(timestamp, signature) pairs seen within the signing window."""

    def __init__(self, max_entries: int = REPLAY_CACHE_MAX):
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[float, tuple[str, str]]] = []
        self._max = max_entries

    def first_time(self, timestamp: str, signature: str, now: float) -> bool:
        """Record the pair; False when it was already seen (a replay)."""
        self._forget_expired(now)
        key = (timestamp, signature)
        if key in self._seen:
            return False
        if len(self._seen) >= self._max:  # never forget a live pair early: drop the one closest to expiry
            _, oldest = heapq.heappop(self._expiry)
            self._seen.discard(oldest)
        self._seen.add(key)
        heapq.heappush(self._expiry, (int(timestamp) + SIGNING_WINDOW_SECONDS + FUTURE_SKEW_SECONDS, key))
        return True

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, key = heapq.heappop(self._expiry)
            self._seen.discard(key)


class SignedRequests:
    """Reads a ``/slack/events`` request's body only when its headers allow it, and only up to the cap."""

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time):
        self._secret = signing_secret.encode()
        self._clock = clock
        self._replays = ReplayCache()

    async def read(self, request: web.Request) -> bytes | web.Response:
        """The verified body, or the response refusing the request."""
        now = self._clock()
        headers = request.headers
        timestamp, signature = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
        refusal = check_headers(timestamp, signature, now)
        if refusal is None and (request.content_length or 0) > MAX_BODY_BYTES:
            refusal = Refusal(413, f"declared body of {request.content_length} bytes")
        if refusal is not None or timestamp is None or signature is None:
            return _refuse(refusal or Refusal(401, "missing signature headers"))
        body = await _read_capped(request)
        if body is None:
            return _refuse(Refusal(413, f"body over {MAX_BODY_BYTES} bytes"))
        if not hmac.compare_digest(signature_of(self._secret, timestamp, body), signature):
            return _refuse(Refusal(401, "bad signature"))
        if not self._replays.first_time(timestamp, signature, now):
            log.info("slack request refused: a replay of a request already handled")
            return web.Response(status=200, text="")
        return body


async def _read_capped(request: web.Request) -> bytes | None:
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(_CHUNK):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse(refusal: Refusal) -> web.Response:
    log.info("slack request refused (%d): %s", refusal.status, refusal.reason)
    text = "Request body too large" if refusal.status == 413 else "Invalid request signature"
    response = web.Response(status=refusal.status, text=text)
    response.force_close()  # the unread body is not drained: the connection goes
    return response
