"""JobService: every image request becomes a durable job — deduplicated, budgeted, stored, delivered once.

Adapters call ``submit`` (and ``reroll``, ``vary_result``, ``remix``, ``confirm`` for buttons, which find
the job by id in the store, so they keep working after a restart); they call ``mark_delivered`` once the
images are posted, and ``undelivered`` at start-up to post what a previous process paid for but never sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot import imaging
from bot.budgets import check_budgets
from bot.errors import ImageBotError, InvalidRequestError, JobCancelledError, TooLateToCancelError
from bot.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageResult,
    Job,
    JobContext,
    JobStatus,
    Progress,
    StoredImage,
    VaryRequest,
    WriteAhead,
)
from bot.ports import JobStore, ProgressSink
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings
from bot.store import ResultFiles

log = logging.getLogger(__name__)

Request = GenerateRequest | EditRequest | VaryRequest
_ID_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"
ETA_SAMPLE = 200  # newest jobs looked at for run durations
ETA_RUNS = 20  # the median is taken over at most this many recent runs of the same model and quality
ETA_CACHE_SECONDS = 30.0


def new_job_id() -> str:
    """Ten url-safe characters: short enough for a button's custom_id, ~50 bits of randomness."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


class JobNotFoundError(InvalidRequestError):
    """A button or command named a job the store does not have (or whose files were cleaned up)."""

    default_message = "I can't find that image any more (old results are cleaned up after a while)."


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
    ):
        self.images = images
        self.store = store
        self.files = files
        self._settings = jobs
        self._budgets = budgets
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[ImageResult]] = {}
        self._admission_lock = asyncio.Lock()  # budget check + insert happen as one step
        self._run_seconds: dict[tuple[str, str | None], tuple[float, float | None]] = {}  # -> (when, median)

    async def start(self) -> list[Job]:
        """Call once at start-up, before serving: finish or interrupt what a previous process left unfinished.

        A job whose upstream answer reached its spool is finished from it (decoded, stored, charged its actual
        cost) and becomes ``done``, so the adapters' ``undelivered`` posts it. Any other queued or running job
        becomes ``interrupted``: at no cost if the image service never answered it, at its estimate if the
        answer had begun to arrive (the generation was billed; its images are lost). Returns the interrupted.
        """
        interrupted: list[Job] = []
        for job in await self.store.unfinished():
            if await asyncio.to_thread(self.files.spool(job.id).exists) and await self._recover(job):
                continue
            job = await self.store.update(job.id, status=JobStatus.INTERRUPTED)
            await asyncio.to_thread(self.files.discard_spool, job.id)
            log.warning("job %s (%s for %s) was interrupted by a restart", job.id, job.kind, job.context.requester)
            interrupted.append(job)
        return interrupted

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
        model, count, estimate = self.images.estimate(request)
        kind, options, inputs = _describe(request)
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
            job = await self.store.update(job.id, status=JobStatus.QUEUED)
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
        """The same request again, as a new job."""
        request = await self._rebuild(await self._job(job_id))
        return await self.submit(context, request, progress, confirmed=True)

    async def remix(
        self, job_id: str, prompt: str, context: JobContext, progress: ProgressSink | None = None
    ) -> JobOutcome:
        """The same request with a changed prompt."""
        request = dataclasses.replace(await self._rebuild(await self._job(job_id)), prompt=prompt)
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
    ) -> JobOutcome:
        """Variations of image ``index`` (1-based) of a finished job."""
        image = await self.result_image(job_id, index)
        job = await self._job(job_id)
        request = VaryRequest(
            image=image.data,
            n=n if n is not None else job.images_requested,
            prompt=prompt,
            model=job.model,
            requester=context.requester,
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
        """Finished jobs of ``platform`` never delivered: adapters post these at start-up."""
        pending: list[tuple[Job, ImageResult]] = []
        for job in await self.store.undelivered(platform):
            try:
                pending.append((job, await self.result_of(job)))
            except ImageBotError as exc:
                log.warning("cannot redeliver job %s: %s", job.id, exc.log_line())
        return pending

    async def begin_delivery(self, job_id: str) -> Job:
        """Record that a post of the job's result is about to be made (call before posting): after a crash,
        a job that is undelivered but has attempts may already be on the platform, so look before posting."""
        job = await self._job(job_id)
        return await self.store.update(job_id, delivery_attempts=job.delivery_attempts + 1)

    async def cut_off(self, platform: str) -> list[Job]:
        """Jobs of ``platform`` a restart interrupted whose requester has not been told (adapters tell them)."""
        return await self.store.cut_off(platform)

    async def mark_notified(self, job_id: str) -> Job:
        return await self.store.update(job_id, notified_at=self._clock())

    async def mark_delivered(self, job_id: str) -> Job:
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

    async def _execute(self, job: Job, request: Request, progress: ProgressSink | None) -> JobOutcome:
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

        return WriteAhead(self.files.spool(job_id), paid, answered, job_id)

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
        await asyncio.to_thread(self.files.discard_spool, job_id)
        return job

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
        text = {k: (str(v) if v is not None else None) for k, v in options.items() if k != "n"}
        if job.kind == "generate":
            return GenerateRequest(
                prompt=text.get("prompt") or "",
                n=n,
                size=text.get("size"),
                quality=text.get("quality"),
                model=text.get("model"),
                background=text.get("background"),
                output_format=text.get("output_format"),
            )
        if job.kind == "edit":
            return EditRequest(
                images=images,
                prompt=text.get("prompt") or "",
                mask=mask,
                region=text.get("region"),
                n=n,
                size=text.get("size"),
                quality=text.get("quality"),
                model=text.get("model"),
            )
        if not images:
            raise JobNotFoundError(detail=f"job {job.id} has no input image")
        return VaryRequest(
            image=images[0], n=n, prompt=text.get("prompt"), size=text.get("size"), model=text.get("model")
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
        return "generate", options, {}
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
        return "edit", options, inputs
    options = {"prompt": request.prompt, "n": request.n, "size": request.size, "model": request.model}
    return "vary", options, {_input_name(1, request.image): request.image}


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
