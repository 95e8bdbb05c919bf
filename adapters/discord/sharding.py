"""Several processes on one Discord bot: who may IDENTIFY when, and who syncs the commands.

Discord lets a bot start ``max_concurrency`` sessions per 5 seconds, one per rate-limit bucket
(``shard_id % max_concurrency``). One process can pace its own shards (discord.py sleeps 5 s between them);
processes sharing a bot pace each other through Redis: a key per bucket, set only if absent and left to
expire after the interval, is taken right before each IDENTIFY. The same Redis holds a short lock that picks
the one process that compares and syncs the slash commands; without Redis, the process with shard 0 does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import redis.asyncio as redis

log = logging.getLogger(__name__)

IDENTIFY_INTERVAL = 5.0  # seconds: Discord's window for max_concurrency identifies
COMMAND_SYNC_LOCK = 60.0  # seconds a process keeps the command-sync role (long enough to compare and PUT)
_POLL_FLOOR = 0.02  # never spin faster than this on a taken bucket
# the key outlives the window a little: the IDENTIFY after taking it can reach Discord sooner than the one before
_SKEW_MARGIN = 1.1


class IdentifyGate:
    """Waits until this process may IDENTIFY a shard: in-process pacing, or a Redis key per bucket."""

    def __init__(
        self,
        client: redis.Redis | None,
        namespace: str,
        *,
        interval: float = IDENTIFY_INTERVAL,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.interval = interval
        self.max_concurrency = 1  # from /gateway/bot when Redis is used

    def bucket(self, shard_id: int | None) -> int:
        return (shard_id or 0) % max(1, self.max_concurrency)

    async def wait(self, shard_id: int | None, *, initial: bool) -> None:
        """Return once an IDENTIFY of ``shard_id`` keeps within the session start limit."""
        if self.client is None:
            if not initial:  # discord.py's own rule for one process
                await asyncio.sleep(self.interval)
        else:
            try:
                await self._take_bucket(self.client, self.bucket(shard_id))
            except redis.RedisError as exc:
                # better late than never connected: a whole window apart, so only another process's IDENTIFY in
                # the same window can meet Discord's refusal (op 9), which discord.py answers by identifying later
                log.warning(
                    "discord: Redis unavailable for identify pacing (%s); waiting a full window", type(exc).__name__
                )
                await asyncio.sleep(self.interval)

    async def _take_bucket(self, client: redis.Redis, bucket: int) -> None:
        key = f"{self.namespace}:identify:{bucket}"
        holder = secrets.token_hex(8)
        window_ms = max(1, int(self.interval * 1000 * _SKEW_MARGIN))
        while not await client.set(key, holder, nx=True, px=window_ms):
            remaining_ms = await client.pttl(key)
            log.debug("discord: identify bucket %d taken for %d ms more", bucket, remaining_ms)
            await asyncio.sleep(max(_POLL_FLOOR, remaining_ms / 1000))


async def claim_command_sync(client: redis.Redis | None, namespace: str, shards: tuple[int, ...] | None) -> bool:
    """Should this process compare and sync the slash commands? Exactly one process of a bot should.

    With Redis: whoever takes the short lock first (a rolling restart syncs once, on its first new process);
    without: the process holding shard 0 (or the only, unsharded one).
    """
    if client is None:
        return shards is None or 0 in shards
    taken = await client.set(f"{namespace}:command-sync", secrets.token_hex(8), nx=True, ex=int(COMMAND_SYNC_LOCK))
    return bool(taken)
