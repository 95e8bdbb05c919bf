"""Jobs and results as the page's JSON (and previews as ``data:`` URLs)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from adapters.common.i18n import _
from adapters.common.lifecycle import cut_off_text
from adapters.common.story import story, upscale_story
from bot import imaging
from bot.budgets import format_dollars
from bot.errors import InvalidRequestError
from bot.jobs import JobOutcome
from bot.models import GeneratedImage, Job, JobStatus, StoredImage
from bot.text import N_

SHOWN_IN_HISTORY = frozenset({JobStatus.DONE, JobStatus.DELIVERED, JobStatus.FAILED, JobStatus.INTERRUPTED})


def job_info(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "headline": story(job).headline,  # "Zoom out 2× of image 1"; "" for a plain request
        "prompt": story(job).prompt,  # a variation of a result: its source's prompt
        "model": job.model,
        "n": job.images_requested,
        "created_at": job.created_at,
    }


def images(job_id: str, results: Sequence[GeneratedImage | StoredImage]) -> list[dict[str, Any]]:
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
        for index, image in enumerate(results, start=1)
    ]


def outcome(result: JobOutcome) -> dict[str, Any]:
    """A finished request: its images, or the estimate to confirm."""
    job = result.job
    if result.needs_confirmation:
        estimate = job.estimated_cost
        return {
            "status": "awaiting_confirmation",
            "job": job_info(job),
            "estimate_usd": estimate,
            "estimate_text": None if estimate is None else f"about {format_dollars(estimate)}",
        }
    if result.result is None:
        raise InvalidRequestError(
            N_("You asked for exactly this a moment ago and it isn't finished yet; it will show up there."),
            detail=f"duplicate of job {job.id} ({job.status}) without a result here",
        )
    info = job_info(job)
    if job.kind == "vary" and not info["prompt"]:
        info["prompt"] = result.result.prompt
    return {
        "status": "done",
        "job": info,
        "duplicate": result.duplicate,
        "images": images(job.id, result.result.images),
        "notice": _(result.result.notice) if result.result.notice else None,
    }


def upscaled(job: Job, index: int) -> dict[str, Any]:
    """Image ``index`` of ``job`` on its own (U), titled with its story, for the upscale tools."""
    told = upscale_story(job, index)
    info = {**job_info(job), "headline": told.headline, "prompt": told.prompt}
    return {"status": "upscaled", "job": info, "index": index, "images": [images(job.id, job.results)[index - 1]]}


def history_entry(job: Job) -> dict[str, Any] | None:
    """A past job as the page shows it after a reload: its images, or why there are none (None: not shown)."""
    if job.status in (JobStatus.DONE, JobStatus.DELIVERED):
        if not job.results or job.results_pruned:
            return None
        return {"status": "done", "job": job_info(job), "images": images(job.id, job.results)}
    if job.status is JobStatus.INTERRUPTED:
        return {"status": "interrupted", "job": job_info(job), "message": cut_off_text(job)}
    if job.status is JobStatus.FAILED:
        message = job.error_message or "This one failed."
        if job.error_ref:
            message = f"{message} (ref {job.error_ref})"
        return {"status": "failed", "job": job_info(job), "message": message}
    return None


def data_url(image: bytes) -> str:
    """A ``data:`` URL for a preview image (base64: call in a worker thread)."""
    mime = imaging.MIME.get(imaging.sniff_format(image) or "png", "image/png")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
