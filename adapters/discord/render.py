"""Turn what the core returns (ImageResult, Job) into Discord uploads, message text and buttons."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import discord

from adapters.common.i18n import _
from adapters.common.story import Story, story, upscale_story
from adapters.common.words import kind_word, status_word
from adapters.discord.components import RESULT_TEMPLATE, UPSCALE_LABELS, ConfirmButton, JobButton, ResultButton
from bot import imaging
from bot.budgets import format_dollars
from bot.models import GeneratedImage, ImageResult, Job, JobStatus
from bot.text import N_

MESSAGE_LIMIT = 2000
REQUEST_LIMIT = 25 * 1024 * 1024  # one message's whole upload
_REQUEST_MARGIN = 64 * 1024  # multipart headers and payload_json
_ALT_TEXT_LIMIT = 1024
_JOB_IN_CUSTOM_ID = re.compile(RESULT_TEMPLATE)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One Discord message: text, files and the buttons under it."""

    content: str
    files: list[discord.File]
    view: discord.ui.View | None


def result_buttons(job_id: str, indexes: Sequence[int], *, upscale: bool) -> list[discord.ui.Item[Any]]:
    """U1..Un (grids only), V1..Vn, 🔄 reroll and ✏️ remix, laid out in rows of at most five."""
    buttons: list[discord.ui.Item[Any]] = []
    if upscale:
        buttons += [ResultButton("u", job_id, i, row=0) for i in indexes]
    row = 1 if upscale else 0
    buttons += [ResultButton("v", job_id, i, row=row) for i in indexes]
    extra_row = row if len(indexes) < 4 else row + 1
    buttons += [ResultButton("r", job_id, 0, row=extra_row), ResultButton("x", job_id, 0, row=extra_row)]
    return buttons


def upscale_buttons(job_id: str, index: int) -> list[discord.ui.Item[Any]]:
    """Under one image posted on its own: Vary (Subtle), Vary (Strong), Zoom out 1.5x, 2x; ⬅️➡️⬆️⬇️ and ✏️ remix."""
    actions = list(UPSCALE_LABELS)
    buttons: list[discord.ui.Item[Any]] = [ResultButton(a, job_id, index, row=0) for a in actions[:4]]
    buttons += [ResultButton(a, job_id, index, row=1) for a in actions[4:]]
    buttons.append(ResultButton("x", job_id, index, row=1))
    return buttons


def view_of(items: Sequence[discord.ui.Item[Any]]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


def confirm_view(job_id: str) -> discord.ui.View:
    return view_of([ConfirmButton("ok", job_id), ConfirmButton("no", job_id)])


def cancel_view(job_id: str) -> discord.ui.View:
    """The Cancel button under a queued job's place in line (the same button as a held job's)."""
    return view_of([ConfirmButton("no", job_id)])


def job_in_components(components: Sequence[Any]) -> tuple[str, list[int]] | None:
    """(job id, image indexes with a V button) from a result message's components (discord.py objects)."""
    job: str | None = None
    indexes: list[int] = []
    stack = list(components)
    while stack:
        comp = stack.pop(0)
        stack.extend(getattr(comp, "children", []) or [])
        match = _JOB_IN_CUSTOM_ID.fullmatch(getattr(comp, "custom_id", None) or "")
        if match is None:
            continue
        job = job or match["job"]
        if match["action"] not in ("u", "r", "x") and match["job"] == job and int(match["index"]) not in indexes:
            indexes.append(int(match["index"]))  # V<i>, or the tools of an upscaled image i
    return (job, sorted(indexes)) if job else None


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def result_text(prompt: str, user_id: str, result: ImageResult | None = None, *, note: str = "") -> str:
    """``**prompt** — @user (model)``, never longer than a message may be."""
    tail = f" — <@{user_id}>"
    if result is not None and result.model:
        tail += f" ({result.model})"
    if result is not None and result.notice:
        tail += f"\n-# {_(result.notice)}"
    if note:
        tail += f"\n{note}"
    room = MESSAGE_LIMIT - len(tail) - 4
    return f"**{clip(prompt.replace('*', '＊'), room)}**{tail}"[:MESSAGE_LIMIT]


def story_text(told: Story, user_id: str, result: ImageResult | None = None) -> str:
    """``**Zoom out 2× of image 1** — *prompt* — @user (model)``; a plain request keeps ``result_text``'s form."""
    if not told.headline:
        return result_text(told.prompt, user_id, result)
    tail = f" — <@{user_id}>"
    if result is not None and result.model:
        tail += f" ({result.model})"
    if result is not None and result.notice:
        tail += f"\n-# {_(result.notice)}"
    head = f"**{discord.utils.escape_markdown(told.headline)}**"
    room = MESSAGE_LIMIT - len(head) - len(tail) - 5
    prompt = f" — *{clip(discord.utils.escape_markdown(told.prompt), room)}*" if told.prompt and room > 10 else ""
    return f"{head}{prompt}{tail}"[:MESSAGE_LIMIT]


def with_note(text: str, note: str) -> str:
    """``text`` and a line under it, shortened so both fit in one message."""
    return f"{clip(text, MESSAGE_LIMIT - len(note) - 1)}\n{note}"[:MESSAGE_LIMIT]


async def upload_files(images: Sequence[GeneratedImage], size_limit: int) -> list[discord.File]:
    """One discord.File per image, each fitted under the per-file and the per-message limit (worker thread)."""
    per_file = min(size_limit, max(1, (REQUEST_LIMIT - _REQUEST_MARGIN) // max(1, len(images))))
    files: list[discord.File] = []
    for image in images:
        data, filename = image.data, image.filename
        if len(data) > per_file:  # a verified result that fits goes as it is: no thread, no re-encode
            data, info = await asyncio.to_thread(imaging.fit_under, image.data, per_file)
            if data is not image.data:
                filename = str(PurePath(filename).with_suffix("." + info.extension))
        description = clip(image.alt_text, _ALT_TEXT_LIMIT) if image.alt_text else None
        files.append(discord.File(io.BytesIO(data), filename=filename, description=description))
    return files


async def preview_file(data: bytes, size_limit: int) -> discord.File:
    """A partial image as the one attachment of a progress edit, fitted under the upload limit (worker thread)."""
    fitted, info = await asyncio.to_thread(imaging.fit_under, data, min(size_limit, REQUEST_LIMIT - _REQUEST_MARGIN))
    return discord.File(io.BytesIO(fitted), filename=f"preview.{info.extension}", description=_("Preview in progress"))


async def render_result(
    job: Job, result: ImageResult, user_id: str, size_limit: int, *, only: int | None = None, publish: bool = False
) -> Rendered:
    """The result message of ``job``: its images with U/V/🔄/✏️ buttons, titled with its story; or image ``only``
    posted on its own (U) with the upscale tools (Vary, Zoom out, Pan, Remix); and Publish, for a private result
    only its requester sees."""
    if only is not None:
        images: Sequence[GeneratedImage] = [result.images[only - 1]]
        indexes = [only]
    else:
        images = result.images
        indexes = list(range(1, len(images) + 1))
    files = await upload_files(images, size_limit)
    if only is not None:
        buttons = upscale_buttons(job.id, only)
        text = story_text(upscale_story(job, only), user_id, result)
    else:
        buttons = result_buttons(job.id, indexes, upscale=True)
        text = story_text(story(job), user_id, result)
    if publish:
        buttons.append(JobButton("pub", job.id, label=_("Publish to the channel"), row=4))
    return Rendered(text, files, view_of(buttons))


def upscale_view(job_id: str, index: int) -> discord.ui.View:
    return view_of(upscale_buttons(job_id, index))


def render_confirmation(job: Job, user_id: str) -> Rendered:
    count = job.images_requested
    if job.estimated_cost is not None:
        cost = format_dollars(job.estimated_cost)
        note = N_("This will cost about {cost} ({count} image(s)). Go ahead?", cost=cost, count=count)
    else:
        note = N_("This will cost more than usual ({count} image(s)). Go ahead?", count=count)
    return Rendered(result_text(job.prompt or _("(variation)"), user_id, note=_(note)), [], confirm_view(job.id))


HISTORY_SIZE = 10
_HISTORY_PROMPT = 70  # characters of each prompt in the list: ten lines and their links fit in one message
_SHOWN = {JobStatus.DONE, JobStatus.DELIVERED}


def render_history(jobs: Sequence[Job], address_of: Callable[[Job], str | None]) -> Rendered:
    """``/history``: the user's newest jobs, one line each (a link to the result message where known), with an
    Open button for each result that can still be shown."""
    if not jobs:
        return Rendered(_("You have no image requests yet. Try `/imagine`."), [], None)
    lines = [_("**Your last image requests** (only you see this)")]
    link_word = _("message")  # the link to a result's message
    buttons: list[discord.ui.Item[Any]] = []
    for number, job in enumerate(jobs[:HISTORY_SIZE], start=1):
        prompt = clip(" ".join(job.prompt.split()).replace("*", "＊"), _HISTORY_PROMPT) or f"({kind_word(job.kind)})"
        when = f"<t:{int(job.created_at)}:R>"
        link = address_of(job)
        status = "" if job.status in _SHOWN else f" · {status_word(job.status)}"
        lines.append(f"`{number}.` **{prompt}** · {when}{status}" + (f" · [{link_word}]({link})" if link else ""))
        if job.status in _SHOWN and job.results and not job.results_pruned:
            buttons.append(
                JobButton("open", job.id, label=_(N_("Open {number}", number=number)), row=(number - 1) // 5)
            )
    return Rendered("\n".join(lines)[:MESSAGE_LIMIT], [], view_of(buttons) if buttons else None)
