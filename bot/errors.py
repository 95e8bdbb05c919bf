"""The ImageBotError tree: every failure a user can meet, each with a safe message and a reference id.

Provider and platform exceptions are translated into this tree once, at the boundary where they are
caught. ``str(error)`` is always the user-safe text in English; ``text`` is the same message as a template
with its values (``bot.text``), which adapters render in the reader's language. The raw detail lives in
``detail`` (already redacted) and goes to the log next to the same reference id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import ClassVar

from bot.redact import redact, untrusted
from bot.text import N_, NP_, Text

DETAIL_LIMIT = 4096  # characters of detail kept for the log (upstream parts are capped smaller before)
SAFETY_CATEGORIES = (
    "sexual",
    "sexual/minors",
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "violence",
    "violence/graphic",
)
OTHER_CATEGORY = "other"
MAX_CATEGORIES = 5
# "self_harm", "Self-Harm", "harassment threatening": every spelling of a known category, compared squeezed
_CATEGORY_BY_KEY = {re.sub(r"[^a-z]", "", c): c for c in SAFETY_CATEGORIES}
_REF_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O or 1/I: easy to read aloud


def plural(count: int, unit: str) -> str:
    """``1 second``, ``2 seconds``."""
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def safety_categories(raw: Iterable[object]) -> tuple[str, ...]:
    """Flagged categories as shown to users: known names only, anything else is "other" (deduplicated, at most 5).

    The raw values come from an upstream answer and may hold anything, so none of their text is kept.
    """
    shown: list[str] = []
    for value in raw:
        if not isinstance(value, str) or not value.strip():
            continue
        key = re.sub(r"[^a-z]", "", value.lower()) if len(value) <= 64 else ""
        category = _CATEGORY_BY_KEY.get(key, OTHER_CATEGORY)
        if category not in shown:
            shown.append(category)
    known = [c for c in shown if c != OTHER_CATEGORY][:MAX_CATEGORIES]
    if OTHER_CATEGORY in shown:
        known = [*known[: MAX_CATEGORIES - 1], OTHER_CATEGORY]
    return tuple(known)


def new_ref() -> str:
    """A short reference id users can quote and operators can grep for."""
    return "".join(secrets.choice(_REF_ALPHABET) for _ in range(6))


class ImageBotError(Exception):
    """Base of every error a user may see.

    ``user_message`` is written for the person who asked for the image; it never holds a key, a
    token, a raw provider message or a traceback. ``kind`` is a stable machine name for the class of
    problem (adapters and tests switch on it); ``retryable`` says whether trying again later may help.
    """

    kind: ClassVar[str] = "unexpected"
    retryable: ClassVar[bool] = False
    default_message: ClassVar[Text | str] = N_("Sorry, something went wrong on my side while making your image.")
    quotes_ref: ClassVar[bool] = True  # False for an answer that is not a failure: no reference id to quote

    def __init__(self, user_message: Text | str | None = None, *, detail: str = "", ref: str | None = None):
        self.text = _as_text(user_message or self.default_message)
        self.user_message = str(self.text)
        self.detail = untrusted(detail, DETAIL_LIMIT)
        self.ref = ref or new_ref()
        super().__init__(self.user_message)

    def __str__(self) -> str:
        return self.user_message

    def friendly(self) -> str:
        """The message with its reference id, as adapters show it."""
        return f"{self.user_message} (ref {self.ref})" if self.quotes_ref else self.user_message

    def friendly_text(self) -> Text:
        """``friendly()`` as a template, for adapters to render in the reader's language."""
        return N_("{message} (ref {ref})", message=self.text, ref=self.ref) if self.quotes_ref else self.text

    def log_line(self) -> str:
        """One redacted line for the log: kind, ref, and what really happened."""
        return redact(f"{self.kind} ref={self.ref}: {self.detail or self.user_message}")


def _as_text(message: Text | str) -> Text:
    """A plain string (not in the catalogue) is shown as it is: a field, so braces in it are never a template."""
    return message if isinstance(message, Text) else Text("{message}", {"message": message})


class UnexpectedError(ImageBotError):
    """A bug or an exception nobody translated: generic apology, details only in the log."""


# --- the user's input -----------------------------------------------------------------------------


class InvalidRequestError(ImageBotError):
    """The prompt or an option is not acceptable (empty prompt, too many images, wrong size...)."""

    kind = "invalid_input"
    default_message = N_("That request isn't something I can make; please check the prompt and options.")


class InvalidImageError(InvalidRequestError):
    """An uploaded image is unreadable, of the wrong type, too big, or a mask does not fit."""

    default_message = N_("I couldn't use that image. Send a PNG, JPEG, WebP or GIF under the size limit.")


class SafetyRefusalError(ImageBotError):
    """The provider's safety system refused the prompt (input stage) or the picture (output stage)."""

    kind = "refused_by_safety"

    def __init__(
        self,
        *,
        stage: str | None = None,
        categories: tuple[str, ...] = (),
        detail: str = "",
        ref: str | None = None,
    ):
        self.stage = stage if stage in ("input", "output") else None
        self.categories = categories = safety_categories(categories)
        flagged = N_(" (flagged: {categories})", categories=", ".join(categories)) if categories else ""
        if stage == "output":
            message = N_(
                "The image service's safety filter refused the generated picture{flagged}. "
                "Try rephrasing it; retrying the same request won't help.",
                flagged=flagged,
            )
        elif stage == "input":
            message = N_(
                "The image service's safety filter refused that prompt or image{flagged}. "
                "Try rephrasing it; retrying the same request won't help.",
                flagged=flagged,
            )
        else:
            message = N_(
                "The image service's safety filter refused that request{flagged}. "
                "Try rephrasing it; retrying the same request won't help.",
                flagged=flagged,
            )
        super().__init__(message, detail=detail, ref=ref)


class TooManyJobsError(ImageBotError):
    """This user already has the maximum number of jobs waiting or running."""

    kind = "quota_exceeded"
    default_message = N_("You already have the maximum number of images in progress. Wait for one to finish.")


class JobCancelledError(ImageBotError):
    """The requester took back a job while it waited in line: nothing was made or charged."""

    kind = "cancelled"
    default_message = N_("Cancelled — nothing was made or charged.")
    quotes_ref = False


class TooLateToCancelError(ImageBotError):
    """Cancel was pressed after the image service had started on the job."""

    kind = "too_late_to_cancel"
    default_message = N_("Too late to cancel: the image is being made.")
    quotes_ref = False


class BusyError(ImageBotError):
    """The queue is full or the bot is shutting down: the request was not accepted."""

    kind = "busy"
    retryable = True
    default_message = N_("I'm too busy to take more requests right now. Please try again in a minute.")


# --- the operator's configuration and account -------------------------------------------------------


class ConfigurationError(ImageBotError):
    """A setting is missing or wrong; the operator has to fix it."""

    kind = "config_error"
    default_message = N_("The bot is not configured correctly. Please tell the person who runs it.")


class AuthenticationError(ConfigurationError):
    """The API key is missing, wrong or revoked (never says which part of the key)."""

    default_message = N_(
        "The image service rejected the bot's API key. The operator needs to set a valid OPENAI_API_KEY."
    )


class PermissionDeniedError(ConfigurationError):
    """The key is valid but may not use this model (e.g. organization verification needed)."""

    default_message = N_(
        "The bot's API account is not allowed to use this model (it may need organization "
        "verification). The operator can pick another model or verify the organization."
    )


class ModelUnavailableError(ConfigurationError):
    """The model is unknown to the capability table, retired, or unknown to the provider."""

    default_message = N_(
        "That image model isn't available. The operator can change IMAGEBOT_DEFAULT_MODEL or the "
        "model table (in the settings override file, config/settings.toml)."
    )


class QuotaExhaustedError(ImageBotError):
    """The provider account is out of credit or hit its billing limit."""

    kind = "quota_exceeded"
    default_message = N_(
        "The bot's image budget with the provider is used up (billing limit or no credit left). "
        "Please tell the operator."
    )


# --- the provider's health -----------------------------------------------------------------------------


class RateLimitedError(ImageBotError):
    """The provider kept answering 429 after our retries."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, *, retry_after: float | None = None, detail: str = "", ref: str | None = None):
        self.retry_after = retry_after
        super().__init__(_rate_limited(retry_after), detail=detail, ref=ref)


def _rate_limited(seconds: float | None) -> Text:
    if seconds is None or seconds != seconds:  # absent or NaN
        return N_("The image service is rate-limiting the bot right now. Please try again in a minute.")
    if seconds < 59.5:
        return NP_(
            "The image service is rate-limiting the bot right now. Please try again in about {count} second.",
            "The image service is rate-limiting the bot right now. Please try again in about {count} seconds.",
            max(1, round(seconds)),
        )
    if seconds < 3570:
        return NP_(
            "The image service is rate-limiting the bot right now. Please try again in about {count} minute.",
            "The image service is rate-limiting the bot right now. Please try again in about {count} minutes.",
            round(seconds / 60),
        )
    # an hour or more (or an absurd header value): no false precision
    return N_("The image service is rate-limiting the bot right now. Please try again later.")


class ProviderOutageError(ImageBotError):
    """The provider failed (5xx, connection refused) even after retries."""

    kind = "provider_outage"
    retryable = True
    default_message = N_("The image service is having trouble right now. Please try again in a few minutes.")


class ProviderTimeoutError(ProviderOutageError):
    """The provider did not answer in time."""

    default_message = N_("The image service took too long to answer. Please try again in a moment.")


class ProviderResponseError(ProviderOutageError):
    """The provider answered with something that is not a valid Images API response or image."""

    default_message = N_("The image service sent back something I couldn't read. Please try again.")
