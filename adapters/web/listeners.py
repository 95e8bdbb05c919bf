"""The playground's routes: each job route reads its request and runs it through the lifecycle's ``answer`` with
a ``WebReply``; the others serve the page, its settings, the event stream, history and result images."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.common import i18n
from adapters.common.access import AccessPolicy, Requester
from adapters.common.flags import parse_imagine
from adapters.common.i18n import _
from adapters.common.lifecycle import Work, answer, fail
from adapters.common.words import region_label
from bot import imaging
from bot.bootstrap import Core
from bot.errors import InvalidRequestError, UnexpectedError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import EditRequest, GenerateRequest, Job, JobContext, JobStatus, VaryRequest
from bot.ports import ProgressSink
from bot.text import N_

from . import render
from .files import read_form, text_field, upload
from .page_text import page_strings
from .replies import EventStreams, WebReply
from .session import STARTING, USER_KEY, remember

log = logging.getLogger(__name__)

HISTORY_LIMIT = 30  # past jobs shown again when a page is reloaded
STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"index.html": "text/html", "app.css": "text/css", "app.js": "text/javascript"}
NOT_OUR_REQUEST = N_("That request was not in the form the playground sends.")
Start = Callable[[JobContext, ProgressSink], Awaitable[JobOutcome]]
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def read_assets() -> dict[str, bytes]:
    """The page's files (blocking: call in a thread)."""
    return {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}


class Listeners:
    """Route handlers over the core; a session (cookie) is a user, and sees only its own jobs."""

    def __init__(self, core: Core, streams: EventStreams, *, max_upload_bytes: int):
        self.core = core
        self.streams = streams
        self.assets: dict[str, bytes] = {}
        self.max_upload_bytes = max_upload_bytes
        self._policy = AccessPolicy(core.settings.discord, core.settings.slack)

    # --- the page -------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._asset("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "index.html" or name not in ASSETS:
            raise web.HTTPNotFound()
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        body = self.assets.get(name)
        if body is None:
            return web.Response(status=503, text=_(STARTING) + "\n")
        return web.Response(
            body=body,
            content_type=ASSETS[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def config(self, request: web.Request) -> web.StreamResponse:
        core = self.core
        default_model, spec = core.catalog.resolve(None)
        no_quality = _(N_("none for {model}", model=default_model))
        flags = [  # the chat line's flags and the values the default model takes (the help lists them)
            {"name": "--n", "values": _(N_("1 to {count} images", count=spec.max_n))},
            {"name": "--size", "values": ", ".join(spec.sizes)},
            {"name": "--quality", "values": ", ".join(spec.qualities) or no_quality},
            {"name": "--model", "values": ", ".join(core.catalog.names)},
        ]
        return web.json_response(
            {
                "provider": core.provider.name,
                "offline": core.provider.offline,
                "default_model": default_model,
                "flags": flags,
                "models": list(core.catalog.names),
                "regions": list(imaging.REGION_NAMES),
                "region_labels": {name: region_label(name) for name in imaging.REGION_NAMES},
                "locale": i18n.current().replace("_", "-"),
                "strings": page_strings(),
                "default_n": core.settings.default_n,
                "max_upload_bytes": self.max_upload_bytes,
            }
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events for this session: ``{"task", "status", "position", ...}`` per change."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        remember(request, response)
        await self.streams.serve(request, response, request[USER_KEY])
        return response

    async def history(self, request: web.Request) -> web.StreamResponse:
        """This session's recent jobs, oldest first, for a reloaded page: results, and the jobs that failed or
        that a restart cut off (showing one tells its requester, so it counts as notified)."""
        jobs = await self.core.jobs.history(user=f"web:{request[USER_KEY]}", limit=HISTORY_LIMIT)
        entries: list[dict[str, Any]] = []
        for job in reversed(jobs):
            entry = render.history_entry(job)
            if entry is None:
                continue
            entries.append(entry)
            if job.status is JobStatus.INTERRUPTED and job.notified_at is None:
                await self.core.jobs.mark_notified(job.id)
        return web.json_response({"jobs": entries})

    # --- job requests ---------------------------------------------------------------------------------------

    async def imagine(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            command = parse_imagine(_text(await _json(request), "text"))
            n = command.n if command.n is not None else self.core.settings.default_n
            generate = GenerateRequest(
                prompt=command.prompt, n=n, size=command.size, quality=command.quality, model=command.model
            )
            return await self.core.jobs.submit(ctx, generate, sink)

        return await self._answer(request, work)

    async def edit(self, request: web.Request) -> web.StreamResponse:
        """An uploaded image with a prompt (and a mask or region); with flags only, variations of it."""

        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            form = await read_form(request, self.max_upload_bytes)
            image = upload(form, "image")
            mask = upload(form, "mask", "mask") if "mask" in form else None
            region = text_field(form, "region").strip() or None
            if mask is not None and region is not None:
                raise InvalidRequestError(N_("Pick either a region or a mask, not both."))
            if region is not None:
                imaging.parse_region(region)  # a wrong name fails here, before the upload is stored
            command = parse_imagine(text_field(form, "prompt"))
            n = self._count(form, command.n)
            if not command.prompt.strip() and mask is None and region is None:  # "--n 2" with a picture
                vary = VaryRequest(image=image, n=n, size=command.size, model=command.model)
                return await self.core.jobs.submit(ctx, vary, sink)
            edit = EditRequest(
                images=(image,),
                prompt=command.prompt,
                mask=mask,
                region=region,
                n=n,
                size=command.size,
                quality=command.quality,
                model=command.model,
            )
            return await self.core.jobs.submit(ctx, edit, sink)

        return await self._answer(request, work)

    async def vary(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            form = await read_form(request, self.max_upload_bytes)
            image = upload(form, "image")
            command = parse_imagine(text_field(form, "prompt"))
            vary = VaryRequest(
                image=image,
                n=self._count(form, command.n),
                prompt=command.prompt or None,
                size=command.size,
                model=command.model,
            )
            return await self.core.jobs.submit(ctx, vary, sink)

        return await self._answer(request, work)

    async def reroll(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            job = await self._own_job(request)
            return await self.core.jobs.reroll(job.id, ctx, sink)

        return await self._answer(request, work)

    async def remix(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            job = await self._own_job(request)
            prompt = _text(await _json(request), "prompt")
            if not prompt.strip():
                raise InvalidRequestError(N_("Please describe the image you want: the prompt is empty."))
            return await self.core.jobs.remix(job.id, prompt, ctx, sink)

        return await self._answer(request, work)

    async def vary_result(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            job = await self._own_job(request)
            body = await _json(request) if request.can_read_body else {}
            strength = _text(body, "strength") or None  # Vary (Subtle) / Vary (Strong) under an upscaled image
            return await self.core.jobs.vary_result(job.id, _index(request, job), ctx, sink, strength=strength)

        return await self._answer(request, work)

    async def upscale(self, request: web.Request) -> web.StreamResponse:
        """U: one image of a result on its own, with its title, for the upscale tools (no new job)."""
        reply = self._reply(request)

        async def work(sink: ProgressSink) -> None:
            job = await self._own_job(request)
            index = _index(request, job)
            if job.results_pruned or index > len(job.results):
                raise JobNotFoundError(detail=f"job {job.id} has no stored image {index}")
            body = {"task": reply.task, **render.upscaled(job, index)}
            reply.answer(web.json_response(body), {"status": "upscaled", "job": job.id})

        return await self._run(reply, work)

    async def outpaint(self, request: web.Request) -> web.StreamResponse:
        """Zoom out (``{"zoom": 1.5 | 2}``) or Pan (``{"pan": "left" | "right" | "up" | "down"}``) an image."""

        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            job = await self._own_job(request)
            body = await _json(request)
            zoom, pan = body.get("zoom"), body.get("pan")
            if not (isinstance(zoom, int | float) and not isinstance(zoom, bool)) and zoom is not None:
                raise InvalidRequestError(NOT_OUR_REQUEST)
            if pan is not None and not isinstance(pan, str):
                raise InvalidRequestError(NOT_OUR_REQUEST)
            factor = float(zoom) if zoom is not None else None
            return await self.core.jobs.outpaint(job.id, _index(request, job), ctx, sink, zoom=factor, pan=pan)

        return await self._answer(request, work)

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        async def work(ctx: JobContext, sink: ProgressSink) -> JobOutcome:
            job = await self._own_job(request)
            return await self.core.jobs.confirm(job.id, ctx, sink)

        return await self._answer(request, work)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        reply = self._reply(request)

        async def work(sink: ProgressSink) -> None:
            job = await self.core.jobs.cancel((await self._own_job(request)).id)
            body = {"task": reply.task, "status": "cancelled", "job": render.job_info(job)}
            reply.answer(web.json_response(body), {"status": "cancelled", "job": job.id})

        return await self._run(reply, work)

    async def image(self, request: web.Request) -> web.StreamResponse:
        """One result image; ``?download=1`` makes it an attachment. Serving it marks the job delivered."""
        job = await self._own_job(request)
        image = await self.core.jobs.result_image(job.id, _index(request, job))
        disposition = "attachment" if request.query.get("download") else "inline"
        response = web.Response(
            body=image.data,
            content_type=image.mime_type,
            headers={
                "Content-Disposition": f'{disposition}; filename="{image.filename}"',
                "Cache-Control": "private, max-age=86400, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )
        remember(request, response)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the page went away before it got the image: not delivered
        if job.status is JobStatus.DONE:
            await self.core.jobs.mark_delivered(job.id)
        return response

    # --- the lifecycle ----------------------------------------------------------------------------------------

    async def _answer(self, request: web.Request, start: Start) -> web.Response:
        """Run a job request for this session to exactly one answer (its JSON body; progress on its task)."""
        context = JobContext(platform="web", user=request[USER_KEY])

        async def work(sink: ProgressSink) -> JobOutcome:
            return await start(context, sink)

        return await self._run(self._reply(request), work)

    def _reply(self, request: web.Request) -> WebReply:
        task = request.query.get("task", "")
        if not _TASK_ID.fullmatch(task):
            task = secrets.token_hex(6)
        reply = WebReply(self.streams, request[USER_KEY], task)
        reply.accepted()
        return reply

    async def _run(self, reply: WebReply, work: Work) -> web.Response:
        await answer(reply, reply.watching(work))
        if reply.response is None:  # the work answered nothing: a bug, told as one
            await fail(reply, UnexpectedError(detail="a playground request ended without an answer"))
        assert reply.response is not None  # noqa: S101 (WebReply.fail always answers)
        return reply.response

    async def _own_job(self, request: web.Request) -> Job:
        """The job a route names, if this session asked for it; any other job answers like an unknown one."""
        job_id = request.match_info["job"]
        job = await self.core.jobs.find(job_id)
        who = Requester(platform="web", user=request[USER_KEY])
        if job is None or self._policy.may_press(job, who) is not None:
            raise JobNotFoundError(detail=f"no playground job {job_id[:20]!r} of this session")
        return job

    def _count(self, form: dict[str, bytes], from_flags: int | None) -> int:
        if from_flags is not None:
            return from_flags
        text = text_field(form, "n").strip()
        if not text:
            return self.core.settings.default_n
        try:
            return int(text)
        except ValueError:
            raise InvalidRequestError(N_("The number of images must be a whole number, like 2.")) from None


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError(NOT_OUR_REQUEST) from None
    if not isinstance(body, dict):
        raise InvalidRequestError(NOT_OUR_REQUEST)
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequestError(NOT_OUR_REQUEST)
    return value


def _index(request: web.Request, job: Job) -> int:
    text = request.match_info["index"]
    index = int(text) if text.isdigit() and len(text) <= 3 else 0
    if not 1 <= index <= max(len(job.results), 1):
        raise JobNotFoundError(detail=f"job {job.id} has no image {text[:5]!r}")
    return index
