"""The one place that turns core results into Slack: files_upload_v2 arguments, Block Kit messages and modals."""

from __future__ import annotations

import json
import re
from typing import Any

from adapters.common.i18n import _
from adapters.common.lifecycle import queue_text
from adapters.common.story import Story, story, upscale_story
from adapters.common.words import kind_word, region_label, status_word
from bot.budgets import format_dollars
from bot.imaging import REGION_NAMES
from bot.models import GeneratedImage, ImageResult, Job
from bot.text import N_, Text

# action ids (buttons carry the job in their value, so they work after a restart)
VARY = "img_vary"  # + "_<index>": action ids must be unique within a block
UPSCALE = "img_upscale"  # + "_<index>": U<i>, that image posted on its own with the upscale tools
# the tools under an upscaled image (values "upscale:<job>:<index>"): action id -> (label, what it does)
UPSCALE_TOOLS: dict[str, tuple[Text | str, str]] = {
    "img_vary_subtle": (N_("Vary (Subtle)"), "subtle"),
    "img_vary_strong": (N_("Vary (Strong)"), "strong"),
    "img_zoom_15": (N_("Zoom out 1.5x"), "1.5"),
    "img_zoom_2": (N_("Zoom out 2x"), "2"),
    "img_pan_left": ("⬅️", "left"),
    "img_pan_right": ("➡️", "right"),
    "img_pan_up": ("⬆️", "up"),
    "img_pan_down": ("⬇️", "down"),
}
UPSCALE_EVENT = "imagebot_upscale"
REROLL = "img_reroll"
REMIX = "img_remix"
CONFIRM = "img_confirm"
CANCEL = "img_cancel"
SHARE = "img_share"
OPEN = "img_open"
HISTORY_SIZE = 10
REMIX_VIEW = "img_remix_modal"
EDIT_VIEW = "img_edit_modal"
PROMPT_BLOCK, PROMPT_ACTION = "prompt", "prompt_input"
REGION_BLOCK, REGION_ACTION = "region", "region_select"
MASK_BLOCK, MASK_ACTION = "mask", "mask_file"
METADATA_EVENT = "imagebot_result"
GRID_RANGES = ("A1:B2", "C1:D2", "A3:B4", "C3:D4", "B2:C3")
WHOLE_IMAGE = "whole"
_ALT_MAX = 1000  # files.getUploadURLExternal refuses longer alt_txt
_TEXT_MAX = 2900  # section text limit is 3000
_MAX_VARY_BUTTONS = 4
_RESULT_FILE = re.compile(r"imagebot-([a-z0-9]{1,40})-(\d{1,2})\.[a-z]{3,4}")


def escape(text: str) -> str:
    """Slack mrkdwn control characters: keeps a prompt from pinging @channel or forming links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote(text: str, limit: int = 1500) -> str:
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return "\n".join(f"> {line}" for line in escape(shown).splitlines() or [""])


def _plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": text[:limit], "emoji": True}


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": _plain(text), "action_id": action_id, "value": value}
    if style:
        button["style"] = style
    return button


def working_message(prompt: str, position: int | None = None) -> dict[str, Any]:
    """The ephemeral note a slash command gets first (``position``: expected place in line)."""
    status = N_("Queued — #{position} in line", position=position) if position else N_("Working on it")
    text = _(N_("{status}: {prompt}", status=status, prompt=escape(prompt[:200])))
    block = {"type": "context", "elements": [{"type": "mrkdwn", "text": f":hourglass_flowing_sand: {text}"}]}
    return {"text": text, "blocks": [block], "response_type": "ephemeral"}


def queued_message(
    position: int, eta_seconds: float | None = None, job_id: str | None = None, *, where: str | None = None
) -> dict[str, Any]:
    """The place in line (and the expected wait), with a Cancel button when the job is known; ``where`` the
    images will appear (default: the channel)."""
    where = where or _("the channel")
    text = ":hourglass: " + _(
        N_("{queued}. Your images will appear in {where}.", queued=queue_text(position, eta_seconds), where=where)
    )
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if job_id is not None:
        cancel = _button(_("Cancel"), CANCEL, f"cancel:{job_id}", "danger")
        blocks.append({"type": "actions", "block_id": f"img_queued:{job_id}", "elements": [cancel]})
    return {"text": text, "blocks": blocks}


def upload_args(job: Job, result: ImageResult) -> dict[str, Any]:
    """Arguments of ``files_upload_v2``: every image in one message, alt text per file, credit and prompt."""
    total = len(result.images)
    uploads = []
    for index, image in enumerate(result.images, start=1):
        title = f"{index}/{total} · {result.prompt[:60]}" if total > 1 else result.prompt[:80]
        alt = image.alt_text or result.prompt or "AI-generated image"
        filename = file_name(job, index, image.filename)
        uploads.append({"file": image.data, "filename": filename, "title": title, "alt_txt": alt[:_ALT_MAX]})
    told = story(job)
    comment = story_comment(told) if told.headline else _asked_for(job, result)
    details = _(N_("AI-generated · {model}", model=result.model)) if result.model else _("AI-generated")
    if result.notice:
        details += f" · {_(result.notice)}"
    args: dict[str, Any] = {"file_uploads": uploads, "initial_comment": f"{comment}\n_{escape(details)}_"}
    if job.context.channel:
        args["channel"] = job.context.channel
    if job.context.thread:
        args["thread_ts"] = job.context.thread
    return args


def _asked_for(job: Job, result: ImageResult) -> str:
    user = f"<@{job.context.user}>"
    verbs = {
        "generate": N_("{user} asked for:", user=user),
        "edit": N_("{user} edited an image:", user=user),
        "vary": N_("{user} asked for variations:", user=user),
    }
    asked = N_("{user} asked:", user=user)  # not nested in _(…): Babel's extractor would miss it
    verb = _(verbs.get(job.kind, asked))
    return f"{verb}\n{quote(result.prompt)}" if result.prompt else user


def story_comment(told: Story) -> str:
    """``<@user> · *Zoom out 2× of image 1*`` and the prompt quoted under it (escaped: it is the user's text)."""
    head = f"<@{told.requester}> · *{escape(told.headline)}*"
    return f"{head}\n{quote(told.prompt)}" if told.prompt else head


def upscale_upload_args(
    job: Job, index: int, image: GeneratedImage, channel: str, thread: str | None
) -> dict[str, Any]:
    """``files_upload_v2`` arguments of image ``index`` of ``job`` posted on its own (U), titled with its story."""
    told = upscale_story(job, index)
    extension = image.filename.rpartition(".")[2] if "." in image.filename else "png"
    upload = {
        "file": image.data,
        "filename": f"imagebot-upscale-{job.id}-{index}.{extension}",  # not the job's own prefix: see shows_images_of
        "title": told.plain()[:80],
        "alt_txt": (image.alt_text or told.plain() or "AI-generated image")[:_ALT_MAX],
    }
    args: dict[str, Any] = {"file_uploads": [upload], "initial_comment": story_comment(told), "channel": channel}
    if thread:
        args["thread_ts"] = thread
    return args


def upscale_controls(job: Job, index: int, channel: str, thread: str | None) -> dict[str, Any]:
    """``chat.postMessage`` arguments of the tools under an upscaled image: Vary (Subtle), Vary (Strong), Zoom out
    1.5x and 2x, Pan ⬅️➡️⬆️⬇️ and Remix (the job and image in every value, so they work after a restart)."""
    value = f"upscale:{job.id}:{index}"
    tools = [_button(_(label), action_id, value) for action_id, (label, _what) in UPSCALE_TOOLS.items()]
    text = _(N_("Keep working on image {index}:", index=index))
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"img_upscale:{job.id}:{index}", "elements": tools[:4]},
        {"type": "actions", "block_id": f"img_pan:{job.id}:{index}", "elements": [*tools[4:], _remix(job)]},
    ]
    args: dict[str, Any] = {"text": text, "blocks": blocks, "unfurl_links": False, "channel": channel}
    args["metadata"] = {"event_type": UPSCALE_EVENT, "event_payload": {"job": job.id, "index": index}}
    if thread:
        args["thread_ts"] = thread
    return args


def _remix(job: Job) -> dict[str, Any]:
    return _button(_("Remix"), REMIX, f"remix:{job.id}")


def file_name(job: Job, index: int, original: str) -> str:
    """The uploaded file's name carries the job id, so a restart can find images already posted."""
    extension = original.rpartition(".")[2] if "." in original else "png"
    return f"imagebot-{job.id}-{index}.{extension}"


def result_file(file: dict[str, Any]) -> tuple[str, int] | None:
    """(job id, image index) of a file we uploaded as a result (named by ``file_name``), else None."""
    match = _RESULT_FILE.fullmatch(str(file.get("name") or ""))
    return (match[1], int(match[2])) if match else None


def shows_images_of(job: Job, message: dict[str, Any]) -> bool:
    """True when a message read back from Slack holds the uploaded images of ``job``."""
    prefix = f"imagebot-{job.id}-"
    return any(str(file.get("name") or "").startswith(prefix) for file in message.get("files") or [])


def shows_controls_of(job: Job, message: dict[str, Any]) -> bool:
    """True when a message read back from Slack (with metadata) is the buttons message of ``job``."""
    metadata = message.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return metadata.get("event_type") == METADATA_EVENT and payload.get("job") == job.id


def controls_message(job: Job, result: ImageResult) -> dict[str, Any]:
    """``chat.postMessage`` arguments of the buttons under a result (job id in values and in metadata)."""
    count = min(len(result.images), _MAX_VARY_BUTTONS)
    upscale = [_button(f"U{i}", f"{UPSCALE}_{i}", f"upscale:{job.id}:{i}") for i in range(1, count + 1)]
    vary = [
        _button(_(N_("Vary {index}", index=i)) if count > 1 else _("Vary"), f"{VARY}_{i}", f"vary:{job.id}:{i}")
        for i in range(1, count + 1)
    ]
    more = [*upscale, _button(_("Reroll"), REROLL, f"reroll:{job.id}"), _remix(job)]
    target = shared_to(job)
    if target is not None:  # a private result: only its requester sees it until they share it
        share = _(N_("Share to #{channel}", channel=channel_name(target)))
        more.append(_button(share, SHARE, f"share:{job.id}", "primary"))
    text = _("Make more from this result:")
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"img_actions:{job.id}", "elements": vary + more},
    ]
    args: dict[str, Any] = {"text": text, "blocks": blocks, "unfurl_links": False}
    args["metadata"] = {"event_type": METADATA_EVENT, "event_payload": {"job": job.id}}
    if job.context.channel:
        args["channel"] = job.context.channel
    if job.context.thread:
        args["thread_ts"] = job.context.thread
    return args


def confirmation_message(job: Job) -> dict[str, Any]:
    """An ephemeral question before an expensive job runs."""
    count = job.images_requested
    if job.estimated_cost is not None:
        cost = format_dollars(job.estimated_cost)
        text = _(N_("This request will cost about {cost} ({count} image(s)). Go ahead?", cost=cost, count=count))
    else:
        text = _(N_("This request will cost more than usual ({count} image(s)). Go ahead?", count=count))
    buttons = [
        _button(_("Confirm"), CONFIRM, f"confirm:{job.id}", "primary"),
        _button(_("Cancel"), CANCEL, f"cancel:{job.id}", "danger"),
    ]
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{text}\n{quote(job.prompt, 500)}"}},
        {"type": "actions", "block_id": f"img_confirm:{job.id}", "elements": buttons},
    ]
    return {"text": text, "blocks": blocks}


def notice(text: str, *, mentions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A short ephemeral notice (errors, refusals, "working on it"): escaped, except mentions of ``mentions``."""
    shown = text[:_TEXT_MAX]
    safe = escape(shown)
    for user in mentions:
        safe = safe.replace(f"&lt;@{escape(user)}&gt;", f"<@{escape(user)}>")
    return {"text": shown, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": safe}}]}


def _prompt_input(initial: str | None, placeholder: str) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": PROMPT_ACTION,
        "multiline": True,
        "max_length": 3000,
        "placeholder": _plain(placeholder, 150),
    }
    if initial:
        element["initial_value"] = initial[:3000]
    return {"type": "input", "block_id": PROMPT_BLOCK, "label": _plain(_("Prompt")), "element": element}


def remix_modal(job: Job, channel: str, thread: str | None) -> dict[str, Any]:
    """The Remix modal: the job's prompt, pre-filled, to change."""
    metadata = json.dumps({"job": job.id, "channel": channel, "thread": thread})
    return {
        "type": "modal",
        "callback_id": REMIX_VIEW,
        "private_metadata": metadata,
        "title": _plain(_("Remix"), 24),
        "submit": _plain(_("Make it"), 24),
        "close": _plain(_("Cancel"), 24),
        "blocks": [_prompt_input(job.prompt, _("Change the prompt"))],
    }


def edit_modal(metadata: dict[str, Any]) -> dict[str, Any]:
    """The Edit image modal: prompt, region to change, optional mask file."""
    regions = [(WHOLE_IMAGE, _("Whole image (or its transparent parts)"))]
    regions += [(name, region_label(name)) for name in REGION_NAMES]
    regions += [(cells, _(N_("Grid cells {cells}", cells=cells))) for cells in GRID_RANGES]
    options = [{"text": _plain(label), "value": value} for value, label in regions]
    return {
        "type": "modal",
        "callback_id": EDIT_VIEW,
        "private_metadata": json.dumps(metadata)[:3000],
        "title": _plain(_("Edit image"), 24),
        "submit": _plain(_("Edit"), 24),
        "close": _plain(_("Cancel"), 24),
        "blocks": [
            _prompt_input(None, _("What should change?")),
            {
                "type": "input",
                "block_id": REGION_BLOCK,
                "optional": True,
                "label": _plain(_("Region to change")),
                "hint": _plain(_("A 4x4 grid: columns A–D, rows 1–4."), 150),
                "element": {
                    "type": "static_select",
                    "action_id": REGION_ACTION,
                    "options": options,
                    "initial_option": options[0],
                },
            },
            {
                "type": "input",
                "block_id": MASK_BLOCK,
                "optional": True,
                "label": _plain(_("Mask (optional)")),
                "hint": _plain(_("A PNG: transparent or white = change, black = keep."), 150),
                "element": {"type": "file_input", "action_id": MASK_ACTION, "filetypes": ["png"], "max_files": 1},
            },
        ],
    }


def share_to(channel: str | None) -> str | None:
    """What a private job keeps in ``JobContext.reply``: the channel its Share button posts to."""
    return json.dumps({"share_to": channel}) if channel else None


def shared_to(job: Job) -> str | None:
    """The channel a private job's result may be shared to (None: not a private job)."""
    try:
        found = json.loads(job.context.reply or "")
    except ValueError:
        return None
    channel = found.get("share_to") if isinstance(found, dict) else None
    return str(channel) if channel else None


def channel_name(channel_id: str) -> str:
    """A button label can't hold a channel mention: the id stands in for the name."""
    return channel_id[:20]


def archive_link(channel: str, ts: str) -> str:
    """A link to a message (Slack's archive URL form, which opens it in the client)."""
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


def history_message(jobs: list[Job], links: dict[str, str] | None = None) -> dict[str, Any]:
    """``/history``: the user's newest jobs, one section each (a link to the result where known), with an Open
    button for results still kept."""
    if not jobs:
        text = _("You have no image requests yet. Try `/imagine a lighthouse at dusk`.")
        return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
    text = _("Your last image requests (only you see this):")
    link_word = _("message")  # the link to a result's message
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}}]
    for number, job in enumerate(jobs[:HISTORY_SIZE], start=1):
        prompt = escape(" ".join(job.prompt.split())[:150]) or kind_word(job.kind)
        when = f"<!date^{int(job.created_at)}^{{date_short_pretty}} {{time}}|{int(job.created_at)}>"
        status = "" if job.status.value in ("done", "delivered") else f" · {status_word(job.status)}"
        link = (links or {}).get(job.id)
        shown = f"*{number}.* {prompt} · {when}{status}" + (f" · <{link}|{link_word}>" if link else "")
        block: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": shown}}
        if job.status.value in ("done", "delivered") and job.results and not job.results_pruned:
            block["accessory"] = _button(_("Open"), OPEN, f"open:{job.id}")
        blocks.append(block)
    return {"text": text, "blocks": blocks}
