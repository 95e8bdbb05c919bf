"""Titles that tell a result's story, for every platform: "Zoom out 2× of image 1 — *a fox*", from the job alone.

One function builds the words from what the job records (its kind, the result it came from, the image index,
the region or mask, the variation strength, whether it is a reroll); each platform only formats the parts
(Discord markdown, Slack mrkdwn, HTML), escaping them its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.models import Job, Origin

_PAN = {"left": "Pan left", "right": "Pan right", "up": "Pan up", "down": "Pan down"}


@dataclass(frozen=True, slots=True)
class Story:
    """A result's title in parts: ``headline`` ("Variations (strong) of image 2", "" for a plain request),
    ``prompt`` (what the images show, may be empty) and ``requester`` (the platform's user id)."""

    headline: str
    prompt: str
    requester: str

    def plain(self) -> str:
        """The title as plain text: "Headline — prompt" (either part alone when the other is empty)."""
        return " — ".join(part for part in (self.headline, self.prompt) if part)


def story(job: Job) -> Story:
    """The story of ``job``'s result."""
    origin = job.origin
    prompt = " ".join(job.prompt.split()) or (origin.about if origin is not None else "")
    headline = _headline(job, origin)
    if origin is not None and origin.reroll:
        headline = f"Reroll of {headline[0].lower() + headline[1:]}" if headline else "Reroll"
    return Story(headline, prompt, job.context.user)


def upscale_story(job: Job, index: int) -> Story:
    """The story of image ``index`` of ``job`` posted on its own (U)."""
    prompt = story(job).prompt
    return Story(f"Upscale of image {index}", prompt, job.context.user)


def _headline(job: Job, origin: Origin | None) -> str:
    source = f" of image {origin.index}" if origin is not None and origin.index else ""
    detail = origin.detail if origin is not None else ""
    if job.kind == "zoom":
        return f"Zoom out {detail or '?'}×{source}"
    if job.kind == "pan":
        return f"{_PAN.get(detail, 'Pan')}{source}"
    if job.kind == "vary":
        strength = f" ({detail})" if detail else ""
        return f"Variations{strength}{source}"
    if job.kind == "edit":
        return f"Edit{source}{_where(job)}"
    if origin is not None and origin.action == "remix":
        return "Remix"
    return ""


def _where(job: Job) -> str:
    """Which part of the image an edit changed: " (top-half)", " (with a mask)" or nothing (the whole image)."""
    region = job.request.get("region")
    if isinstance(region, str) and region:
        return f" ({region})"
    inputs = job.request.get("inputs")
    if isinstance(inputs, list) and any(str(name).startswith("mask") for name in inputs):
        return " (with a mask)"
    return ""
