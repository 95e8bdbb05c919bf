"""A fake ImageProvider at our own port: records calls, answers with Pillow-made PNGs or a scripted failure."""

from __future__ import annotations

import asyncio

from bot.models import ProviderEdit, ProviderGenerate, ProviderHealth, ProviderImages, ProviderVary, Usage
from bot.ports import OnPartial
from tests.images import png


class FakeImages:
    """An ImageProvider at our own port: records calls, answers with Pillow-made PNGs or a scripted failure."""

    name = "fake"
    offline = False

    def __init__(self) -> None:
        self.calls: list[ProviderGenerate | ProviderEdit | ProviderVary] = []
        self.fail_with: BaseException | None = None
        self.answer: bytes | None = None
        self.gate: asyncio.Event | None = None  # when set: calls wait for it (to hold a job "running")
        self.usage = Usage(input_tokens=50, output_tokens=1056, text_input_tokens=50, total_tokens=1106)

    async def _answer(self, call: ProviderGenerate | ProviderEdit | ProviderVary, n: int) -> ProviderImages:
        self.calls.append(call)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        image = self.answer if self.answer is not None else png(32, 32)
        return ProviderImages(tuple(image for _ in range(n)), self.usage, ())

    async def generate(self, call: ProviderGenerate, *, on_partial: OnPartial | None = None) -> ProviderImages:
        await self._preview(call.partial_images, on_partial)
        return await self._answer(call, call.n)

    async def edit(self, call: ProviderEdit, *, on_partial: OnPartial | None = None) -> ProviderImages:
        await self._preview(call.partial_images, on_partial)
        return await self._answer(call, call.n)

    async def _preview(self, count: int, on_partial: OnPartial | None) -> None:
        """Like a streaming service: ``count`` small previews before the answer."""
        if on_partial is None:
            return
        for _ in range(count):
            await on_partial(png(8, 8))

    async def vary(self, call: ProviderVary) -> ProviderImages:
        return await self._answer(call, call.n)

    async def check(self, model: str) -> ProviderHealth:
        return ProviderHealth(True, True, "fake")
