"""JobService: every image request becomes a durable job — deduplicated, budgeted, stored, delivered once.

Adapters call ``submit`` (and ``reroll``, ``vary_result``, ``remix``, ``confirm`` for buttons, which find
the job by id in the store, so they keep working after a restart); they call ``mark_delivered`` once the
images are posted, and ``undelivered`` at start-up to post what a previous process paid for but never sent.

Any process finishes any job. A job being worked on (waiting, running, or just finished and being posted) is
owned by one process: its id in ``owner``, a lease in ``lease_until`` that the owner renews every heartbeat
(``keep_leases``). When a process dies its leases run out, and the next sweep of another process takes its jobs
over (``take_over``, atomically in the store) and carries each one to exactly one answer:

- ``queued``: never reached the image service (a job is marked ``running`` before the upstream call is made),
  so running it again cannot pay twice: it is re-run here, then delivered.
- ``running`` with an answer in its spool: finished from the spool (charged once, at its actual cost).
- ``running`` without one: the upstream may have made (and billed) the images whose answer died with the
  process, so it is not re-run (that could bill the user twice); it becomes ``interrupted`` and its requester
  is told honestly (at no cost if nothing had arrived, at its estimate if the answer had begun to arrive).
- ``done`` but not delivered, ``interrupted`` but not told: the adapters of this process post or tell it.

Adapters register a ``deliverer`` per platform: it is woken after a take-over to post what is now this
process's to deliver (``undelivered``/``cut_off`` list only the jobs this process owns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import imaging
from bot.budgets import check_budgets
from bot.catalog import nearest_size
from bot.errors import ImageBotError, InvalidRequestError, JobCancelledError, TooLateToCancelError
from bot.metrics import Metrics, current_request
from bot.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageResult,
    Job,
    JobContext,
    JobStatus,
    Origin,
    Progress,
    StoredImage,
    VaryRequest,
    WriteAhead,
)
from bot.ports import JobStore, ProgressSink
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings
from bot.store import ResultFiles
from bot.text import N_

log = logging.getLogger(__name__)
# Spools to set aside once their job's images are stored: nobody waits for that, so it is done one at a time off
# the event loop without an asyncio future (submitting wakes only this thread; a hop and back would wake the loop).
_JANITOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="janitor")

Request = GenerateRequest | EditRequest | VaryRequest
OUTPAINT_KINDS = ("zoom", "pan")  # edits of an outpainting canvas, recorded as their own kinds
OUTPAINT_PROMPT = "Extend this image beyond its borders, matching its subject, style and lighting."
VARIATION_STRENGTHS = ("subtle", "strong")
_ID_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"
# How long the process that ran a request keeps the lease of its result while its adapter posts it; past that
# (a post that failed and was never retried) the lease runs out and a sweep redelivers it.
DELIVERY_HOLD_SECONDS = 300.0
Deliverer = Callable[[], Awaitable[None]]
ETA_SAMPLE = 200  # newest jobs looked at for run durations
ETA_RUNS = 20  # the median is taken over at most this many recent runs of the same model and quality
ETA_CACHE_SECONDS = 30.0


def new_job_id() -> str:
    """Ten url-safe characters: short enough for a button's custom_id, ~50 bits of randomness."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


class JobNotFoundError(InvalidRequestError):
    """A button or command named a job the store does not have (or whose files were cleaned up)."""

    default_message = N_("I can't find that image any more (old results are cleaned up after a while).")


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a submission led to: the job, and its images unless it is waiting for the user's confirmation."""

    job: Job
    result: ImageResult | None
    duplicate: bool = False  # an identical request was already waiting or running: this is that job

    @property
    def needs_confirmation(self) -> bool:
        return self.job.status is JobStatus.AWAITING_CONFIRMATION


class JobService:
    """Runs image requests as jobs recorded in a ``JobStore``, with files under ``ResultFiles``."""

    def __init__(
        self,
        *,
        images: ImageService,
        store: JobStore,
        files: ResultFiles,
        jobs: JobSettings,
        budgets: BudgetSettings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ):
        self.images = images
        self.metrics = metrics or images.metrics
        self.store = store
        self.files = files
        self._settings = jobs
        self._budgets = budgets
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[ImageResult]] = {}
        self._admission_lock = asyncio.Lock()  # budget check + insert happen as one step
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"  # new at every start
        self._delivering: dict[str, float] = {}  # job id -> monotonic deadline: results our adapters are posting
        self._deliverers: dict[str, Deliverer] = {}
        self._reruns: set[asyncio.Task[None]] = set()
        self._run_seconds: dict[tuple[str, str | None], tuple[float, float | None]] = {}  # -> (when, median)
        self._discarding: concurrent.futures.Future[None] | None = None  # the last spool handed to the janitor

    async def start(self, *, take_over_all: bool = True) -> list[Job]:
        """Call once at start-up, before serving: take over what a previous process left (see the module's
        docstring for what becomes of each job). ``take_over_all``: every unfinished job, whatever its lease
        (SQLite: the data folder's lock proves no other process is alive); else only those whose lease ran out
        (PostgreSQL: other processes may be working). Returns the jobs that became interrupted."""
        return await self.take_over(everything=take_over_all)

    async def stop(self) -> None:
        """At a clean exit, after the adapters stopped: cancel re-runs and hand every lease back, so that
        another process takes over what is left at once instead of after the lease timeout."""
        for task in list(self._reruns):
            task.cancel()
        await asyncio.gather(*self._reruns, return_exceptions=True)
        if self._discarding is not None:
            await asyncio.wrap_future(self._discarding)  # one thread, in order: the others are gone too
        self._delivering.clear()
        try:
            await self.store.release(self.owner)
        except Exception as exc:  # the leases simply run out
            log.warning("could not hand back this process's job leases (%s)", type(exc).__name__)

    def add_deliverer(self, platform: str, deliverer: Deliverer) -> None:
        """``deliverer`` posts this process's undelivered results of ``platform`` and tells its cut-off users;
        it is called after each take-over that gave this process something of ``platform`` to answer."""
        self._deliverers[platform] = deliverer

    def remove_deliverer(self, platform: str) -> None:
        """The platform's adapter stopped: its jobs are left to other processes (or the next start)."""
        self._deliverers.pop(platform, None)

    async def keep_leases(self, *, take_over: bool = True) -> None:
        """Run for the process's life: every heartbeat, renew this process's leases, then (``take_over``) take
        over the jobs whose lease ran out (their process died). One failed round (database away) is logged."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            try:
                await self.heartbeat()
                if take_over:
                    await self.take_over()
            except Exception as exc:  # the next heartbeat tries again
                log.warning("job leases: this round failed (%s)", type(exc).__name__)

    async def heartbeat(self) -> None:
        """Renew the leases of the jobs this process is running or posting."""
        now = time.monotonic()
        for job_id, deadline in list(self._delivering.items()):
            if deadline < now:
                del self._delivering[job_id]
        held = set(self._inflight) | set(self._delivering)
        if not held:
            return
        kept = await self.store.renew(self.owner, held, self._lease_end())
        for job_id in held - kept:  # only if heartbeats were late by more than a lease: say so loudly
            log.error("job %s was taken over by another process while this one still held it", job_id)
            self._delivering.pop(job_id, None)

    async def take_over(self, *, everything: bool = False) -> list[Job]:
        """Claim jobs whose lease ran out (``everything``: all unfinished ones) and carry each to one answer;
        returns those that became interrupted."""
        now = time.time()
        claimed = await self.store.claim_expired(
            self.owner,
            expired_before=math.inf if everything else now,
            lease_until=now + self._settings.lease_seconds,
            platforms=None if everything else tuple(self._deliverers),
        )
        interrupted: list[Job] = []
        answer: set[str] = set()
        for job in claimed:
            if job.id in self._inflight:  # ours all along (a late heartbeat): nothing to take over
                continue
            log.info("job %s (%s, %s): taken over by this process", job.id, job.status.value, job.context.platform)
            if job.status is JobStatus.QUEUED:
                self._rerun(job)
                continue
            if job.status is JobStatus.RUNNING and not await self._finish_from_spool(job):
                job = await self.store.update(job.id, status=JobStatus.INTERRUPTED)
                log.warning("job %s (%s for %s) was interrupted by a restart", job.id, job.kind, job.context.requester)
                interrupted.append(job)
            answer.add(job.context.platform)
        for platform in answer:
            self._wake(platform)
        return interrupted

    async def _finish_from_spool(self, job: Job) -> bool:
        if await asyncio.to_thread(self.files.spool(job.id).exists) and await self._recover(job):
            return True
        await asyncio.to_thread(self.files.discard_spool, job.id)
        return False

    def _rerun(self, job: Job) -> None:
        """Run a taken-over job that never reached the image service, then wake its platform's deliverer."""

        async def rerun() -> None:
            try:
                request = await self._rebuild(job)
                await self._execute(job, request, None, inline=False)
                log.info("job %s: re-run after its process stopped", job.id)
            except ImageBotError as exc:  # told as interrupted: the requester's original reply is gone
                log.warning("job %s: its re-run failed: %s", job.id, exc.log_line())
                await self.store.update(job.id, status=JobStatus.INTERRUPTED)
            except Exception:  # a bug: _execute has already cut the job off (interrupted), so its user is told
                log.exception("job %s: its re-run failed unexpectedly", job.id)
            self._wake(job.context.platform)

        task = asyncio.create_task(rerun(), name=f"rerun-{job.id}")
        self._reruns.add(task)
        task.add_done_callback(self._reruns.discard)

    def _wake(self, platform: str) -> None:
        deliverer = self._deliverers.get(platform)
        if deliverer is not None:
            task = asyncio.create_task(self._deliver(platform, deliverer), name=f"deliver-{platform}")
            self._reruns.add(task)
            task.add_done_callback(self._reruns.discard)

    async def _deliver(self, platform: str, deliverer: Deliverer) -> None:
        try:
            await deliverer()
        except Exception as exc:  # the lease runs out and the next sweep tries again
            log.warning("%s: delivering taken-over jobs failed (%s)", platform, type(exc).__name__)

    def _lease_end(self) -> float:
        return time.time() + self._settings.lease_seconds

    async def _recover(self, job: Job) -> bool:
        """Finish a job from its spool; False if the spool holds no usable answer."""
        options = job.request
        try:
            result = await self.images.recover(
                model=job.model or "",
                prompt=job.prompt,
                n=job.images_requested,
                size=_text(options.get("size")),
                quality=_text(options.get("quality")),
                requester=job.context.requester,
                spool=self._write_ahead(job),
            )
        except ImageBotError as exc:
            log.warning("job %s: its spooled answer can't be used: %s", job.id, exc.log_line())
            return False
        await self._store_result(job.id, result)
        log.info("job %s: finished from its spool after a restart (%d image(s))", job.id, len(result.images))
        return True

    # --- submitting -----------------------------------------------------------------------------------------

    async def submit(
        self, context: JobContext, request: Request, progress: ProgressSink | None = None, *, confirmed: bool = False
    ) -> JobOutcome:
        """Validate, check budgets, record and run a request (or join an identical one already running)."""
        request = dataclasses.replace(request, requester=context.requester)
        kind, options, inputs = _describe(request)
        self._trace(context.platform, kind)
        model, count, estimate = self.images.estimate(request)
        digest = _request_hash(kind, options, inputs)
        now = self._clock()
        async with self._admission_lock:
            await check_budgets(
                self.store,
                self._budgets,
                context,
                images=count,
                estimate=estimate,
                now=dt.datetime.fromtimestamp(now, dt.UTC),
            )
            threshold = self._settings.confirm_above_usd
            hold = bool(threshold) and not confirmed and estimate is not None and estimate > threshold
            candidate = Job(
                id=new_job_id(),
                kind=kind,
                context=context,
                request={**options, "inputs": sorted(inputs)},
                request_hash=digest,
                status=JobStatus.AWAITING_CONFIRMATION if hold else JobStatus.QUEUED,
                created_at=now,
                updated_at=now,
                images_requested=count,
                estimated_cost=estimate,
                model=model,
                owner=None if hold else self.owner,
                lease_until=None if hold else self._lease_end(),
            )
            if inputs:
                await asyncio.to_thread(lambda: self.files.write(candidate.id, imaging.without_metadata(inputs)))
            job, is_new = await self.store.submit(candidate, dedupe_since=now - self._settings.dedupe_window)
        if not is_new:
            if inputs:
                await asyncio.to_thread(self.files.delete, candidate.id)
            return await self._join(job)
        if hold:
            log.info("job %s waits for confirmation (estimate $%.3f)", job.id, estimate or 0.0)
            return JobOutcome(job, None)
        return await self._execute(job, request, progress)

    async def confirm(self, job_id: str, context: JobContext, progress: ProgressSink | None = None) -> JobOutcome:
        """The user pressed Confirm on a held job: run it (budgets are checked again, time has passed)."""
        job = await self._job(job_id)
        self._trace(context.platform, job.kind)
        if job.status is not JobStatus.AWAITING_CONFIRMATION:
            return await self._join(job)
        request = await self._rebuild(job)
        async with self._admission_lock:
            await check_budgets(
                self.store,
                self._budgets,
                job.context,
                images=job.images_requested,
                estimate=job.estimated_cost,
                now=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
            )
            job = await self.store.update(
                job.id, status=JobStatus.QUEUED, owner=self.owner, lease_until=self._lease_end()
            )
        return await self._execute(job, request, progress)

    async def cancel(self, job_id: str) -> Job:
        """Take back a job waiting for confirmation or in line: it becomes ``cancelled`` and costs nothing.

        Raises ``TooLateToCancelError`` once its provider call has started (or when it waits in another
        process's line). A job already finished, failed or cancelled is returned as it is.
        """
        job = await self._job(job_id)
        if job.status is JobStatus.AWAITING_CONFIRMATION or (
            job.status is JobStatus.QUEUED and self.images.admission.cancel(job.id)
        ):
            log.info("job %s cancelled by its requester", job.id)
            return await self.store.update(job.id, status=JobStatus.CANCELLED, error_message="cancelled by the user")
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise TooLateToCancelError(detail=f"job {job.id} is {job.status.value}")
        return job

    async def reroll(self, job_id: str, context: JobContext, progress: ProgressSink | None = None) -> JobOutcome:
        """The same request again, as a new job (its title says it is a reroll)."""
        source = await self._job(job_id)
        request = await self._rebuild(source)
        origin = dataclasses.replace(source.origin or Origin(job=source.id), reroll=True)
        request = dataclasses.replace(request, origin=origin)
        return await self.submit(context, request, progress, confirmed=True)

    async def remix(
        self, job_id: str, prompt: str, context: JobContext, progress: ProgressSink | None = None
    ) -> JobOutcome:
        """The same request with a changed prompt."""
        source = await self._job(job_id)
        request = dataclasses.replace(await self._rebuild(source), prompt=prompt)
        if source.origin is None:  # a remix of a zoom, pan or variation keeps that story, with the new prompt
            request = dataclasses.replace(request, origin=Origin(source.id, 0, "remix", about=source.prompt))
        return await self.submit(context, request, progress, confirmed=True)

    async def vary_result(
        self,
        job_id: str,
        index: int,
        context: JobContext,
        progress: ProgressSink | None = None,
        *,
        n: int | None = None,
        prompt: str | None = None,
        strength: str | None = None,
    ) -> JobOutcome:
        """Variations of image ``index`` (1-based) of a finished job (``strength``: "subtle" or "strong")."""
        if strength is not None and strength not in VARIATION_STRENGTHS:
            raise InvalidRequestError(detail=f"unknown variation strength {strength[:20]!r}")
        image = await self.result_image(job_id, index)
        job = await self._job(job_id)
        request = VaryRequest(
            image=image.data,
            n=n if n is not None else job.images_requested,
            prompt=prompt,
            model=job.model,
            requester=context.requester,
            strength=strength,
            origin=Origin(job.id, index, "vary", strength or "", about=_about(job)),
        )
        return await self.submit(context, request, progress, confirmed=True)

    async def outpaint(
        self,
        job_id: str,
        index: int,
        context: JobContext,
        progress: ProgressSink | None = None,
        *,
        zoom: float | None = None,
        pan: str | None = None,
    ) -> JobOutcome:
        """Zoom out (``zoom`` 1.5 or 2) or Pan (``pan`` left/right/up/down) image ``index`` of a finished job: the
        image on a larger canvas whose new part is transparent, sent as an edit at a size the model accepts."""
        if (zoom is None) == (pan is None) or (zoom is not None and zoom not in imaging.ZOOM_FACTORS):
            raise InvalidRequestError(detail=f"outpaint needs one of zoom {imaging.ZOOM_FACTORS} or a pan")
        if pan is not None and pan not in imaging.PAN_DIRECTIONS:
            raise InvalidRequestError(detail=f"unknown pan direction {pan[:20]!r}")
        job = await self._job(job_id)
        image = await self.result_image(job_id, index)
        model, spec = self.images.catalog.resolve(job.model, today=self.images.today())
        if not spec.edits:
            raise InvalidRequestError(
                N_("The model {model} can't extend images (it has no edits). Pick another model.", model=model)
            )
        if zoom is not None:
            extension = imaging.zoom_extension(image.width, image.height, zoom)
            origin = Origin(job.id, index, "zoom", f"{zoom:g}", about=_about(job))
        else:
            extension = imaging.pan_extension(image.width, image.height, pan or "")
            origin = Origin(job.id, index, "pan", pan or "", about=_about(job))
        size = nearest_size(spec, extension.width, extension.height, max_edge=self.images.input_max_edge)
        canvas = await asyncio.to_thread(imaging.outpaint_canvas, image.data, extension, size)
        request = EditRequest(
            images=(canvas,),
            prompt=_about(job) or OUTPAINT_PROMPT,
            n=1,
            size=f"{size[0]}x{size[1]}",
            quality=_text(job.request.get("quality")),  # the source's, so the new part looks like the rest
            model=model,
            requester=context.requester,
            origin=origin,
        )
        return await self.submit(context, request, progress, confirmed=True)

    # --- results and delivery ---------------------------------------------------------------------------------

    async def result_image(self, job_id: str, index: int) -> GeneratedImage:
        """Image ``index`` (1-based) of a finished job, read back from disk."""
        job = await self._job(job_id)
        if job.results_pruned or not 1 <= index <= len(job.results):
            raise JobNotFoundError(detail=f"job {job_id} has no result {index} (pruned={job.results_pruned})")
        stored = job.results[index - 1]
        try:
            data = await asyncio.to_thread(self.files.read, job.id, stored.filename)
        except OSError:
            raise JobNotFoundError(detail=f"result file of job {job_id} is missing") from None
        return _generated(stored, data)

    async def result_of(self, job: Job) -> ImageResult:
        """A stored job's result as the core returned it (for delivery after a restart)."""
        images = [await self.result_image(job.id, i) for i in range(1, len(job.results) + 1)]
        return ImageResult(
            images=tuple(images),
            model=job.model or "",
            provider=job.provider or "",
            prompt=job.prompt,
            cost_usd=job.actual_cost,
        )

    async def undelivered(self, platform: str) -> list[tuple[Job, ImageResult]]:
        """Finished jobs of ``platform`` never delivered that this process took over: adapters post these at
        start-up and when their deliverer is woken."""
        pending: list[tuple[Job, ImageResult]] = []
        for job in await self.store.undelivered(platform, owner=self.owner):
            if job.id in self._delivering or job.id in self._inflight:  # its own request is posting it
                continue
            try:
                pending.append((job, await self.result_of(job)))
            except ImageBotError as exc:
                log.warning("cannot redeliver job %s: %s", job.id, exc.log_line())
        return pending

    async def begin_delivery(self, job_id: str) -> Job:
        """Record that a post of the job's result is about to be made (call before posting): after a crash,
        a job that is undelivered but has attempts may already be on the platform, so look before posting."""
        try:
            return await self.store.begin_delivery(job_id)
        except KeyError:
            raise JobNotFoundError(detail=f"no job {job_id[:20]!r}") from None

    async def cut_off(self, platform: str) -> list[Job]:
        """Jobs of ``platform`` a restart interrupted whose requester has not been told (adapters tell them)."""
        return await self.store.cut_off(platform, owner=self.owner)

    async def mark_notified(self, job_id: str) -> Job:
        return await self.store.update(job_id, notified_at=self._clock())

    async def mark_delivered(self, job_id: str) -> Job:
        self._delivering.pop(job_id, None)
        return await self.store.update(job_id, status=JobStatus.DELIVERED, delivered_at=self._clock())

    async def prune(self) -> int:
        """Delete stored images (results, and uploads of failed jobs) older than the retention period (rows stay)."""
        before = self._clock() - self._settings.retention_days * 86_400
        pruned = 0
        for job in await self.store.prunable(before):
            await asyncio.to_thread(self.files.delete, job.id)
            await self.store.update(job.id, results_pruned=True)
            pruned += 1
        return pruned

    # --- internals --------------------------------------------------------------------------------------------

    async def find(self, job_id: str) -> Job | None:
        """The job with this id (as a button or link carries it), or None for unknown or malformed ids."""
        if not job_id.isalnum() or len(job_id) > 40:
            return None
        return await self.store.get(job_id)

    async def history(self, *, user: str | None = None, limit: int = 20) -> list[Job]:
        """The newest jobs, of one user (``platform:id``) or of everyone."""
        return await self.store.history(user=user, limit=limit)

    def _trace(self, platform: str, kind: str) -> None:
        """Count the request being answered (if a lifecycle traces it) in this core's metrics."""
        trace = current_request()
        if trace is not None:
            trace.bind(self.metrics, platform, kind)

    async def _job(self, job_id: str) -> Job:
        job = await self.find(job_id)
        if job is None:
            raise JobNotFoundError(detail=f"no job {job_id[:20]!r}")
        return job

    async def _join(self, job: Job) -> JobOutcome:
        """An identical request is already known: wait for it instead of paying twice."""
        running = self._inflight.get(job.id)
        if running is not None:
            log.info("duplicate request joins job %s", job.id)
            result = await asyncio.shield(running)
            return JobOutcome(await self._job(job.id), result, duplicate=True)
        if job.status in (JobStatus.DONE, JobStatus.DELIVERED):
            return JobOutcome(job, await self.result_of(job), duplicate=True)
        return JobOutcome(job, None, duplicate=True)

    async def _execute(
        self, job: Job, request: Request, progress: ProgressSink | None, *, inline: bool = True
    ) -> JobOutcome:
        """Run the job; ``inline``: its requester's adapter posts the result (hold the lease while it does)."""
        future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._inflight[job.id] = future
        store = self.store

        run_key = (job.model or "", _text(job.request.get("quality")))

        async def track(update: Progress) -> None:
            if update.status is JobStatus.RUNNING and update.preview is None:  # a preview changes no state
                await store.update(job.id, status=JobStatus.RUNNING, started_at=self._clock())
            if update.status is JobStatus.QUEUED and update.position:  # only a job that waits asks (cached)
                typical = await self.typical_run_seconds(*run_key)
                eta = update.position * typical if typical is not None else None
                update = dataclasses.replace(update, eta_seconds=eta, job_id=job.id)
            if progress is not None:
                await progress(update)

        try:
            result = await self._call(request, track, self._write_ahead(job))
            job = await self._store_result(job.id, result)
            self.metrics.paid(job.context.platform, len(result.images), result.cost_usd)
            if inline:
                self._delivering[job.id] = time.monotonic() + DELIVERY_HOLD_SECONDS
            if self._run_seconds.get(run_key, (0.0, 0.0))[1] is None:
                del self._run_seconds[run_key]  # the first run to go by: no need to wait for the cache to expire
            future.set_result(result)
            return JobOutcome(job, result)
        except JobCancelledError as exc:
            await store.update(job.id, status=JobStatus.CANCELLED, error_message="cancelled by the user")
            future.set_exception(exc)
            raise
        except ImageBotError as exc:
            await store.update(job.id, status=JobStatus.FAILED, error_ref=exc.ref, error_message=exc.user_message)
            await asyncio.to_thread(self.files.discard_spool, job.id)
            future.set_exception(exc)
            raise
        except BaseException as exc:  # cancelled (shutdown) or a bug below the service: never leave it "running"
            await asyncio.shield(self._cut_off(job.id))
            future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        finally:
            self._inflight.pop(job.id, None)

    async def typical_run_seconds(self, model: str, quality: str | None) -> float | None:
        """The median provider time of recent finished jobs of ``model`` and ``quality`` (cached a while);
        None when there are none to go by."""
        key = (model, quality)
        now = self._clock()
        cached = self._run_seconds.get(key)
        if cached is not None and now - cached[0] < ETA_CACHE_SECONDS:
            return cached[1]
        durations = [
            job.paid_at - job.started_at
            for job in await self.store.history(limit=ETA_SAMPLE)
            if job.model == model
            and _text(job.request.get("quality")) == quality
            and job.started_at is not None
            and job.paid_at is not None
            and job.paid_at >= job.started_at
        ][:ETA_RUNS]
        median = statistics.median(durations) if durations else None
        self._run_seconds[key] = (now, median)
        return median

    async def _cut_off(self, job_id: str) -> None:
        """A job stopped before its result was stored: interrupted, unless its paid answer is already spooled,
        in which case it stays unfinished for the next start-up to finish and deliver."""
        if await asyncio.to_thread(self.files.spool(job_id).exists):
            log.warning("job %s stopped after its answer was spooled: the next start finishes it", job_id)
            return
        await self.store.update(job_id, status=JobStatus.INTERRUPTED)

    async def _call(self, request: Request, progress: ProgressSink, spool: WriteAhead) -> ImageResult:
        if isinstance(request, GenerateRequest):
            return await self.images.generate(request, progress, spool=spool)
        if isinstance(request, EditRequest):
            return await self.images.edit(request, progress, spool=spool)
        return await self.images.vary(request, progress, spool=spool)

    def _write_ahead(self, job: Job) -> WriteAhead:
        """The job's spool, and its ledger entries: billed at the estimate when the upstream's 2xx arrives,
        at the actual cost the moment the answer is known to hold images."""
        job_id = job.id

        async def answered() -> None:
            await self.store.update(job_id, paid_at=self._clock(), actual_cost=job.estimated_cost)

        async def paid(cost: float | None) -> None:
            await self.store.update(job_id, paid_at=self._clock(), actual_cost=cost)

        return WriteAhead(self.files.spool(job_id), paid, answered, job_id, reuse=self.files.reuse_spool)

    async def _store_result(self, job_id: str, result: ImageResult) -> Job:
        """Results to disk, then the job ``done`` (ready to deliver), then the spool is no longer needed."""
        stored = await asyncio.to_thread(self._save, job_id, result)
        job = await self.store.update(
            job_id,
            status=JobStatus.DONE,
            results=stored,
            actual_cost=result.cost_usd,
            model=result.model,
            provider=result.provider,
        )
        self._discard_spool_later(job_id)
        return job

    def _discard_spool_later(self, job_id: str) -> None:
        """Drop a stored job's spool in the janitor's thread; nothing waits for it (one a crash leaves behind is
        never read again: the job is done; it goes with the job's folder when its results are pruned)."""

        def discard() -> None:
            try:
                self.files.discard_spool(job_id)
            except OSError as exc:
                log.warning("job %s: its spool could not be removed (%s)", job_id, exc.strerror)

        self._discarding = _JANITOR.submit(discard)

    def _save(self, job_id: str, result: ImageResult) -> tuple[StoredImage, ...]:
        """Write the images before anyone delivers them: a paid result survives a crash (worker thread)."""
        self.files.write(job_id, {image.filename: image.data for image in result.images})
        return tuple(
            StoredImage(i.filename, i.mime_type, i.width, i.height, i.alt_text, len(i.data)) for i in result.images
        )

    async def _rebuild(self, job: Job) -> Request:
        """The request a stored job was made from, input images read back from disk."""
        options = {k: v for k, v in job.request.items() if k != "inputs"}
        names = [str(name) for name in job.request.get("inputs", [])]  # type: ignore[attr-defined]
        try:
            blobs = {name: await asyncio.to_thread(self.files.read, job.id, name) for name in names}
        except OSError:
            raise JobNotFoundError(detail=f"inputs of job {job.id} are missing") from None
        images = tuple(blobs[name] for name in names if name.startswith("input-"))
        mask = next((blobs[name] for name in names if name.startswith("mask")), None)
        n = int(options.get("n") or 1)  # type: ignore[call-overload]
        origin = job.origin
        text = {k: (str(v) if v is not None else None) for k, v in options.items() if k not in ("n", "origin")}
        if job.kind == "generate":
            return GenerateRequest(
                prompt=text.get("prompt") or "",
                n=n,
                size=text.get("size"),
                quality=text.get("quality"),
                model=text.get("model"),
                background=text.get("background"),
                output_format=text.get("output_format"),
                origin=origin,
            )
        if job.kind == "edit" or job.kind in OUTPAINT_KINDS:
            return EditRequest(
                images=images,
                prompt=text.get("prompt") or "",
                mask=mask,
                region=text.get("region"),
                n=n,
                size=text.get("size"),
                quality=text.get("quality"),
                model=text.get("model"),
                origin=origin,
            )
        if not images:
            raise JobNotFoundError(detail=f"job {job.id} has no input image")
        return VaryRequest(
            image=images[0],
            n=n,
            prompt=text.get("prompt"),
            size=text.get("size"),
            model=text.get("model"),
            strength=text.get("strength"),
            origin=origin,
        )


def _describe(request: Request) -> tuple[str, dict[str, object], dict[str, bytes]]:
    """(kind, JSON-able options, input files by name) of a request."""
    if isinstance(request, GenerateRequest):
        options: dict[str, object] = {
            "prompt": request.prompt,
            "n": request.n,
            "size": request.size,
            "quality": request.quality,
            "model": request.model,
            "background": request.background,
            "output_format": request.output_format,
        }
        return "generate", _with_origin(options, request.origin), {}
    if isinstance(request, EditRequest):
        inputs = {_input_name(i, data): data for i, data in enumerate(request.images, start=1)}
        if request.mask is not None:
            inputs["mask." + _extension(request.mask)] = request.mask
        options = {
            "prompt": request.prompt,
            "n": request.n,
            "size": request.size,
            "quality": request.quality,
            "model": request.model,
            "region": request.region,
        }
        action = request.origin.action if request.origin is not None else ""
        return (action if action in OUTPAINT_KINDS else "edit"), _with_origin(options, request.origin), inputs
    options = {"prompt": request.prompt, "n": request.n, "size": request.size, "model": request.model}
    if request.strength is not None:
        options["strength"] = request.strength
    return "vary", _with_origin(options, request.origin), {_input_name(1, request.image): request.image}


def _with_origin(options: dict[str, object], origin: Origin | None) -> dict[str, object]:
    """Where a request came from, when it came from a result (older jobs have no such key)."""
    return {**options, "origin": origin.to_json()} if origin is not None else options


def _about(job: Job) -> str:
    """What a job's images show, in words: its prompt, or its source's for a variation without one."""
    origin = job.origin
    return job.prompt or (origin.about if origin is not None else "")


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _extension(data: bytes) -> str:
    kind = imaging.sniff_format(data)
    return imaging.EXTENSIONS[kind] if kind else "bin"


def _input_name(index: int, data: bytes) -> str:
    return f"input-{index}.{_extension(data)}"


def _request_hash(kind: str, options: dict[str, object], inputs: dict[str, bytes]) -> str:
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in inputs.items()}
    canonical = json.dumps({"kind": kind, "options": options, "inputs": digests}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _generated(stored: StoredImage, data: bytes) -> GeneratedImage:
    return GeneratedImage(
        data=data,
        filename=stored.filename,
        mime_type=stored.mime_type,
        width=stored.width,
        height=stored.height,
        alt_text=stored.alt_text,
    )


def _consume(future: asyncio.Future[ImageResult]) -> None:
    """Mark a failed job's future as seen, so asyncio doesn't warn when nobody else waited on it."""
    if not future.cancelled():
        future.exception()
