"""Titles that tell a result's story, for every platform: "Zoom out 2× of image 1 — *a fox*", from the job alone.

One function builds the words from what the job records (its kind, the result it came from, the image index,
the region or mask, the variation strength, whether it is a reroll); each platform only formats the parts
(Discord markdown, Slack mrkdwn, HTML), escaping them its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.common.i18n import SOURCE, _, current
from bot.models import Job, Origin
from bot.text import N_, Text

# one whole template per title, so every language can order the words its own way
_OF_IMAGE = {
    ("zoom", ""): N_("Zoom out {factor}× of image {index}"),
    ("pan", "left"): N_("Pan left of image {index}"),
    ("pan", "right"): N_("Pan right of image {index}"),
    ("pan", "up"): N_("Pan up of image {index}"),
    ("pan", "down"): N_("Pan down of image {index}"),
    ("vary", ""): N_("Variations of image {index}"),
    ("vary", "subtle"): N_("Variations (subtle) of image {index}"),
    ("vary", "strong"): N_("Variations (strong) of image {index}"),
    ("edit", ""): N_("Edit of image {index}"),
    ("edit", "region"): N_("Edit of image {index} ({region})"),
    ("edit", "mask"): N_("Edit of image {index} (with a mask)"),
}
_ALONE = {
    ("zoom", ""): N_("Zoom out {factor}×"),
    ("pan", "left"): N_("Pan left"),
    ("pan", "right"): N_("Pan right"),
    ("pan", "up"): N_("Pan up"),
    ("pan", "down"): N_("Pan down"),
    ("vary", ""): N_("Variations"),
    ("vary", "subtle"): N_("Variations (subtle)"),
    ("vary", "strong"): N_("Variations (strong)"),
    ("edit", ""): N_("Edit"),
    ("edit", "region"): N_("Edit ({region})"),
    ("edit", "mask"): N_("Edit (with a mask)"),
}


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
    """The story of ``job``'s result, in the reader's language."""
    origin = job.origin
    prompt = " ".join(job.prompt.split()) or (origin.about if origin is not None else "")
    headline = _headline(job, origin)
    if origin is not None and origin.reroll:
        if not headline:
            headline = _("Reroll")
        else:
            # English continues the sentence in lower case ("Reroll of pan left of image 1"); other languages
            # keep the title as their catalogue wrote it
            title = headline[0].lower() + headline[1:] if current() == SOURCE else headline
            headline = _(N_("Reroll of {title}", title=title))
    return Story(headline, prompt, job.context.user)


def upscale_story(job: Job, index: int) -> Story:
    """The story of image ``index`` of ``job`` posted on its own (U)."""
    prompt = story(job).prompt
    return Story(_(N_("Upscale of image {index}", index=index)), prompt, job.context.user)


def tool_title(tool: str, index: int) -> str:
    """What an upscaled image's tool is making, in the reader's language: "Zoom out 2× of image 1".

    ``tool`` is a variation strength (subtle, strong), a zoom factor (1.5, 2) or a pan direction."""
    values: dict[str, object] = {}
    if tool in ("subtle", "strong"):
        kind, variant = "vary", tool
    elif tool in ("left", "right", "up", "down"):
        kind, variant = "pan", tool
    else:
        kind, variant, values = "zoom", "", {"factor": tool}
    return _(Text(_OF_IMAGE[(kind, variant)].template, {**values, "index": index}))


def _headline(job: Job, origin: Origin | None) -> str:
    index = origin.index if origin is not None and origin.index else 0
    detail = origin.detail if origin is not None else ""
    if job.kind not in ("zoom", "pan", "vary", "edit"):
        return _("Remix") if origin is not None and origin.action == "remix" else ""
    variant, values = _variant(job, detail)
    template: Text | None = (_OF_IMAGE if index else _ALONE).get((job.kind, variant))
    if template is None:  # an unknown pan direction or strength from an old row: the kind alone
        template = (_OF_IMAGE if index else _ALONE)[(job.kind, "")] if job.kind != "pan" else N_("Pan")
    return _(Text(template.template, {**values, "index": index}))


def _variant(job: Job, detail: str) -> tuple[str, dict[str, object]]:
    """Which template of ``job.kind`` applies, and its values."""
    if job.kind == "zoom":
        return "", {"factor": detail or "?"}
    if job.kind in ("pan", "vary"):
        return detail, {}
    region = job.request.get("region")
    if isinstance(region, str) and region:
        return "region", {"region": region}
    inputs = job.request.get("inputs")
    if isinstance(inputs, list) and any(str(name).startswith("mask") for name in inputs):
        return "mask", {}
    return "", {}
