"""The playground's side of Cancel and the queue estimate, and its help: through the real aiohttp app."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.models import JobStatus
from tests.fakes.provider import FakeImages
from tests.test_web import HEADERS, Harness, _harness, read_events


async def test_cancel_of_a_queued_playground_job_answers_its_request(tmp_path: Path) -> None:
    provider = FakeImages()
    provider.gate = asyncio.Event()
    async for bot in _harness(tmp_path, provider=provider, limits={"max_concurrent": 1}):
        events = await bot.client.get("/api/events")
        running = asyncio.create_task(bot.imagine("a running fox", params={"task": "t1"}))
        await read_events(events, lambda e: e["task"] == "t1" and e["status"] == "running")
        waiting = asyncio.create_task(bot.imagine("a waiting owl", params={"task": "t2"}, status=409))
        (queued,) = [e for e in await read_events(events, lambda e: e["status"] == "queued") if e["status"] == "queued"]
        assert queued["text"] == "Queued — #1 in line" and queued["job"]

        too_late = await bot.client.post(f"/api/jobs/{(await running_job(bot))}/cancel", headers=HEADERS)
        assert too_late.status == 409
        assert (await too_late.json())["error"]["message"] == "Too late to cancel: the image is being made."
        cancelled = await bot.post(f"/api/jobs/{queued['job']}/cancel")

        assert cancelled["status"] == "cancelled" and cancelled["job"]["id"] == queued["job"]
        answer = await waiting
        assert answer["error"] == {
            "kind": "cancelled",
            "message": "Cancelled — nothing was made or charged.",
            "ref": answer["error"]["ref"],
            "retryable": False,
        }
        provider.gate.set()
        await running
        events.close()
        assert len(provider.calls) == 1


async def running_job(bot: Harness) -> str:
    return next(job.id for job in await bot.core.jobs.store.history() if job.status is JobStatus.RUNNING)


async def test_the_help_lists_each_flag_with_its_values(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path):
        response = await bot.client.get("/api/config")
        flags = {flag["name"]: flag["values"] for flag in (await response.json())["flags"]}
        assert list(flags) == ["--n", "--size", "--quality", "--model"]
        assert "1536x1024" in flags["--size"] and "high" in flags["--quality"] and "gpt-image-2" in flags["--model"]
