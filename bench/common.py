"""What the benchmark scripts share: the fake Images API in a process of its own, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_OPENAI = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.fakes.openai_server import FakeOpenAI

async def main():
    async with FakeOpenAI(latency={latency}, photo_like={photo_like}) as fake:
        print(fake.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def fake_openai_code(latency: float, *, photo_like: bool = True) -> str:
    """Python source that serves the fake Images API, prints its base URL, and stops when stdin closes.

    ``photo_like``: grainy images of the requested size (~2.4 MB PNG at 1024², like the API's), not flat colour.
    """
    return FAKE_OPENAI.format(root=str(ROOT), latency=latency, photo_like=photo_like)


@contextlib.asynccontextmanager
async def fake_openai_process(latency: float, *, photo_like: bool = True) -> AsyncIterator[str]:
    """Run the fake Images API (answering after ``latency`` seconds) in another process; yield its base URL.

    Another process, so that its work does not count against the bot being measured.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        fake_openai_code(latency, photo_like=photo_like),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        base_url = (await process.stdout.readline()).decode().strip()
        if not base_url:
            raise RuntimeError(f"the fake Images API exited ({await process.wait()})")
        yield base_url
    finally:
        process.stdin.close()
        await process.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
