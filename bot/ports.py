"""The core's ports: small protocols that concrete technologies implement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from bot.models import (
    Job,
    JobContext,
    Progress,
    ProviderEdit,
    ProviderGenerate,
    ProviderHealth,
    ProviderImages,
    ProviderVary,
    Spend,
    UsageRow,
)

OnPartial = Callable[[bytes], Awaitable[None]]  # receives one encoded preview image while a job runs


class ImageProvider(Protocol):
    """Something that turns validated requests into encoded images.

    Implementations raise only ``ImageBotError`` subclasses; they translate their own failures.
    """

    @property
    def name(self) -> str: ...

    @property
    def offline(self) -> bool:
        """True for providers that make images locally (results say so)."""
        ...

    async def generate(self, call: ProviderGenerate, *, on_partial: OnPartial | None = None) -> ProviderImages:
        """Make images; with ``call.partial_images`` > 0, hand each preview to ``on_partial`` as it arrives."""
        ...

    async def edit(self, call: ProviderEdit, *, on_partial: OnPartial | None = None) -> ProviderImages: ...

    async def vary(self, call: ProviderVary) -> ProviderImages:
        """Only called for models whose capability row has the variations endpoint."""
        ...

    async def check(self, model: str) -> ProviderHealth:
        """Is the provider reachable, are we allowed in, does it know ``model``?"""
        ...

    async def recover(self, spool: Path) -> ProviderImages:
        """Decode an answer a previous process wrote to its spool (a call's ``spool``) but never finished.

        Providers that never spool (nothing was paid) raise ``ProviderResponseError``.
        """
        ...


class ProgressSink(Protocol):
    """Receives status changes of one job (queued with position, running, done, failed)."""

    async def __call__(self, update: Progress) -> None: ...


class JobStore(Protocol):
    """Durable job rows: what was asked, by whom, its state, cost and result files (see bot.store)."""

    async def submit(self, job: Job, *, dedupe_since: float) -> tuple[Job, bool]:
        """Insert ``job`` unless the same user has an identical active job; return the job doing the work."""
        ...

    async def update(self, job_id: str, **changes: Any) -> Job: ...

    async def begin_delivery(self, job_id: str) -> Job:
        """Count one more delivery attempt (before a post is made); the job as it is now."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def unfinished(self) -> list[Job]:
        """Jobs left queued or running (by a process that stopped): start-up recovers or interrupts them."""
        ...

    async def undelivered(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Finished jobs of ``platform`` not delivered yet (only ``owner``'s, when given)."""
        ...

    async def cut_off(self, platform: str, *, owner: str | None = None) -> list[Job]:
        """Interrupted jobs of ``platform`` whose requester was not told yet (only ``owner``'s, when given)."""
        ...

    async def claim_expired(
        self,
        owner: str,
        *,
        expired_before: float,
        lease_until: float,
        platforms: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Atomically take over jobs whose lease ran out before ``expired_before`` (or never had one): queued and
        running ones of any platform, done-undelivered and untold-interrupted ones of ``platforms`` (None: all).
        Each becomes ``owner``'s until ``lease_until``; two processes never take the same job."""
        ...

    async def renew(self, owner: str, job_ids: Collection[str], lease_until: float) -> set[str]:
        """Heartbeat: extend ``owner``'s leases; returns the ids still ``owner``'s."""
        ...

    async def release(self, owner: str) -> None:
        """A clean exit: ``owner``'s jobs may be taken over at once."""
        ...

    async def remember_message(self, platform: str, channel: str, ts: str, job_id: str, *, at: float) -> None:
        """A platform message (``channel``, ``ts``) shows, or threads under, a result of ``job_id``."""
        ...

    async def job_at(self, platform: str, channel: str, ts: str) -> str | None:
        """The job a remembered platform message belongs to (any process may have posted it)."""
        ...

    async def message_of(self, platform: str, job_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message remembered for ``job_id`` (a link to its result), if any."""
        ...

    async def first_time(self, key: str, *, at: float) -> bool:
        """True exactly once per ``key`` across every process sharing the store (event dedupe)."""
        ...

    async def forget_events(self, before: float) -> None:
        """Drop event keys recorded before ``before``."""
        ...

    async def history(self, *, user: str | None = None, limit: int = 20) -> list[Job]: ...

    async def prunable(self, before: float) -> list[Job]: ...

    async def spend(self, since: float, *, context: JobContext | None = None, per: str = "all") -> Spend: ...

    async def usage(
        self, since: float, *, by: str = "user", workspace: tuple[str, str] | None = None
    ) -> list[UsageRow]: ...

    async def close(self) -> None: ...
