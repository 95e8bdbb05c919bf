"""The local playground: a chat page that behaves like the bot in Discord, over a JSON API on the shared core.

A browser session is a user (a random id in a cookie). Each job request is one POST that answers with the
finished job (or a friendly error); while it runs, queue position and state arrive on the session's
server-sent event stream (``GET /api/events``), keyed by the ``task`` id the page chose for the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yarl
from aiohttp import BodyPartReader, web

from adapters.base import AdapterState
from bot import imaging
from bot.bootstrap import Core
from bot.budgets import format_dollars
from bot.errors import ImageBotError, InvalidImageError, InvalidRequestError, UnexpectedError
from bot.jobs import JobNotFoundError, JobOutcome
from bot.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    Job,
    JobContext,
    JobStatus,
    Progress,
    StoredImage,
    VaryRequest,
)
from bot.ports import ProgressSink

from .commands import parse_imagine

log = logging.getLogger(__name__)

SESSION_COOKIE = "imagebot_session"
CSRF_HEADER = "X-Imagebot"  # a custom header: a cross-site form or img tag cannot send it without CORS
HEARTBEAT_SECONDS = 15.0
HISTORY_LIMIT = 30  # finished jobs shown again when a page is reloaded
PREVIEW_LIMIT = 1_500_000  # bytes: a larger preview is not sent to the page (it would clog the event stream)
STATIC_DIR = Path(__file__).parent / "static"
_ASSETS = {"index.html": "text/html", "app.css": "text/css", "app.js": "text/javascript"}
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
USER_KEY = web.RequestKey("imagebot_user", str)
NEW_SESSION_KEY = web.RequestKey("imagebot_new_session", bool)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_STATUS_BY_KIND = {
    "invalid_input": 400,
    "refused_by_safety": 422,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "busy": 503,
    "config_error": 503,
    "provider_outage": 502,
}
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Event = dict[str, Any]


class UploadTooLargeError(InvalidImageError):
    """An upload over the size limit, refused while it streams in (before anything decodes it)."""


def error_response(exc: ImageBotError) -> web.Response:
    """The one place an error becomes what the page shows: the friendly text with its reference id."""
    status = _STATUS_BY_KIND.get(exc.kind, 500)
    if isinstance(exc, JobNotFoundError):
        status = 404
    elif isinstance(exc, UploadTooLargeError):
        status = 413
    body = {"error": {"kind": exc.kind, "message": exc.friendly(), "ref": exc.ref, "retryable": exc.retryable}}
    return web.json_response(body, status=status)


class Playground:
    """The playground adapter: routes on the shared web app, state for /healthz."""

    def __init__(self, core: Core, *, password: str | None = None, local_only: bool = True):
        self.core = core
        self._password = password
        self._local_only = local_only and password is None  # with a password, any Host may reach it
        self._state = AdapterState.STARTING
        self._assets: dict[str, bytes] = {}
        self._streams: dict[str, set[asyncio.Queue[Event | None]]] = {}
        self.max_upload_bytes = core.settings.imaging.max_input_bytes
        self._max_form_bytes = 2 * self.max_upload_bytes + 1024 * 1024  # an image, a mask, a few text fields

    # --- the Adapter protocol ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "playground"

    @property
    def state(self) -> AdapterState:
        return self._state

    async def start(self) -> None:
        """Read the page's files (in a thread) and start serving; the web server is already listening."""
        self._assets = await asyncio.to_thread(_read_assets)
        self._state = AdapterState.CONNECTED

    async def stop(self) -> None:
        """End every progress stream (pages reconnect when the bot is back)."""
        self._state = AdapterState.STOPPED
        for queues in self._streams.values():
            for queue in queues:
                _offer(queue, None)

    # --- wiring -------------------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add the playground's routes and its middleware (auth, session, errors) to the web app."""
        app.middlewares.append(self._middleware)
        router = app.router
        router.add_get("/", self._page)
        router.add_get("/static/{name}", self._static)
        router.add_get("/api/config", self._config)
        router.add_get("/api/events", self._events)
        router.add_get("/api/history", self._history)
        router.add_post("/api/imagine", self._imagine)
        router.add_post("/api/edit", self._edit)
        router.add_post("/api/vary", self._vary)
        router.add_post("/api/jobs/{job}/reroll", self._reroll)
        router.add_post("/api/jobs/{job}/remix", self._remix)
        router.add_post("/api/jobs/{job}/vary/{index}", self._vary_result)
        router.add_post("/api/jobs/{job}/confirm", self._confirm)
        router.add_post("/api/jobs/{job}/cancel", self._cancel)
        router.add_get("/api/jobs/{job}/images/{index}", self._image)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path == "/" or path.startswith(("/api/", "/static/"))):
            return await handler(request)  # /healthz and whatever else shares the server
        if self._local_only and not _is_local_host(request.host):
            return web.Response(status=421, text="This playground answers only on localhost.\n")
        if self._password is not None and not _authorised(request, self._password):
            return web.Response(
                status=401,
                text="The playground needs its password (IMAGEBOT_WEB_PASSWORD).\n",
                headers={"WWW-Authenticate": 'Basic realm="imagebot playground", charset="UTF-8"'},
            )
        user = request.cookies.get(SESSION_COOKIE, "")
        request[NEW_SESSION_KEY] = not _SESSION_ID.fullmatch(user)
        request[USER_KEY] = secrets.token_urlsafe(18) if request[NEW_SESSION_KEY] else user
        try:
            if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
                raise InvalidRequestError(
                    "Please use the playground page to send requests.", detail="POST without the X-Imagebot header"
                )
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(self._too_large())
        except web.HTTPException:
            raise
        except ImageBotError as exc:
            if exc.kind == "invalid_input":  # job failures are logged by the core already
                log.info("playground request refused: %s", exc.log_line())
            response = error_response(exc)
        except Exception as exc:  # a bug: the generic apology, details only in the log
            wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
            log.exception("playground %s %s failed (ref %s)", request.method, path, wrapped.ref)
            response = error_response(wrapped)
        if not response.prepared:
            _remember(request, response)
        return response

    # --- page and settings -----------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._asset("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "index.html" or name not in _ASSETS:
            raise web.HTTPNotFound()
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        body = self._assets.get(name)
        if body is None:
            return web.Response(status=503, text="The playground is starting; reload in a moment.\n")
        return web.Response(
            body=body,
            content_type=_ASSETS[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def _config(self, request: web.Request) -> web.StreamResponse:
        settings = self.core.settings
        return web.json_response(
            {
                "provider": self.core.provider.name,
                "offline": self.core.provider.offline,
                "default_model": self.core.catalog.resolve(None)[0],
                "models": list(self.core.catalog.names),
                "regions": list(imaging.REGION_NAMES),
                "default_n": settings.default_n,
                "max_upload_bytes": self.max_upload_bytes,
            }
        )

    # --- progress ------------------------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events for this browser session: ``{"task", "status", "position", ...}`` per change."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        _remember(request, response)
        user = request[USER_KEY]
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=256)
        self._streams.setdefault(user, set()).add(queue)
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            while self._state is not AdapterState.STOPPED:
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
            queues = self._streams.get(user)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._streams[user]
        return response

    def _publish(self, user: str, event: Event) -> None:
        for queue in self._streams.get(user, ()):
            _offer(queue, event)

    def _sink(self, user: str, task: str) -> ProgressSink:
        async def report(update: Progress) -> None:
            # "done" and "failed" are published with the answer, so each task ends exactly once
            if update.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                event: Event = {"task": task, "status": update.status.value}
                if update.position is not None:
                    event["position"] = update.position
                    event["queue_length"] = update.queue_length
                if update.preview is not None:
                    if len(update.preview) > PREVIEW_LIMIT:
                        return
                    event["preview"] = await asyncio.to_thread(_data_url, update.preview)
                self._publish(user, event)

        return report

    # --- jobs -----------------------------------------------------------------------------------------------

    async def _job_request(
        self, request: web.Request, start: Callable[[JobContext, ProgressSink], Awaitable[JobOutcome]]
    ) -> web.Response:
        """Run a job for this session, with progress events, and answer with its images (or the error)."""
        user = request[USER_KEY]
        task = request.query.get("task", "")
        if not _TASK_ID.fullmatch(task):
            task = secrets.token_hex(6)
        context = JobContext(platform="web", user=user)
        self._publish(user, {"task": task, "status": "accepted"})
        try:
            outcome = await start(context, self._sink(user, task))
            body = self._outcome(outcome)
        except ImageBotError as exc:
            self._publish(user, {"task": task, "status": "failed", "message": exc.friendly()})
            raise
        except Exception as exc:
            wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
            log.exception("playground job for web:%s failed (ref %s)", user, wrapped.ref)
            self._publish(user, {"task": task, "status": "failed", "message": wrapped.friendly()})
            raise wrapped from None
        self._publish(user, {"task": task, "status": body["status"], "job": outcome.job.id})
        return web.json_response({"task": task, **body})

    def _outcome(self, outcome: JobOutcome) -> dict[str, Any]:
        job = outcome.job
        if outcome.needs_confirmation:
            estimate = job.estimated_cost
            return {
                "status": "awaiting_confirmation",
                "job": _job_info(job),
                "estimate_usd": estimate,
                "estimate_text": None if estimate is None else f"about {format_dollars(estimate)}",
            }
        if outcome.result is None:
            raise InvalidRequestError(
                "You asked for exactly this a moment ago and it isn't finished yet; it will show up there.",
                detail=f"duplicate of job {job.id} ({job.status}) without a result here",
            )
        info = _job_info(job)
        info["prompt"] = job.prompt if job.kind != "vary" else outcome.result.prompt
        return {
            "status": "done",
            "job": info,
            "duplicate": outcome.duplicate,
            "images": _images(job.id, outcome.result.images),
            "notice": outcome.result.notice,
        }

    async def _history(self, request: web.Request) -> web.StreamResponse:
        """This session's recent finished jobs, oldest first: the page shows them again after a reload."""
        jobs = await self.core.jobs.history(user=f"web:{request[USER_KEY]}", limit=HISTORY_LIMIT)
        shown = [
            job
            for job in reversed(jobs)
            if job.status in (JobStatus.DONE, JobStatus.DELIVERED) and job.results and not job.results_pruned
        ]
        return web.json_response(
            {
                "jobs": [
                    {"status": "done", "job": _job_info(job), "images": _images(job.id, job.results)} for job in shown
                ]
            }
        )

    async def _imagine(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        command = parse_imagine(_text(body, "text"))
        n = command.n if command.n is not None else self.core.settings.default_n
        generate = GenerateRequest(
            prompt=command.prompt, n=n, size=command.size, quality=command.quality, model=command.model
        )
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.submit(ctx, generate, sink))

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        image = _upload(form, "image")
        mask = _upload(form, "mask", "mask") if "mask" in form else None
        region = _field(form, "region").strip() or None
        if mask is not None and region is not None:
            raise InvalidRequestError("Pick either a region or a mask, not both.")
        if region is not None:
            imaging.parse_region(region)  # a wrong name fails here, before the upload is stored
        command = parse_imagine(_field(form, "prompt"))
        edit = EditRequest(
            images=(image,),
            prompt=command.prompt,
            mask=mask,
            region=region,
            n=self._count(form, command.n),
            size=command.size,
            quality=command.quality,
            model=command.model,
        )
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.submit(ctx, edit, sink))

    async def _vary(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        image = _upload(form, "image")
        command = parse_imagine(_field(form, "prompt"))
        vary = VaryRequest(
            image=image,
            n=self._count(form, command.n),
            prompt=command.prompt or None,
            size=command.size,
            model=command.model,
        )
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.submit(ctx, vary, sink))

    async def _reroll(self, request: web.Request) -> web.StreamResponse:
        job = await self._web_job(request)
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.reroll(job.id, ctx, sink))

    async def _remix(self, request: web.Request) -> web.StreamResponse:
        job = await self._web_job(request)
        prompt = _text(await _json(request), "prompt")
        if not prompt.strip():
            raise InvalidRequestError("Please describe the image you want: the prompt is empty.")
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.remix(job.id, prompt, ctx, sink))

    async def _vary_result(self, request: web.Request) -> web.StreamResponse:
        job = await self._web_job(request)
        index = _index(request, job)
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.vary_result(job.id, index, ctx, sink))

    async def _confirm(self, request: web.Request) -> web.StreamResponse:
        job = await self._web_job(request)
        return await self._job_request(request, lambda ctx, sink: self.core.jobs.confirm(job.id, ctx, sink))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        job = await self.core.jobs.cancel((await self._web_job(request)).id)
        return web.json_response({"status": "cancelled", "job": _job_info(job)})

    async def _image(self, request: web.Request) -> web.StreamResponse:
        """One result image; ``?download=1`` makes it an attachment. Serving it marks the job delivered."""
        job = await self._web_job(request)
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
        _remember(request, response)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the page went away before it got the image: not delivered
        if job.status is JobStatus.DONE:
            await self.core.jobs.mark_delivered(job.id)
        return response

    # --- request parsing ----------------------------------------------------------------------------------

    async def _web_job(self, request: web.Request) -> Job:
        job_id = request.match_info["job"]
        job = await self.core.jobs.find(job_id)
        if job is None or job.context.platform != "web":
            raise JobNotFoundError(detail=f"no playground job {job_id[:20]!r}")
        return job

    def _count(self, form: dict[str, bytes], from_flags: int | None) -> int:
        text = _field(form, "n").strip()
        if from_flags is not None:
            return from_flags
        if not text:
            return self.core.settings.default_n
        try:
            return int(text)
        except ValueError:
            raise InvalidRequestError("The number of images must be a whole number, like 2.") from None

    def _too_large(self) -> UploadTooLargeError:
        limit = self.max_upload_bytes / 1e6
        return UploadTooLargeError(f"That upload is too large; the limit is {limit:g} MB per image.")

    async def _form(self, request: web.Request) -> dict[str, bytes]:
        """A multipart form's fields as bytes, each capped at the upload limit (read as it streams in)."""
        if not request.content_type.startswith("multipart/"):
            raise InvalidRequestError("Send the image as a file upload.", detail=f"content type {request.content_type}")
        reader = await request.multipart()
        fields: dict[str, bytes] = {}
        total = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name or part.name in fields or len(fields) >= 8:
                raise InvalidRequestError("That upload was not in the form the playground sends.")
            chunks: list[bytes] = []
            size = 0
            while chunk := await part.read_chunk(256 * 1024):
                size += len(chunk)
                total += len(chunk)
                if size > self.max_upload_bytes or total > self._max_form_bytes:
                    raise self._too_large()
                chunks.append(chunk)
            fields[part.name] = b"".join(chunks)
        return fields


# --- helpers ------------------------------------------------------------------------------------------------


def _data_url(image: bytes) -> str:
    """A ``data:`` URL for a preview image (base64 in a worker thread)."""
    mime = imaging.MIME.get(imaging.sniff_format(image) or "png", "image/png")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def _read_assets() -> dict[str, bytes]:
    return {name: (STATIC_DIR / name).read_bytes() for name in _ASSETS}


def _offer(queue: asyncio.Queue[Event | None], event: Event | None) -> None:
    """Queue an event for a page; a page that stopped reading loses events rather than stalling the bot."""
    if event is None and queue.full():
        queue.get_nowait()  # the end-of-stream marker must get through
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(event)


def _remember(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(NEW_SESSION_KEY):
        response.set_cookie(
            SESSION_COOKIE, request[USER_KEY], max_age=365 * 86_400, httponly=True, samesite="Strict", path="/"
        )


def _is_local_host(host: str) -> bool:
    """Is the Host header a loopback name? (Stops DNS-rebinding pages from reaching a password-less bot.)"""
    try:
        name = yarl.URL(f"http://{host}/").host or ""
    except ValueError:
        return False
    return name.strip("[]").lower() in _LOCAL_HOSTS


def _authorised(request: web.Request, password: str) -> bool:
    """HTTP Basic auth with any user name and the shared password."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given = decoded.partition(":")[2]
    return secrets.compare_digest(given.encode(), password.encode())


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("That request was not in the form the playground sends.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("That request was not in the form the playground sends.")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequestError("That request was not in the form the playground sends.")
    return value


def _field(form: dict[str, bytes], key: str) -> str:
    try:
        return form.get(key, b"").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"The {key} field must be text.") from None


def _upload(form: dict[str, bytes], key: str, what: str = "image") -> bytes:
    data = form.get(key)
    if data is None:
        raise InvalidImageError(f"Attach the {what} first (PNG, JPEG, WebP or GIF).")
    if not data:
        raise InvalidImageError(
            f"That {what} file is empty (0 bytes). Attach the {what} again, as a PNG, JPEG, WebP or GIF.",
            detail=f"empty {key} upload",
        )
    return data


def _index(request: web.Request, job: Job) -> int:
    text = request.match_info["index"]
    index = int(text) if text.isdigit() and len(text) <= 3 else 0
    if not 1 <= index <= max(len(job.results), 1):
        raise JobNotFoundError(detail=f"job {job.id} has no image {text[:5]!r}")
    return index


def _job_info(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "prompt": job.prompt,
        "model": job.model,
        "n": job.images_requested,
        "created_at": job.created_at,
    }


def _images(job_id: str, images: Sequence[GeneratedImage | StoredImage]) -> list[dict[str, Any]]:
    base = f"/api/jobs/{job_id}/images"
    return [
        {
            "index": index,
            "url": f"{base}/{index}",
            "download": f"{base}/{index}?download=1",
            "width": image.width,
            "height": image.height,
            "alt": image.alt_text,
            "filename": image.filename,
        }
        for index, image in enumerate(images, start=1)
    ]
