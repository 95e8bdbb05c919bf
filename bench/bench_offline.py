"""Median wall time of the offline provider at 1024x1024: generate, edit (masked and not) and vary.

Run: python bench/bench_offline.py [runs]
"""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from PIL import Image, ImageDraw

from bot.models import ProviderEdit, ProviderGenerate, ProviderImages, ProviderVary
from bot.providers.offline import OfflineImages

SIZE = (1024, 1024)


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _source() -> bytes:
    """A busy 1024x1024 input, like a photo as far as PNG and the filters are concerned."""
    rng = random.Random(7)
    img = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(200):
        x, y, s = rng.randrange(SIZE[0]), rng.randrange(SIZE[1]), rng.randrange(8, 200)
        draw.ellipse((x, y, x + s, y + s), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return _png(img)


def _mask() -> bytes:
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    ImageDraw.Draw(mask).ellipse((256, 256, 767, 767), fill=(0, 0, 0, 0))
    return _png(mask)


async def _median(runs: int, make: Callable[[int], Awaitable[ProviderImages]]) -> float:
    times = []
    for run in range(runs):
        started = time.perf_counter()
        await make(run)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main(runs: int) -> None:
    provider, source, mask = OfflineImages(), _source(), _mask()
    cases: dict[str, Callable[[int], Awaitable[ProviderImages]]] = {
        "generate": lambda run: provider.generate(
            ProviderGenerate(
                model="offline", prompt=f"sunset over the mountains {run}", n=1, size="1024x1024", quality=None
            )
        ),
        "generate high": lambda run: provider.generate(
            ProviderGenerate(model="offline", prompt=f"a city at night {run}", n=1, size="1024x1024", quality="high")
        ),
        "generate n=4": lambda run: provider.generate(
            ProviderGenerate(
                model="offline", prompt=f"a lighthouse by the ocean {run}", n=4, size="1024x1024", quality=None
            )
        ),
        "edit (mask)": lambda run: provider.edit(
            ProviderEdit(
                model="offline", prompt=f"a moon {run}", images=(source,), mask=mask, n=1, size=None, quality=None
            )
        ),
        "edit (no mask)": lambda run: provider.edit(
            ProviderEdit(
                model="offline", prompt=f"autumn {run}", images=(source,), mask=None, n=1, size=None, quality=None
            )
        ),
        "vary": lambda run: provider.vary(ProviderVary(model="offline", image=source, n=1, size=None)),
    }
    print(f"offline provider, 1024x1024, median of {runs} runs")
    for name, make in cases.items():
        print(f"  {name:<15} {await _median(runs, make) * 1000:7.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
