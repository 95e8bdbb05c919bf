"""The one place that scrubs secrets from text: user-visible messages and every log record.

Two layers. Shapes: tokens recognisable without knowing them (``sk-`` keys, Slack and Discord tokens,
``Bearer``/``Basic`` credentials, signed URL queries). Registered secrets: every configured secret is
removed whole and in the partial forms services echo back - its first or last 4+ characters standing as
a token (``key ending 'qZvXkJtM'``, ``sk-pro…``, ``****1234``, ``[redacted]…kJtM``), or 8+ of them
anywhere. Text is matched after ``\\uXXXX`` and ``&#NN;`` escapes are decoded, so a JSON-escaped key is
caught too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MASK = "[redacted]"
UPSTREAM_LIMIT = 2048  # characters of upstream text (an error message) kept for details and logs
LOG_LIMIT = 16 * 1024  # characters of one log message; a record is never a dump of a body

# A fragment of a registered secret this long is scrubbed wherever it stands, even glued to other text;
# a shorter one (down to _FRAGMENT) only when it stands as a token, so ordinary words survive.
_FRAGMENT = 4
_GLUED_FRAGMENT = 8
_MIN_SECRET = 6

# Order matters: URLs first (their query strings may hold anything), then tokens by shape. Each pattern
# comes with the lower-case needles one of which any match contains: most log lines skip most patterns.
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    # Signed URLs (Discord CDN ex/is/hm, S3/Azure signatures, tokens in query strings): drop the query.
    (re.compile(r"(?i)\b((?:https?|wss?)://[^\s?#\"'<>]+)\?[^\s\"'<>]*"), r"\1?" + MASK, ("://",)),
    # Authorization credentials wherever they start, even glued to the text before (``xxxBearer eyJ…``).
    (re.compile(r"(?i)(bearer|basic)(\s+|%20)[A-Za-z0-9._~+/=*\-…]+"), r"\1\2" + MASK, ("bearer", "basic")),
    (
        re.compile(
            r"(?i)\b(api[-_ ]?key|authorization|x-api-key|token|secret|password)(\"?\s*[:=]\s*\"?)"
            r"(?:(?:bearer|basic|bot|token)\s+)?[^\s\"',;]+"
        ),
        r"\1\2" + MASK,
        ("key", "authorization", "token", "secret", "password"),
    ),
    # JSON Web Tokens (header.payload[.signature]).
    (re.compile(r"eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}(?:\.[A-Za-z0-9_\-]*)?"), MASK, ("eyj",)),
    # OpenAI keys in every form, including the masked echoes in 401 bodies (sk-proj-***abcd, sk-****).
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_*\-.…]*[A-Za-z0-9_*]"), MASK, ("sk-",)),
    # Slack tokens (bot, user, app-level, refresh, config).
    (re.compile(r"(?<![A-Za-z0-9])xox[a-z](?:\.xox[a-z])?-[A-Za-z0-9\-]+"), MASK, ("xox",)),
    (re.compile(r"(?<![A-Za-z0-9])xapp-[A-Za-z0-9\-]+"), MASK, ("xapp-",)),
    # Discord interaction tokens (they answer as the bot for 15 minutes), in webhook/callback paths and alone.
    (
        re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_\-.]{20,}"),
        r"\1" + MASK,
        ("/webhooks/", "/interactions/"),
    ),
    (re.compile(r"aW50ZXJhY3Rpb24[A-Za-z0-9_\-.]{20,}"), MASK, ("aw50zxjhy3rpb24",)),
    # Discord bot tokens: base64(user id) . timestamp . hmac.
    (
        re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{18,40}\.[A-Za-z0-9_\-]{5,8}\.[A-Za-z0-9_\-]{25,60}"),
        MASK,
        (".",),
    ),
    # OpenAI organization and project ids (they identify the account).
    (re.compile(r"(?<![A-Za-z0-9])org-[A-Za-z0-9]{6,}"), MASK, ("org-",)),
    (re.compile(r"(?<![A-Za-z0-9])proj_[A-Za-z0-9]{6,}"), MASK, ("proj_",)),
)

# \uXXXX (any number of backslashes: a key JSON-escaped twice is still a key), surrogate pairs first,
# and HTML numeric character references.
_ESCAPE = re.compile(
    r"\\+u([dD][89abAB][0-9a-fA-F]{2})\\+u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\+u([0-9a-fA-F]{4})"
    r"|&#[xX]([0-9a-fA-F]{1,6});"
    r"|&#([0-9]{1,7});"
)
# an escape (JSON's or Python repr's) ending right before a fragment: its last character is no part of a word
_ESCAPE_BEFORE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)\Z")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


@dataclass(frozen=True, slots=True)
class _Secret:
    """A registered secret with the ends its fragments are searched by (prepared once, at registration)."""

    value: str
    head: str
    tail: str


_lock = threading.Lock()
_secrets: tuple[_Secret, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Add configured secrets (API keys, tokens, signing secrets) to scrub wherever they appear, whole or in part."""
    global _secrets
    with _lock:
        merged = {s.value for s in _secrets}
        merged.update(v for v in values if v and len(v) >= _MIN_SECRET)
        ordered = sorted(merged, key=len, reverse=True)
        _secrets = tuple(_Secret(v, v[:_FRAGMENT], v[-_FRAGMENT:]) for v in ordered)


def redact(text: str) -> str:
    """Return ``text`` with every known secret (whole or in part) and every secret-shaped token masked."""
    if not text:
        return text
    if "\\" in text or "&#" in text:
        text = _ESCAPE.sub(_unescape, text)
    lowered = text.lower()
    for pattern, replacement, needles in _PATTERNS:  # shapes first: a masked fragment would hide a token's shape
        if any(needle in lowered for needle in needles):
            text = pattern.sub(replacement, text)
    spans = sorted(span for secret in _secrets for span in _fragments(text, secret))
    return _mask_spans(text, spans) if spans else text


def untrusted(text: str, limit: int = UPSTREAM_LIMIT) -> str:
    """Upstream text made fit for a detail or a log line: one line, at most ``limit`` characters, redacted.

    It is cut before it is redacted, so the cut can never leave a secret's end behind unmasked.
    """
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters]"
    return redact(_CONTROL.sub(" ", text))


def _unescape(match: re.Match[str]) -> str:
    high, low, single, hex_ref, dec_ref = match.groups()
    if high is not None:
        code = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
    else:
        code = int(single or hex_ref or dec_ref, 16 if (single or hex_ref) else 10)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return match.group(0)
    char = chr(code)
    if char.isprintable() or (char.isspace() and char not in _LINE_BREAKS):
        return char
    return match.group(0)  # a decoded newline would split the log line


def _fragments(text: str, secret: _Secret) -> Iterator[tuple[int, int]]:
    """Spans of ``text`` that are the secret, or its beginning or end (see the module docstring)."""
    value = secret.value
    glued = min(_GLUED_FRAGMENT, len(value))  # a whole secret shorter than that is masked anywhere too
    at = text.find(secret.tail)
    while at >= 0:
        end = at + _FRAGMENT
        longest = _FRAGMENT
        while longest < len(value) and end - longest > 0 and text[end - longest - 1] == value[-longest - 1]:
            longest += 1
        # the longest match may have swallowed the end of an escape (``\u3000`` before a key ending "0…"):
        # any start from which the fragment stands as a token will do
        starts = range(end - longest, end - _FRAGMENT + 1)
        start = next((i for i in starts if _stands(text, i, end, glued=end - i >= glued)), None)
        if start is not None:
            yield start, end
        at = text.find(secret.tail, at + 1)
    at = text.find(secret.head)
    while at >= 0:
        longest = _FRAGMENT
        while longest < len(value) and at + longest < len(text) and text[at + longest] == value[longest]:
            longest += 1
        ends = range(at + longest, at + _FRAGMENT - 1, -1)
        stop = next((i for i in ends if _stands(text, at, i, glued=i - at >= glued)), None)
        if stop is not None:
            yield at, stop
        at = text.find(secret.head, at + 1)


def _stands(text: str, start: int, end: int, *, glued: bool) -> bool:
    """Whether ``text[start:end]`` is to be masked: long enough to mask anywhere, or standing as a token."""
    return glued or (_edge_before(text, start) and _edge_after(text, end))


def _edge_before(text: str, start: int) -> bool:
    """Whether ``text[start:]`` begins a token: after nothing, a non-alphanumeric or an escape (``\\xa0``)."""
    if start == 0:
        return True
    before = text[start - 1]
    if not before.isalnum():
        return True
    return _ESCAPE_BEFORE.search(text, max(0, start - 10), start) is not None


def _edge_after(text: str, end: int) -> bool:
    return end >= len(text) or not text[end].isalnum()


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace each (sorted, possibly overlapping) span by one mask."""
    parts: list[str] = []
    kept = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        parts += [text[kept:cur_start], MASK]
        kept = cur_end
        cur_start, cur_end = start, end
    parts += [text[kept:cur_start], MASK, text[cur_end:]]
    return "".join(parts)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and any traceback of every record.

    Attach it to handlers (not loggers) so records from every library pass through it. A message longer
    than ``LOG_LIMIT`` is cut (before redaction) so no body is ever logged whole.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not hide the record
            message = str(record.msg)
        if len(message) > LOG_LIMIT:
            message = f"{message[:LOG_LIMIT]}… [{len(message) - LOG_LIMIT} more characters]"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
