"""One request, from received to exactly one final answer, for every platform and entry point.

An adapter acknowledges first (Discord ``defer``, Slack ``ack``, an HTTP request simply being open), checks
the ``AccessPolicy``, builds a ``Reply`` for the place the answer goes, and hands the work to ``answer``.
``answer`` never raises: progress reaches the reply (a failing progress edit never costs the job), the
outcome reaches ``Reply.finish`` once, and any failure — the core's ``ImageBotError``, a platform error, a bug
— becomes one friendly, redacted line with a reference id through ``Reply.fail``. That is the rule slack-bolt
needs (an exception leaving a listener after its ack un-sends the ack) and the one every platform gets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from adapters.common.i18n import _
from bot.errors import ImageBotError, UnexpectedError
from bot.jobs import JobOutcome
from bot.metrics import request_trace
from bot.models import Job, Progress
from bot.ports import ProgressSink
from bot.text import N_, Text

log = logging.getLogger(__name__)

Work = Callable[[ProgressSink], Awaitable[JobOutcome | None]]
Translate = Callable[[BaseException], ImageBotError | None]


class Reply(Protocol):
    """How one request is answered on one platform."""

    async def progress(self, update: Progress) -> None:
        """A status change while the job waits or runs (queued with its place, running, a preview)."""
        ...

    async def finish(self, outcome: JobOutcome) -> None:
        """The final answer: the images, a confirmation to press, or a note that the same job is on its way."""
        ...

    async def fail(self, text: str) -> None:
        """The final answer for a failure: ``text`` is friendly, redacted and carries a reference id."""
        ...


def as_user_error(error: BaseException, translate: Translate | None = None) -> ImageBotError:
    """The ``ImageBotError`` to show for any failure (logged here, once, with its reference id)."""
    if isinstance(error, ImageBotError):
        log.warning("%s", error.log_line())
        return error
    translated = translate(error) if translate is not None else None
    if translated is not None:
        log.warning("%s", translated.log_line())
        return translated
    wrapped = UnexpectedError(detail=f"{type(error).__name__}: {error}")
    log.error("unexpected %s (ref %s)", wrapped.detail, wrapped.ref, exc_info=error)
    return wrapped


def friendly(error: BaseException, translate: Translate | None = None) -> str:
    """The only text a user sees for a failure, in the reader's language (``i18n.use``)."""
    return _(as_user_error(error, translate).friendly_text())


async def answer(reply: Reply, work: Work, *, translate: Translate | None = None) -> None:
    """Run ``work`` to exactly one final answer on ``reply``. Never raises, except when cancelled.

    ``work`` gets a progress sink and returns the job's outcome (None when it has answered by itself, e.g.
    by opening a form). Platform errors are turned into user errors by ``translate`` when it knows them.
    """

    async def progress(update: Progress) -> None:
        try:
            await reply.progress(update)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a status line that can't be shown must not cost the job
            log.info("progress not shown (%s): %s", type(exc).__name__, friendly_detail(exc))

    with request_trace() as trace:
        try:
            outcome = await work(progress)
            if outcome is not None:
                delivering = time.monotonic()
                await reply.finish(outcome)
                trace.finished(final_status(outcome), delivery_started=delivering)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the one place every failure is answered
            trace.finished(await fail(reply, exc, translate))


def final_status(outcome: JobOutcome) -> str:
    """A request's final status for the metrics: ``delivered``, or ``held`` (waiting for a confirmation)."""
    return "held" if outcome.needs_confirmation else "delivered"


async def fail(reply: Reply, error: BaseException, translate: Translate | None = None) -> str:
    """Tell the user about ``error`` through ``reply``; if even that fails, the log has it. Returns its kind."""
    shown = as_user_error(error, translate)
    text = _(shown.friendly_text())  # in the reader's language
    try:
        await reply.fail(text)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("could not tell the user about a failure (%s)", type(exc).__name__)
    return shown.kind


def cut_off_text(job: Job) -> str:
    """What the requester of a job a restart interrupted is told, on every platform (plain text: each platform
    escapes it its own way). Honest about the charge: the service bills a generation once it has answered."""
    return _(cut_off_message(job))


def cut_off_message(job: Job) -> Text:
    prompt = " ".join(job.prompt.split())
    if prompt:
        shown = f"{prompt[:100]}{'…' if len(prompt) > 100 else ''}"
        if job.paid_at is None:
            return N_(
                "A restart interrupted your request for “{prompt}”; nothing was charged. Please ask again.",
                prompt=shown,
            )
        return N_(
            "A restart interrupted your request for “{prompt}” while its images were arriving; the image service "
            "had already made them, so they count against the budget, but they are lost. Please ask again.",
            prompt=shown,
        )
    what = {"edit": N_("an image edit"), "vary": N_("variations")}.get(job.kind, N_("images"))
    if job.paid_at is None:
        return N_("A restart interrupted your request for {what}; nothing was charged. Please ask again.", what=what)
    return N_(
        "A restart interrupted your request for {what} while its images were arriving; the image service "
        "had already made them, so they count against the budget, but they are lost. Please ask again.",
        what=what,
    )


def queue_text(position: int, eta_seconds: float | None = None, locale: str | None = None) -> str:
    """The place in line, with the expected wait when recent runs tell it: "Queued — #3 in line, about 40 s"
    (in ``locale``, else the reader's language)."""
    if eta_seconds is None:
        return _(N_("Queued — #{position} in line", position=position), locale)
    return _(N_("Queued — #{position} in line, {wait}", position=position, wait=about(eta_seconds)), locale)


def about(seconds: float) -> Text:
    """A rough duration a person reads at a glance: "about 40 s", "about 3 min"."""
    if seconds < 55:
        return N_("about {seconds} s", seconds=max(5, 5 * math.ceil(seconds / 5)))
    return N_("about {minutes} min", minutes=max(1, round(seconds / 60)))


def friendly_detail(error: BaseException) -> str:
    """A short, redacted description of an error for a log line."""
    if isinstance(error, ImageBotError):
        return error.log_line()
    return UnexpectedError(detail=f"{type(error).__name__}: {error}").detail[:300]
