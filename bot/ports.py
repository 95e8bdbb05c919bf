"""The core's ports: small protocols that concrete technologies implement."""

from __future__ import annotations

from typing import Protocol

from bot.models import (
    Progress,
    ProviderEdit,
    ProviderGenerate,
    ProviderHealth,
    ProviderImages,
    ProviderVary,
)


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

    async def generate(self, call: ProviderGenerate) -> ProviderImages: ...

    async def edit(self, call: ProviderEdit) -> ProviderImages: ...

    async def vary(self, call: ProviderVary) -> ProviderImages:
        """Only called for models whose capability row has the variations endpoint."""
        ...

    async def check(self, model: str) -> ProviderHealth:
        """Is the provider reachable, are we allowed in, does it know ``model``?"""
        ...


class ProgressSink(Protocol):
    """Receives status changes of one job (queued with position, running, done, failed)."""

    async def __call__(self, update: Progress) -> None: ...
