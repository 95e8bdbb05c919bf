"""Words shown for ids the core uses (job statuses, named regions, "auto"), in the reader's language.

The ids stay the values a command or form sends back; only the label a person reads is translated.
"""

from __future__ import annotations

from adapters.common.i18n import _
from bot.models import JobStatus
from bot.text import N_, Text

_STATUS_WORDS: dict[JobStatus, Text] = {
    JobStatus.AWAITING_CONFIRMATION: N_("awaiting confirmation"),
    JobStatus.QUEUED: N_("queued"),
    JobStatus.RUNNING: N_("running"),
    JobStatus.DONE: N_("done"),
    JobStatus.DELIVERED: N_("delivered"),
    JobStatus.FAILED: N_("failed"),
    JobStatus.INTERRUPTED: N_("interrupted"),
    JobStatus.CANCELLED: N_("cancelled"),
}
_REGION_LABELS: dict[str, Text] = {
    "top-half": N_("Top half"),
    "bottom-half": N_("Bottom half"),
    "left-half": N_("Left half"),
    "right-half": N_("Right half"),
    "center": N_("Center"),
    "border": N_("Border"),
}
_AUTO = N_("auto (the model picks)")


def status_word(status: JobStatus) -> str:
    """A job's status as a word in the reader's language (``/history``)."""
    return _(_STATUS_WORDS.get(status, status.value.replace("_", " ")))


def region_label(name: str) -> str:
    """A named region (``top-half``) as a label (``Top half``, ``Obere Hälfte``); grid cells stay as they are."""
    return _(_REGION_LABELS.get(name, name))


def size_label(size: str) -> str:
    """A size choice as shown: ``1024x1024`` stays, ``auto`` says what it means in the reader's language."""
    return _(_AUTO) if size == "auto" else size


_KIND_WORDS: dict[str, Text] = {
    "generate": N_("image"),
    "edit": N_("image edit"),
    "vary": N_("variation"),
    "zoom": N_("zoom out"),
    "pan": N_("pan"),
}


def kind_word(kind: str) -> str:
    """What a job made, as a word (``/history`` names a job without a prompt this way, e.g. a variation)."""
    return _(_KIND_WORDS.get(kind, kind))
