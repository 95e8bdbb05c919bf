"""Frozen values that travel between adapters, the service and providers. No behaviour, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


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


@dataclass(frozen=True, slots=True)
class VaryRequest:
    """Make ``n`` variations of an image, optionally steered by a prompt."""

    image: bytes
    n: int = 1
    prompt: str | None = None
    size: str | None = None
    model: str | None = None
    requester: str = "anonymous"


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
    notice: str | None = None  # e.g. "made offline" — adapters show it with the result


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Progress:
    """A status change of one job, sent through the ProgressSink port."""

    status: JobStatus
    position: int | None = None  # 1-based place in line while queued
    queue_length: int | None = None
    message: str | None = None


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


@dataclass(frozen=True, slots=True)
class ProviderVary:
    """For servers that still have the variations endpoint: ``image`` is a normalised PNG."""

    model: str
    image: bytes
    n: int
    size: str | None
    extra: dict[str, str] = field(default_factory=dict)


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
