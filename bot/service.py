"""ImageService: validate -> normalise inputs (in a thread) -> admit -> provider -> verify results.

The one entry point adapters and the CLI use. It returns bytes and metadata, never a platform object,
and raises only ``ImageBotError`` (anything else is logged with a reference id and wrapped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from bot import imaging
from bot.catalog import Catalog, ModelSpec
from bot.errors import ImageBotError, InvalidRequestError, UnexpectedError
from bot.limits import AdmissionControl
from bot.metrics import Metrics
from bot.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageResult,
    JobStatus,
    Progress,
    ProviderEdit,
    ProviderGenerate,
    ProviderImages,
    ProviderVary,
    VaryRequest,
    WriteAhead,
)
from bot.ports import ImageProvider, OnPartial, ProgressSink
from bot.settings import ImagingSettings
from bot.text import N_

log = logging.getLogger(__name__)

OFFLINE_NOTICE = N_("Made offline by imagebot's built-in generator (no OPENAI_API_KEY is set).")
ALT_TEXT_LIMIT = 1000  # Slack's alt_txt and Discord's description both fit this
_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, *, fallback: str = "image", limit: int = 60) -> str:
    """A file-name-safe stem from a prompt: ``"RESTfull API security"`` -> ``"restfull_api_security"``."""
    slug = _SLUG.sub("_", text.lower()).strip("_")[:limit].rstrip("_")
    return slug or fallback


@dataclass(frozen=True, slots=True)
class _Plan:
    model: str
    spec: ModelSpec
    n: int
    prompt: str
    size: str | None = None  # as sent (after checks), for the cost when the provider reports no usage
    quality: str | None = None


class ImageService:
    """Generate, edit and vary images for any adapter."""

    def __init__(
        self,
        *,
        provider: ImageProvider,
        catalog: Catalog,
        admission: AdmissionControl,
        imaging_settings: ImagingSettings,
        variation_prompt: str,
        variation_prompts: Mapping[str, str] | None = None,
        default_n: int = 1,
        partial_images: int = 0,
        today: Callable[[], dt.date] = dt.date.today,
        metrics: Metrics | None = None,
    ):
        """``partial_images``: previews to stream per image (models with streaming, one image only);
        ``variation_prompts``: the prompt for each variation strength ("subtle", "strong")."""
        self.provider = provider
        self.catalog = catalog
        self.admission = admission
        self._imaging = imaging_settings
        self._variation_prompt = variation_prompt
        self._variation_prompts = dict(variation_prompts or {})
        self._default_n = default_n
        self._partial_images = partial_images
        self._today = today
        self.metrics = metrics or Metrics()

    # --- public API ---------------------------------------------------------------------------------

    def today(self) -> dt.date:
        """The date models' shutdown dates are checked against."""
        return self._today()

    @property
    def input_max_edge(self) -> int:
        """The longest side an input image is sent with (larger ones are scaled down)."""
        return self._imaging.input_max_edge

    async def generate(
        self, request: GenerateRequest, progress: ProgressSink | None = None, *, spool: WriteAhead | None = None
    ) -> ImageResult:
        """Make new images from a prompt (``spool``: where a paid answer is written first, and whom to tell)."""

        async def work() -> tuple[_Plan, ProviderImages]:
            plan = self._plan(request.model, request.prompt, request.n)
            spec = plan.spec
            plan = dataclasses.replace(
                plan,
                size=self.catalog.check_size(plan.model, spec, request.size),
                quality=_option(plan.model, "quality", request.quality, spec.qualities),
            )
            call = ProviderGenerate(
                model=plan.model,
                prompt=plan.prompt,
                n=plan.n,
                size=plan.size,
                quality=plan.quality,
                background=_option(plan.model, "background", request.background, spec.backgrounds),
                output_format=_option(plan.model, "output format", request.output_format, spec.output_formats),
                extra=_extra(spec),
                partial_images=self._previews(plan, progress),
                spool=spool,
            )
            on_partial = _preview_sink(progress, call.partial_images)

            def run() -> Awaitable[ProviderImages]:
                if on_partial is None:  # keyword only when used: non-streaming calls stay as they were
                    return self.provider.generate(call)
                return self.provider.generate(call, on_partial=on_partial)

            return plan, await self._admitted(request.requester, plan, progress, run, spool)

        return await self._run("generate", request.requester, progress, work, spool)

    async def edit(
        self, request: EditRequest, progress: ProgressSink | None = None, *, spool: WriteAhead | None = None
    ) -> ImageResult:
        """Change images according to a prompt, inside a mask, a named region or the image's transparency."""

        async def work() -> tuple[_Plan, ProviderImages]:
            plan = self._plan(request.model, request.prompt, request.n)
            spec = plan.spec
            if not spec.edits:
                raise InvalidRequestError(
                    N_("The model {model} can't edit images. Pick another model.", model=plan.model)
                )
            if not request.images:
                raise InvalidRequestError(N_("Attach the image you want to edit."))
            if len(request.images) > spec.max_input_images:
                raise InvalidRequestError(
                    N_(
                        "{model} can edit at most {limit} image(s) at once.",
                        model=plan.model,
                        limit=spec.max_input_images,
                    )
                )
            if request.region is not None:
                imaging.parse_region(request.region)  # an empty or unknown region is refused, never ignored
            if (request.mask is not None or request.region is not None) and not spec.masks:
                raise InvalidRequestError(N_("{model} can't edit only part of an image (no masks).", model=plan.model))
            size = self.catalog.check_size(plan.model, spec, request.size)
            quality = _option(plan.model, "quality", request.quality, spec.qualities)
            plan = dataclasses.replace(plan, size=size, quality=quality)
            images, mask = await asyncio.to_thread(
                self._prepare_edit, spec, request.images, request.mask, request.region
            )
            previews = self._previews(plan, progress)
            call = ProviderEdit(
                plan.model,
                plan.prompt,
                images,
                mask,
                plan.n,
                size,
                quality,
                _extra(spec),
                previews,
                spool=spool,
            )
            on_partial = _preview_sink(progress, call.partial_images)

            def run() -> Awaitable[ProviderImages]:
                if on_partial is None:
                    return self.provider.edit(call)
                return self.provider.edit(call, on_partial=on_partial)

            return plan, await self._admitted(request.requester, plan, progress, run, spool)

        return await self._run("edit", request.requester, progress, work, spool)

    async def vary(
        self, request: VaryRequest, progress: ProgressSink | None = None, *, spool: WriteAhead | None = None
    ) -> ImageResult:
        """Variations of an image: the variations endpoint where the model has one, else an edit with a prompt."""

        async def work() -> tuple[_Plan, ProviderImages]:
            steer = (request.prompt or "").strip()
            base = self._variation_prompts.get(request.strength or "", self._variation_prompt)
            prompt = f"{base} {steer}".strip() if steer else base
            plan = self._plan(request.model, prompt, request.n)
            spec = plan.spec
            if not spec.variations_endpoint and not spec.edits:
                raise InvalidRequestError(
                    N_("The model {model} can't make variations. Pick another model.", model=plan.model)
                )
            size = self.catalog.check_size(plan.model, spec, request.size)
            png = await asyncio.to_thread(self._prepare_image, spec, request.image)
            if spec.variations_endpoint and not steer:
                vary_call = ProviderVary(plan.model, png.data, plan.n, size, _extra(spec), spool=spool)
                raw = await self._admitted(
                    request.requester, plan, progress, lambda: self.provider.vary(vary_call), spool
                )
            else:
                edit_call = ProviderEdit(
                    plan.model, plan.prompt, (png.data,), None, plan.n, size, None, _extra(spec), spool=spool
                )
                raw = await self._admitted(
                    request.requester, plan, progress, lambda: self.provider.edit(edit_call), spool
                )
            shown = _Plan(plan.model, spec, plan.n, steer or "variation", size)
            return shown, raw

        return await self._run("vary", request.requester, progress, work, spool)

    async def recover(
        self,
        *,
        model: str,
        prompt: str,
        n: int,
        size: str | None,
        quality: str | None,
        requester: str,
        spool: WriteAhead,
    ) -> ImageResult:
        """Finish a job a previous process was cut off from after the upstream's answer was spooled."""

        async def work() -> tuple[_Plan, ProviderImages]:
            # The answer is paid for: finish it even if the model was retired since.
            real, spec = self.catalog.resolve(model, today=dt.date.min)
            plan = _Plan(real, spec, n, " ".join(prompt.split()) or "variation", size, quality)
            return plan, await self.provider.recover(spool.path)

        return await self._run("recover", requester, None, work, spool)

    def estimate(self, request: GenerateRequest | EditRequest | VaryRequest) -> tuple[str, int, float | None]:
        """Check the request's model, count and size, and estimate its cost: (model, images, USD or None).

        Cheap and synchronous: for budgets and confirmations before a job is recorded.
        """
        prompt = request.prompt if isinstance(request, GenerateRequest | EditRequest) else "variation"
        plan = self._plan(request.model, prompt or "variation", request.n)
        size = self.catalog.check_size(plan.model, plan.spec, request.size)
        quality = None
        if isinstance(request, GenerateRequest | EditRequest):  # as it will be sent ("Low" prices as "low")
            quality = _option(plan.model, "quality", request.quality, plan.spec.qualities)
        return plan.model, plan.n, Catalog.estimate_cost(plan.spec, size, quality, plan.n)

    # --- the pipeline -------------------------------------------------------------------------------------

    def _previews(self, plan: _Plan, progress: ProgressSink | None) -> int:
        """Partial images to ask for: when enabled, someone watches, the model streams and one image is made."""
        wanted = progress is not None and plan.spec.streaming and plan.n == 1
        return self._partial_images if wanted else 0

    def _plan(self, model: str | None, prompt: str, n: int | None) -> _Plan:
        real, spec = self.catalog.resolve(model, today=self._today())
        cleaned = " ".join((prompt or "").split())
        if not cleaned:
            raise InvalidRequestError(N_("Please describe the image you want: the prompt is empty."))
        if len(cleaned) > spec.max_prompt_chars:
            raise InvalidRequestError(
                N_(
                    "Your prompt is {length} characters; {model} accepts at most {limit}.",
                    length=f"{len(cleaned):,}",
                    model=real,
                    limit=f"{spec.max_prompt_chars:,}",
                )
            )
        count = self._default_n if n is None else n
        if not 1 <= count <= spec.max_n:
            raise InvalidRequestError(
                N_("You can ask {model} for 1 to {limit} images at a time.", model=real, limit=spec.max_n)
            )
        return _Plan(real, spec, count, cleaned)

    async def _admitted(
        self,
        requester: str,
        plan: _Plan,
        progress: ProgressSink | None,
        call: Callable[[], Awaitable[ProviderImages]],
        spool: WriteAhead | None = None,
    ) -> ProviderImages:
        """Wait for a turn in line (cancellable by the spool's job id), then make the provider call."""
        key = spool.job_id if spool is not None else None
        waiting = time.monotonic()
        async with self.admission.slot(requester, plan.n, progress, key=key):
            started = time.monotonic()
            self.metrics.queue_wait_seconds.observe(started - waiting)
            await _report(progress, Progress(JobStatus.RUNNING))
            try:
                return await call()
            finally:
                self.metrics.upstream_seconds.labels(plan.model).observe(time.monotonic() - started)

    async def _run(
        self,
        kind: str,
        requester: str,
        progress: ProgressSink | None,
        work: Callable[[], Awaitable[tuple[_Plan, ProviderImages]]],
        spool: WriteAhead | None = None,
    ) -> ImageResult:
        started = time.monotonic()
        try:
            plan, raw = await work()
            if not raw.images:
                raise InvalidRequestError(N_("The image service returned no images for that request."))
            cost = self._cost(plan, raw)
            if spool is not None:
                await spool.paid(cost)  # before anything else can fail: the answer is paid for
            async with self.admission.result_bytes.hold(sum(len(image) for image in raw.images)):
                quick = [imaging.quick_output_info(image) for image in raw.images]  # PNGs: ~0.1 ms each
                if all(quick):
                    images = self._finish(plan, raw, quick)
                else:  # JPEG or WebP, decoded to be checked: in a worker thread
                    images = await asyncio.to_thread(self._finish, plan, raw, quick)
        except ImageBotError as exc:
            log.warning("%s for %s failed: %s", kind, requester, exc.log_line())
            await _report(progress, Progress(JobStatus.FAILED, message=exc.friendly()))
            raise
        except Exception as exc:
            wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
            log.exception("%s for %s failed unexpectedly (ref %s)", kind, requester, wrapped.ref)
            await _report(progress, Progress(JobStatus.FAILED, message=wrapped.friendly()))
            raise wrapped from None
        result = ImageResult(
            images=images,
            model=plan.model,
            provider=self.provider.name,
            prompt=plan.prompt,
            usage=raw.usage,
            cost_usd=cost,
            notice=OFFLINE_NOTICE if self.provider.offline else None,
        )
        log.info(
            "%s for %s: %d image(s) from %s/%s in %.1fs, cost %s",
            kind,
            requester,
            len(images),
            result.provider,
            result.model,
            time.monotonic() - started,
            "unknown" if cost is None else f"${cost:.4f}",
        )
        await _report(progress, Progress(JobStatus.DONE))
        return result

    def _cost(self, plan: _Plan, raw: ProviderImages) -> float | None:
        """USD from the reported usage, else the estimate for what was asked (size, quality, images received)."""
        if self.provider.offline:
            return 0.0
        cost = Catalog.actual_cost(plan.spec, raw.usage)
        if cost is None:
            cost = Catalog.estimate_cost(plan.spec, plan.size, plan.quality, len(raw.images))
        return cost

    # --- Pillow work (worker threads only) ---------------------------------------------------------------

    def _prepare_image(self, spec: ModelSpec, data: bytes) -> imaging.PreparedImage:
        settings = self._imaging
        square_size = None
        if spec.square_png_input:
            square_sizes = [int(s.split("x")[0]) for s in spec.sizes if "x" in s and len(set(s.split("x"))) == 1]
            square_size = max(square_sizes, default=1024)
        return imaging.prepare_input(
            data,
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
            max_edge=settings.input_max_edge,
            square=settings.square_inputs if spec.square_png_input else None,
            square_size=square_size,
            out_max_bytes=spec.max_input_bytes if spec.square_png_input else None,
            jpeg_ok="jpeg" in spec.input_formats,
        )

    def _prepare_edit(
        self, spec: ModelSpec, images: tuple[bytes, ...], mask: bytes | None, region: str | None
    ) -> tuple[tuple[bytes, ...], bytes | None]:
        prepared = [self._prepare_image(spec, data) for data in images]
        first = prepared[0]
        size = (first.width, first.height)
        mask_png: bytes | None = None
        if mask is not None:
            mask_png = imaging.mask_from_upload(
                mask, size, max_bytes=self._imaging.max_input_bytes, max_pixels=self._imaging.max_input_pixels
            )
        elif region is not None:
            mask_png = imaging.region_mask(region, size)
        elif first.has_transparency and spec.masks:
            mask_png = imaging.mask_from_alpha(first.data)
        return tuple(p.data for p in prepared), mask_png

    def _finish(
        self, plan: _Plan, raw: ProviderImages, checked: Sequence[imaging.OutputInfo | None]
    ) -> tuple[GeneratedImage, ...]:
        """The verified images, named and described (``checked``: those already verified, by position)."""
        stem = slugify(plan.prompt)
        count = len(raw.images)
        out: list[GeneratedImage] = []
        for index, data in enumerate(raw.images, start=1):
            info = checked[index - 1] or imaging.inspect_output(data)
            revised = raw.revised_prompts[index - 1] if index - 1 < len(raw.revised_prompts) else None
            described = revised or plan.prompt
            prefix = "AI-generated image" if count == 1 else f"AI-generated image {index} of {count}"
            alt = f"{prefix}: {described}"
            if len(alt) > ALT_TEXT_LIMIT:
                alt = alt[: ALT_TEXT_LIMIT - 1] + "…"
            out.append(
                GeneratedImage(
                    data=data,
                    filename=f"{stem}-{index}.{info.extension}",
                    mime_type=info.mime_type,
                    width=info.width,
                    height=info.height,
                    alt_text=alt,
                    revised_prompt=revised,
                )
            )
        return tuple(out)


def _option(model: str, what: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """Check an optional choice against the model's row; None means "don't send it"."""
    if value is None or not value.strip():
        return None
    cleaned = value.strip().lower()
    if not allowed:
        raise InvalidRequestError(N_("{model} has no {option} option; leave it out.", model=model, option=what))
    if cleaned not in allowed:
        raise InvalidRequestError(
            N_(
                "{option} for {model} can be: {allowed}.",
                option=what.capitalize(),
                model=model,
                allowed=", ".join(allowed),
            )
        )
    return cleaned


def _extra(spec: ModelSpec) -> dict[str, str]:
    return {"response_format": "b64_json"} if spec.response_format else {}


def _preview_sink(progress: ProgressSink | None, previews: int) -> OnPartial | None:
    """Previews from the provider, reported as RUNNING updates that carry the image (None: none wanted)."""
    if progress is None or previews < 1:
        return None

    async def report(preview: bytes) -> None:
        await _report(progress, Progress(JobStatus.RUNNING, preview=preview))

    return report


async def _report(progress: ProgressSink | None, update: Progress) -> None:
    if progress is None:
        return
    try:
        await progress(update)
    except Exception:
        log.exception("progress report failed")
