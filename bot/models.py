"""Frozen values that travel between adapters, the service and providers. No behaviour, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.text import Text


@dataclass(frozen=True, slots=True)
class Origin:
    """Which result a request was made from, and how: the story its result's title tells.

    ``action``: "vary", "edit", "zoom", "pan", "remix" (or "" for a plain request); ``detail`` says more
    ("subtle"/"strong", the zoom factor "1.5"/"2", the pan direction, the region); ``reroll``: made again.
    """

    job: str = ""
    index: int = 0  # 1-based image of that job, 0 = the job as a whole
    action: str = ""
    detail: str = ""
    reroll: bool = False
    about: str = ""  # the source's prompt, for titles of requests that have none of their own (variations)

    def to_json(self) -> dict[str, object]:
        return {
            "job": self.job,
            "index": self.index,
            "action": self.action,
            "detail": self.detail,
            "reroll": self.reroll,
            "about": self.about,
        }

    @classmethod
    def from_json(cls, value: object) -> Origin | None:
        if not isinstance(value, dict):
            return None
        index = value.get("index")
        return cls(
            job=str(value.get("job") or ""),
            index=index if isinstance(index, int) else 0,
            action=str(value.get("action") or ""),
            detail=str(value.get("detail") or ""),
            reroll=value.get("reroll") is True,
            about=str(value.get("about") or ""),
        )


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """Make ``n`` new images from a prompt. ``None`` options take the model's defaults."""

    prompt: str
    n: int = 1
    size: str | None = None
    quality: str | None = None
    model: str | None = None
    background: str | None = None
    output_format: str | None = None
    requester: str = "anonymous"  # "<platform>:<user id>"; the unit of fairness and per-user caps
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class EditRequest:
    """Change one or more images according to a prompt, optionally only inside a mask or region.

    ``images`` are the raw bytes as the user sent them (any supported format); the mask is taken, in
    order of preference, from ``mask`` (a second image: transparent or white = editable), from
    ``region`` (a named region or grid cells), or from the first image's own transparency.
    """

    images: tuple[bytes, ...]
    prompt: str
    mask: bytes | None = None
    region: str | None = None
    n: int = 1
    size: str | None = None
    quality: str | None = None
    model: str | None = None
    requester: str = "anonymous"
    origin: Origin | None = None  # action "zoom" or "pan": an outpainting canvas, recorded as that kind of job


@dataclass(frozen=True, slots=True)
class VaryRequest:
    """Make ``n`` variations of an image, optionally steered by a prompt."""

    image: bytes
    n: int = 1
    prompt: str | None = None
    size: str | None = None
    model: str | None = None
    requester: str = "anonymous"
    strength: str | None = None  # "subtle" or "strong": which variation prompt (None: the default one)
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as reported by the provider (zero when it reports none)."""

    input_tokens: int = 0
    output_tokens: int = 0
    text_input_tokens: int = 0
    image_input_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One finished image: encoded bytes ready to upload, and what a platform needs to show it."""

    data: bytes
    filename: str
    mime_type: str
    width: int
    height: int
    alt_text: str
    revised_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What the core hands back to an adapter: images plus how they were made and what they cost."""

    images: tuple[GeneratedImage, ...]
    model: str
    provider: str
    prompt: str
    usage: Usage | None = None
    cost_usd: float | None = None
    notice: Text | None = None  # e.g. "made offline" — adapters show it with the result, in the reader's language


class JobStatus(enum.StrEnum):
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # estimated above the confirmation threshold
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # results stored, not yet delivered
    DELIVERED = "delivered"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process stopped while the job was queued or running
    CANCELLED = "cancelled"  # the requester took it back before the upstream call started: nothing charged

    @property
    def active(self) -> bool:
        """Waiting or working: a second identical request joins this job instead of paying twice."""
        return self in (JobStatus.AWAITING_CONFIRMATION, JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class Progress:
    """A status change of one job, sent through the ProgressSink port."""

    status: JobStatus
    position: int | None = None  # 1-based place in line while queued
    queue_length: int | None = None
    message: str | None = None
    preview: bytes | None = None  # RUNNING only: an encoded partial image (PNG, JPEG or WebP) while it is made
    eta_seconds: float | None = None  # QUEUED: about how long until the result (None: no recent runs to go by)
    job_id: str | None = None  # the job it is about (set by JobService: a queued job's Cancel button names it)


# --- what the service hands to a provider, after validation and normalisation -------------------------


@dataclass(frozen=True, slots=True)
class ProviderGenerate:
    model: str
    prompt: str
    n: int
    size: str | None
    quality: str | None
    background: str | None = None
    output_format: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    partial_images: int = 0  # previews to stream while the image is made (0 = no streaming)
    spool: WriteAhead | None = None  # write-ahead: a paid answer is written here before it is decoded


@dataclass(frozen=True, slots=True)
class ProviderEdit:
    """``images`` (PNG, or JPEG where the model accepts it) and ``mask`` (PNG) are already checked and
    normalised by the service."""

    model: str
    prompt: str
    images: tuple[bytes, ...]
    mask: bytes | None
    n: int
    size: str | None
    quality: str | None
    extra: dict[str, str] = field(default_factory=dict)
    partial_images: int = 0  # previews to stream while the image is made (0 = no streaming)
    spool: WriteAhead | None = None  # write-ahead: a paid answer is written here before it is decoded


@dataclass(frozen=True, slots=True)
class ProviderVary:
    """For servers that still have the variations endpoint: ``image`` is a normalised PNG."""

    model: str
    image: bytes
    n: int
    size: str | None
    extra: dict[str, str] = field(default_factory=dict)
    spool: WriteAhead | None = None  # write-ahead: a paid answer is written here before it is decoded


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class WriteAhead:
    """A job's write-ahead record for one provider call.

    ``answered`` is awaited when the upstream's 2xx status arrives (the generation is billed from then on,
    whatever happens to the body). The provider streams the body to ``path`` and renames it into place once
    it has all arrived: from then on a crash loses nothing (a restart decodes the spool). ``paid`` is told the
    cost as soon as the answer is known to hold images, before anything else is done with them.
    """

    path: Path
    paid: Callable[[float | None], Awaitable[None]]
    answered: Callable[[], Awaitable[None]] = _nothing
    job_id: str | None = None  # the admission ticket's key: the job's requester may cancel it while it waits
    # Puts a recycled spool file at the given path, to be written over (worker thread); False: none to reuse.
    reuse: Callable[[Path], bool] | None = None


@dataclass(frozen=True, slots=True)
class ProviderImages:
    """A provider's raw answer: encoded images (not yet verified) and usage."""

    images: tuple[bytes, ...]
    usage: Usage | None = None
    revised_prompts: tuple[str | None, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    reachable: bool
    model_known: bool | None
    detail: str


# --- jobs: what the job store keeps ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobContext:
    """Who asked, and where the answer goes."""

    platform: str  # "cli", "discord", "slack", "web"
    user: str
    workspace: str | None = None  # Discord guild or Slack team
    channel: str | None = None
    thread: str | None = None
    reply: str | None = None  # the platform's address for answering (opaque to the core), kept for restarts

    @property
    def requester(self) -> str:
        return f"{self.platform}:{self.user}"


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A result file kept under the data folder."""

    filename: str
    mime_type: str
    width: int
    height: int
    alt_text: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str  # "generate", "edit", "vary", "zoom", "pan" (zoom and pan are edits of an outpainting canvas)
    context: JobContext
    request: dict[str, object]  # JSON-able options (prompt, n, size, ...); input images are files
    request_hash: str
    status: JobStatus
    created_at: float  # unix seconds
    updated_at: float
    images_requested: int
    estimated_cost: float | None = None
    actual_cost: float | None = None
    model: str | None = None
    provider: str | None = None
    error_ref: str | None = None
    error_message: str | None = None
    results: tuple[StoredImage, ...] = ()
    delivered_at: float | None = None
    results_pruned: bool = False
    paid_at: float | None = None  # when the upstream's answer with images arrived (None: nothing was paid)
    delivery_attempts: int = 0  # posts begun (recorded before posting: more than 0 undelivered = look first)
    notified_at: float | None = None  # when the requester of an interrupted job was told
    owner: str | None = None  # the process working on (or delivering) the job, while its lease lasts
    lease_until: float | None = None  # unix seconds: past it, any process may take the job over
    started_at: float | None = None  # when its provider call began (for the queue's time estimate)

    @property
    def prompt(self) -> str:
        return str(self.request.get("prompt") or "")

    @property
    def origin(self) -> Origin | None:
        return Origin.from_json(self.request.get("origin"))

    @property
    def cost(self) -> float:
        """What counts against budgets: a paid job its actual cost (the estimate if none was reported), a
        job still waiting or running its estimate (a reservation), anything else nothing."""
        if self.paid_at is not None:
            return self.actual_cost if self.actual_cost is not None else (self.estimated_cost or 0.0)
        if self.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return self.estimated_cost or 0.0
        return 0.0


@dataclass(frozen=True, slots=True)
class Spend:
    images: int = 0
    dollars: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    jobs: int
    images: int
    dollars: float
