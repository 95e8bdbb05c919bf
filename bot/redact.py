"""The one place that scrubs secrets from text: user-visible messages and every log record."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

MASK = "[redacted]"

# Order matters: URLs first (their query strings may hold anything), then tokens by shape.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Signed URLs (Discord CDN ex/is/hm, S3/Azure signatures, tokens in query strings): drop the query.
    (re.compile(r"(?i)\b((?:https?|wss?)://[^\s?#\"'<>]+)\?[^\s\"'<>]*"), r"\1?" + MASK),
    # Authorization headers and similar key=value forms.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=*\-]+"), r"\1 " + MASK),
    (
        re.compile(r"(?i)\b(api[-_ ]?key|authorization|x-api-key|token|secret|password)(\"?\s*[:=]\s*\"?)[^\s\"',;]+"),
        r"\1\2" + MASK,
    ),
    # OpenAI keys in every form, including the masked echoes in 401 bodies (sk-proj-***abcd, sk-****).
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_*\-.]*[A-Za-z0-9_*]"), MASK),
    # Slack tokens.
    (re.compile(r"(?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9\-]+"), MASK),
    (re.compile(r"(?<![A-Za-z0-9])xapp-[A-Za-z0-9\-]+"), MASK),
    # Discord interaction tokens (they answer as the bot for 15 minutes), in webhook/callback paths and alone.
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_\-.]{20,}"), r"\1" + MASK),
    (re.compile(r"aW50ZXJhY3Rpb24[A-Za-z0-9_\-.]{20,}"), MASK),
    # Discord bot tokens: base64(user id) . timestamp . hmac.
    (re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{18,40}\.[A-Za-z0-9_\-]{5,8}\.[A-Za-z0-9_\-]{25,60}"), MASK),
    # OpenAI organization and project ids (they identify the account).
    (re.compile(r"(?<![A-Za-z0-9])org-[A-Za-z0-9]{6,}"), MASK),
    (re.compile(r"(?<![A-Za-z0-9])proj_[A-Za-z0-9]{6,}"), MASK),
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Add configured secrets (API keys, tokens, signing secrets) to scrub verbatim wherever they appear."""
    global _secrets
    with _lock:
        merged = set(_secrets)
        merged.update(v for v in values if v and len(v) >= 6)
        # Longest first so a secret containing another is removed whole.
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def redact(text: str) -> str:
    """Return ``text`` with every known secret and every secret-shaped token replaced by a mask."""
    if not text:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and any traceback of every record.

    Attach it to handlers (not loggers) so records from every library pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not hide the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
