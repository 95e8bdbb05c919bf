"""How the playground answers: progress on the session's server-sent event stream, the final answer as the JSON
body of the request that asked (``WebReply``), and the one place an error becomes what the page shows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from aiohttp import web

from adapters.common.i18n import _
from adapters.common.lifecycle import Work, queue_text
from bot.errors import ImageBotError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import JobStatus, Progress
from bot.ports import ProgressSink

from . import render
from .files import UploadTooLargeError

HEARTBEAT_SECONDS = 15.0
PREVIEW_LIMIT = 1_500_000  # bytes: a larger preview is not sent to the page (it would clog the event stream)
STREAM_QUEUE = 256
_STATUS_BY_KIND = {
    "invalid_input": 400,
    "refused_by_safety": 422,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "busy": 503,
    "cancelled": 409,
    "too_late_to_cancel": 409,
    "config_error": 503,
    "provider_outage": 502,
}
_REF = re.compile(r"\(ref ([^()\s]+)\)\s*$")

Event = dict[str, Any]


def error_response(error: ImageBotError, text: str | None = None) -> web.Response:
    """An error as the page shows it: the friendly text with its reference id, and a fitting HTTP status."""
    status = _STATUS_BY_KIND.get(error.kind, 500)
    if isinstance(error, JobNotFoundError):
        status = 404
    elif isinstance(error, UploadTooLargeError):
        status = 413
    message = text if text is not None else _(error.friendly_text())
    found = _REF.search(message)
    ref = found.group(1) if found else error.ref
    body = {"error": {"kind": error.kind, "message": message, "ref": ref, "retryable": error.retryable}}
    return web.json_response(body, status=status)


class EventStreams:
    """The open ``/api/events`` streams of each session; a page that stops reading loses events, never the bot."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Event | None]]] = {}
        self._open = True

    def publish(self, user: str, event: Event) -> None:
        for queue in self._queues.get(user, ()):
            _offer(queue, event)

    def close(self) -> None:
        """End every stream (pages reconnect when the bot is back)."""
        self._open = False
        for queues in self._queues.values():
            for queue in queues:
                _offer(queue, None)

    async def serve(self, request: web.Request, response: web.StreamResponse, user: str) -> None:
        """Write the session's events to ``response`` until the page goes away or the bot stops."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=STREAM_QUEUE)
        self._queues.setdefault(user, set()).add(queue)
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            while self._open:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if event is None:
                    break
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
        except ConnectionError:
            pass  # the page went away
        finally:
            queues = self._queues.get(user)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[user]


class WebReply:
    """One playground request's answer (the lifecycle's ``Reply``): progress events for its ``task``, then
    exactly one final event ("done", "awaiting_confirmation" or "failed") and the JSON body of the request."""

    def __init__(self, streams: EventStreams, user: str, task: str):
        self._streams = streams
        self._user = user
        self.task = task
        self.response: web.Response | None = None
        self.error: ImageBotError | None = None  # the failure being answered (its kind picks the HTTP status)

    def watching(self, work: Work) -> Work:
        """``work``, remembering the ``ImageBotError`` it fails with (its kind picks the HTTP status)."""

        async def run(progress: ProgressSink) -> JobOutcome | None:
            try:
                return await work(progress)
            except ImageBotError as exc:
                self.error = exc
                raise

        return run

    def accepted(self) -> None:
        self._publish({"status": "accepted"})

    async def progress(self, update: Progress) -> None:
        # "done" and "failed" are published with the answer, so each task ends exactly once
        if update.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return
        event: Event = {"status": update.status.value}
        if update.position is not None:
            event["position"] = update.position
            event["queue_length"] = update.queue_length
            event["text"] = queue_text(update.position, update.eta_seconds)
            if update.eta_seconds is not None:
                event["eta_seconds"] = round(update.eta_seconds, 1)
        if update.job_id is not None:
            event["job"] = update.job_id
        if update.preview is not None:
            if len(update.preview) > PREVIEW_LIMIT:
                return
            event["preview"] = await asyncio.to_thread(render.data_url, update.preview)
        self._publish(event)

    async def finish(self, outcome: JobOutcome) -> None:
        try:
            body = render.outcome(outcome)
        except ImageBotError as exc:
            self.error = exc
            raise
        self.answer(web.json_response({"task": self.task, **body}), {"status": body["status"], "job": outcome.job.id})

    async def fail(self, text: str) -> None:
        error = self.error if self.error is not None else ImageBotError()
        self.answer(error_response(error, text), {"status": "failed", "message": text})

    def answer(self, response: web.Response, event: Event) -> None:
        """The final answer: once (a second one would be a bug in the caller, and is dropped)."""
        if self.response is not None:
            return
        self.response = response
        self._publish(event)

    def _publish(self, event: Event) -> None:
        self._streams.publish(self._user, {"task": self.task, **event})


def _offer(queue: asyncio.Queue[Event | None], event: Event | None) -> None:
    if event is None and queue.full():
        queue.get_nowait()  # the end-of-stream marker must get through
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(event)
