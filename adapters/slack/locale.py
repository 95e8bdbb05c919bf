"""Slack users' languages: ``users.info`` with ``include_locale`` (Slack sends a locale only when asked), cached.

Slash commands and most interaction payloads carry no locale, and nothing may do I/O before the
acknowledgement, so an acknowledgement uses what is already cached (``known``) and the work after it asks once
(``lookup``). A failed lookup (no ``users:read`` scope, a deleted user) is cached too: English, no retry storm.
"""

from __future__ import annotations

import asyncio
import logging
import time

from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

TTL = 3600.0  # seconds a user's locale is trusted (people rarely change it; a stale one costs one wrong reply)
MAX_USERS = 10_000
# users.info calls in flight at once: a burst of new users is spread out instead of landing on Slack's rate limit
# (Tier 4) and on the event loop while the burst's acknowledgements are going out
MAX_ASKING = 4


class UserLocales:
    """The locale tag (``de-DE``) of each Slack user, looked up once an hour at most."""

    def __init__(self, client: AsyncWebClient, ttl: float = TTL) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._asking: dict[str, asyncio.Task[str | None]] = {}  # one users.info per user at a time (a burst asks once)
        self._slots = asyncio.Semaphore(MAX_ASKING)

    def known(self, user: str | None) -> str | None:
        """The cached locale, without I/O (None: not known yet, or not available)."""
        entry = self._cache.get(user or "")
        return entry[1] if entry is not None and time.monotonic() - entry[0] < self._ttl else None

    async def lookup(self, user: str | None) -> str | None:
        """The user's locale, asking Slack when the cache has nothing fresh; never raises."""
        if not user:
            return None
        entry = self._cache.get(user)
        if entry is not None and time.monotonic() - entry[0] < self._ttl:
            return entry[1]
        asking = self._asking.get(user)
        if asking is None:
            asking = self._asking[user] = asyncio.create_task(self._ask(user))
            asking.add_done_callback(lambda _done: self._asking.pop(user, None))
        return await asyncio.shield(asking)  # one waiter cancelled must not cancel the others' answer

    async def _ask(self, user: str) -> str | None:
        locale: str | None = None
        try:
            async with self._slots:
                answer = await self._client.users_info(user=user, include_locale=True)
            found = (answer.get("user") or {}).get("locale")
            locale = found if isinstance(found, str) and len(found) <= 35 else None
        except Exception as exc:  # a missing users:read scope or a network error: answer in English
            log.info("slack: no locale for a user (%s)", type(exc).__name__)
        if len(self._cache) >= MAX_USERS:
            self._cache.clear()
        self._cache[user] = (time.monotonic(), locale)
        return locale
