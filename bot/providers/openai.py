"""The OpenAI Images API (and OpenAI-compatible servers) over aiohttp.

JSON for generations, multipart for edits and variations; retries that honour ``retry-after-ms`` and
``retry-after``; every failure translated once, here, into the ``ImageBotError`` tree.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import mmap
import os
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import aiohttp
import pybase64

from bot import imaging
from bot.errors import (
    AuthenticationError,
    ImageBotError,
    InvalidImageError,
    InvalidRequestError,
    ModelUnavailableError,
    PermissionDeniedError,
    ProviderOutageError,
    ProviderResponseError,
    ProviderTimeoutError,
    QuotaExhaustedError,
    RateLimitedError,
    SafetyRefusalError,
    safety_categories,
)
from bot.metrics import Metrics
from bot.models import (
    ProviderEdit,
    ProviderGenerate,
    ProviderHealth,
    ProviderImages,
    ProviderVary,
    Usage,
    WriteAhead,
)
from bot.ports import OnPartial
from bot.redact import untrusted
from bot.settings import OpenAISettings
from bot.text import N_

if TYPE_CHECKING:
    from bot.limits import ByteBudget

log = logging.getLogger(__name__)

USER_AGENT = "imagebot/0.1 (+aiohttp)"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Codes that arrive with a retryable status (429) but can never succeed by waiting.
TERMINAL_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "moderation_blocked",
        "content_policy_violation",
        "invalid_api_key",
        "model_not_found",
    }
)
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
_SAFETY_LIST = re.compile(r"safety_violations=\[([^\]]{0,2000})\]")
_FIELD_LIMIT = 64  # characters of an upstream type, code or param kept for the log
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_STREAM_CHUNK = 256 * 1024
_INLINE_LINE = 4096  # stream lines up to this long are framed on the loop; longer ones in a worker thread
_SPOOL_FLUSH = 1024 * 1024  # spool writes go to a worker thread in pieces of about this size
_SPOOL_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="spool")
_ERROR_BODY_LIMIT = 1024 * 1024  # an error body longer than this is cut (it is only parsed for its message)
Buffer: TypeAlias = bytes | bytearray | mmap.mmap


# --- pure decisions (table-tested) ----------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = -1.0
        if value >= 0 and value == value:  # NaN check
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0 if seconds == seconds else None
    return seconds


def parse_reset_duration(value: str | None) -> float | None:
    """OpenAI's ``x-ratelimit-reset-*`` values such as ``"1s"``, ``"6m0s"``, ``"20ms"`` -> seconds."""
    if not value:
        return None
    total = 0.0
    matched = False
    for number, unit in _DURATION_PART.findall(value.strip()):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


def should_retry(status: int | None, code: str | None, server_says: str | None = None) -> bool:
    """Whether a failed attempt may succeed if repeated. ``status`` None = no answer (connection, timeout).

    ``server_says`` is the ``x-should-retry`` header, which overrides the status (as OpenAI's SDK does),
    except that quota, safety and key errors are never retried.
    """
    if code in TERMINAL_CODES:
        return False
    if server_says is not None and server_says.strip().lower() in {"true", "false"}:
        return server_says.strip().lower() == "true"
    if status is None:
        return True
    return status in RETRYABLE_STATUSES or status >= 500


def backoff_delay(attempt: int, retry_after: float | None, *, jitter: float) -> float:
    """How long to sleep before retry number ``attempt`` (0-based); ``jitter`` is in [0, 1)."""
    if retry_after is not None:
        return float(retry_after)
    base = min(INITIAL_BACKOFF * 2.0**attempt, MAX_BACKOFF)
    return base * (1 - 0.25 * jitter)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: its ``event:`` name (None if the server sent none) and its joined ``data:``."""

    event: str | None
    data: str


class SSEDecoder:
    """Incremental SSE framing: feed it lines, get an event at each blank line that ends one."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> SSEEvent | None:
        """The event being read, if it has data (a stream may end without the final blank line)."""
        event, data = self._event, self._data
        self._event, self._data = None, []
        return SSEEvent(event, "\n".join(data)) if data else None


def parse_sse_lines(lines: Iterable[str]) -> list[SSEEvent]:
    """Every event in ``lines`` (``event:``/``data:`` fields, blank-line separated, ``:`` comments skipped)."""
    decoder = SSEDecoder()
    events = [event for line in lines if (event := decoder.feed(line)) is not None]
    tail = decoder.flush()
    return [*events, tail] if tail is not None else events


def translate_error(
    status: int, body: Any, *, model: str, retry_after: float | None = None, raw_text: str = ""
) -> ImageBotError:
    """Turn a non-2xx answer into the right ``ImageBotError``.

    Everything in the answer is untrusted: its fields only choose the error class and a message from a
    fixed set; what reaches the detail (and so the log) is capped and redacted.
    """
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "")
    code = str(error.get("code") or "")
    etype = str(error.get("type") or "")
    param = str(error.get("param") or "")
    shown = {"type": etype, "code": code, "param": param}
    fields = " ".join(f"{name}={untrusted(value, _FIELD_LIMIT) or '-'}" for name, value in shown.items())
    detail = f"HTTP {status} {fields}: {untrusted(message or raw_text)}"

    if code in {"moderation_blocked", "content_policy_violation", "content_filter"} or (
        etype == "image_generation_user_error" and "safety" in message.lower()
    ):
        moderation = error.get("moderation_details")
        moderation = moderation if isinstance(moderation, dict) else {}
        stage = moderation.get("moderation_stage")
        categories = moderation.get("categories")
        if not isinstance(categories, list):
            found = _SAFETY_LIST.search(message)
            categories = found.group(1).split(",") if found else []
        return SafetyRefusalError(
            stage=stage if stage in ("input", "output") else None,  # a tuple: stage may be unhashable
            categories=safety_categories(categories),
            detail=detail,
        )
    if code in {"billing_hard_limit_reached", "insufficient_quota"} or etype == "insufficient_quota":
        return QuotaExhaustedError(detail=detail)
    if status == 401 or code == "invalid_api_key":
        return AuthenticationError(detail=detail)
    if status == 403:
        return PermissionDeniedError(
            N_(
                "The bot's API account may not use the model '{model}' (the organization may need "
                "verification). The operator can verify it or pick another model with IMAGEBOT_DEFAULT_MODEL.",
                model=model,
            ),
            detail=detail,
        )
    if status == 404 or code == "model_not_found":
        return ModelUnavailableError(
            N_(
                "The image service doesn't offer the model '{model}'. The operator can choose another one "
                "(IMAGEBOT_DEFAULT_MODEL, or the model table in the settings override file).",
                model=model,
            ),
            detail=detail,
        )
    if status == 429:
        return RateLimitedError(retry_after=retry_after, detail=detail)
    if status in {408, 504}:
        return ProviderTimeoutError(detail=detail)
    if status >= 500 or status == 409:
        return ProviderOutageError(detail=detail)
    if status in {400, 413, 415, 422}:
        lowered = message.lower()
        if param in {"image", "image[]", "mask"} or "image" in lowered or "mask" in lowered:
            return InvalidImageError(
                N_(
                    "The image service couldn't use the uploaded image. Images must be PNG, JPEG or WebP "
                    "(under 50 MB); a mask must be a PNG with transparency and the same size as the image."
                ),
                detail=detail,
            )
        hints = {
            "size": N_("that size isn't accepted for this model"),
            "prompt": N_("the prompt wasn't accepted (is it empty or too long?)"),
            "n": N_("that number of images isn't accepted for this model"),
            "quality": N_("that quality isn't accepted for this model"),
            "model": N_("the model name wasn't accepted"),
        }
        hint = hints.get(param, N_("it said the request was invalid"))
        return InvalidRequestError(N_("The image service refused the request: {hint}.", hint=hint), detail=detail)
    return ProviderOutageError(detail=detail)


def parse_usage(body: Mapping[str, Any]) -> Usage | None:
    """The ``usage`` object of an Images API answer, or None if absent or malformed."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}

    def number(value: Any) -> int:
        return value if isinstance(value, int) and value >= 0 else 0

    return Usage(
        input_tokens=number(usage.get("input_tokens")),
        output_tokens=number(usage.get("output_tokens")),
        text_input_tokens=number(details.get("text_tokens")),
        image_input_tokens=number(details.get("image_tokens")),
        total_tokens=number(usage.get("total_tokens")),
    )


@dataclass(frozen=True, slots=True)
class _Failure:
    error: ImageBotError
    status: int | None = None  # None: no answer at all (connection error, timeout)
    code: str | None = None
    retry_after: float | None = None
    should_retry_header: str | None = None
    retryable: bool = True  # False once previews were streamed: a retry would show the user a new picture


@dataclass(frozen=True, slots=True)
class _StreamItem:
    """One decoded stream event: a preview, a finished image (with usage), an error body, or nothing."""

    kind: str  # "partial", "completed", "error", "other"
    image: bytes = b""
    usage: Usage | None = None
    body: Any = None


def _decode_stream_event(event: SSEEvent) -> _StreamItem:
    """Parse one SSE event of an image stream and base64-decode its image (worker thread)."""
    if event.data.strip() == "[DONE]":
        return _StreamItem("other")
    try:
        body = json.loads(event.data)
    except ValueError as exc:
        raise ProviderResponseError(detail=f"stream event is not JSON ({len(event.data)} chars): {exc}") from None
    if not isinstance(body, dict):
        raise ProviderResponseError(detail=f"stream event is not an object: {event.data[:200]}")
    kind = str(body.get("type") or event.event or "")
    if kind == "error" or isinstance(body.get("error"), dict):
        return _StreamItem("error", body=body)
    if kind.endswith((".partial_image", ".completed")):
        b64 = body.get("b64_json")
        if not isinstance(b64, str):
            raise ProviderResponseError(detail=f"stream event {kind} has no b64_json")
        try:
            image = pybase64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ProviderResponseError(detail=f"stream event {kind}: b64_json is not valid base64") from None
        if kind.endswith(".partial_image"):
            return _StreamItem("partial", image)
        if not _looks_complete(image):
            raise ProviderResponseError(detail=f"stream event {kind} holds a cut-off image ({len(image)} bytes)")
        return _StreamItem("completed", image, parse_usage(body))
    return _StreamItem("other")


def _feed_line(decoder: SSEDecoder, line: bytes) -> tuple[SSEEvent, _StreamItem] | None:
    """Feed one stream line to ``decoder``; the event it ends, decoded (worker thread: the line, or the event's
    joined data, can be megabytes of base64)."""
    event = decoder.feed(line.decode("utf-8", "replace"))
    return None if event is None else (event, _decode_stream_event(event))


def _stream_error_status(body: Any) -> int:
    """The HTTP status an error event would have had (a stream's own status was already 200)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code, etype = str(error.get("code") or ""), str(error.get("type") or "")
    if code in {"rate_limit_exceeded", "insufficient_quota"} or etype in {"requests", "tokens"}:
        return 429
    if code in {"server_error", "server_is_overloaded", "slow_down"} or etype in {
        "server_error",
        "service_unavailable_error",
    }:
        return 500
    return 400


@dataclass(frozen=True, slots=True)
class _Decoded:
    images: tuple[bytes | str, ...]  # bytes for b64_json items, str for url items
    revised_prompts: tuple[str | None, ...]
    usage: Usage | None


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _looks_complete(image: bytes) -> bool:
    """A cheap end-of-file check (the service verifies each image fully later): catches cut-off answers."""
    kind = imaging.sniff_format(image)
    if kind == "png":
        return image.endswith(_PNG_END)
    if kind == "jpeg":
        return image.rstrip(b"\x00").endswith(b"\xff\xd9")
    if kind == "webp":
        return len(image) >= 12 and int.from_bytes(image[4:8], "little") + 8 <= len(image)
    return kind is not None


_B64_KEY = re.compile(rb'"b64_json"\s*:\s*$')
_PLACEHOLDER = "\x00b64:{nonce}:"  # a b64_json value in the skeleton (never valid base64; the nonce: unforgeable)
_KEY_LOOKBACK = 64


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a ``b64_json`` string's content lies in the answer (without its quotes)."""

    start: int
    end: int
    escaped: bool  # holds a backslash escape (rare: e.g. ``\\/`` from some JSON encoders)


def _skeleton(raw: Buffer, nonce: str) -> tuple[bytes, list[_Span]]:
    """The answer with every ``b64_json`` string value replaced by a short placeholder, and where those were.

    A lexical scan, not a parse: it only tracks strings (bytes.find is C speed, so the megabytes of base64
    are skipped, not walked) and leaves the JSON grammar to ``json.loads`` of the small skeleton.
    """
    skeleton = bytearray()
    spans: list[_Span] = []
    pos, size = 0, len(raw)
    while True:
        quote = raw.find(b'"', pos)
        if quote < 0:
            skeleton += raw[pos:size]
            return bytes(skeleton), spans
        skeleton += raw[pos : quote + 1]
        start = quote + 1
        end, escaped = _string_end(raw, start)
        if end < 0:  # cut off inside a string: let json.loads say so
            skeleton += raw[start:size]
            return bytes(skeleton), spans
        if _B64_KEY.search(skeleton, max(0, len(skeleton) - _KEY_LOOKBACK - 1), len(skeleton) - 1):
            skeleton += f"\\u0000b64:{nonce}:{len(spans)}".encode()
            spans.append(_Span(start, end, escaped))
        else:
            skeleton += raw[start:end]
        skeleton += b'"'
        pos = end + 1


def _string_end(raw: Buffer, start: int) -> tuple[int, bool]:
    """Index of the quote that closes the string starting at ``start`` (-1: none), and whether it has escapes."""
    escaped = False
    pos = start
    quote = raw.find(b'"', pos)
    while quote >= 0:
        backslash = raw.find(b"\\", pos, quote)
        if backslash < 0:
            return quote, escaped
        escaped = True
        pos = backslash + 2  # skip the escaped character (a quote after a backslash does not close)
        if pos > quote:
            quote = raw.find(b'"', pos)
    return -1, escaped


def _b64_value(raw: Buffer, span: _Span) -> bytes:
    """The image of one ``b64_json`` value, decoded in one call into a buffer of its exact size."""
    view = memoryview(raw)[span.start : span.end]
    try:
        if span.escaped:
            text = json.loads(b'"' + bytes(view) + b'"')
            return pybase64.b64decode(text.encode("ascii"), validate=True)
        return pybase64.b64decode(view, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ProviderResponseError(detail="b64_json is not valid base64") from None
    finally:
        view.release()


def _decode_success(raw: Buffer) -> _Decoded:
    """Parse a 2xx body and base64-decode its images (CPU work: called in a worker thread).

    ``raw`` may be a memory map of the spool: only the small JSON skeleton is copied into Python objects, and
    each image is decoded straight from the buffer into bytes of its final size.
    """
    try:
        nonce = secrets.token_hex(8)
        skeleton, spans = _skeleton(raw, nonce)
        body = json.loads(skeleton)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProviderResponseError(detail=f"answer is not JSON ({len(raw)} bytes): {exc}") from None
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ProviderResponseError(detail=f"answer has no data items: {str(body)[:200]}")
    images: list[bytes | str] = []
    revised: list[str | None] = []
    for item in items:
        if not isinstance(item, dict):
            raise ProviderResponseError(detail="a data item is not an object")
        b64 = item.get("b64_json")
        if isinstance(b64, str):
            image = _image_of(raw, b64, spans, _PLACEHOLDER.format(nonce=nonce))
            if not _looks_complete(image):
                raise ProviderResponseError(detail=f"b64_json holds a cut-off image ({len(image)} bytes)")
            images.append(image)
        elif isinstance(item.get("url"), str) and item["url"].startswith(("http://", "https://")):
            images.append(item["url"])
        else:
            raise ProviderResponseError(detail="a data item has neither b64_json nor an http(s) url")
        prompt = item.get("revised_prompt")
        revised.append(prompt if isinstance(prompt, str) else None)
    return _Decoded(tuple(images), tuple(revised), parse_usage(body))


def _image_of(raw: Buffer, value: str, spans: list[_Span], placeholder: str) -> bytes:
    if value.startswith(placeholder):
        return _b64_value(raw, spans[int(value.removeprefix(placeholder))])
    try:  # a value the scan did not take out (its key was written with escapes): decode it as it is
        return pybase64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ProviderResponseError(detail="b64_json is not valid base64") from None


def _decode_file(path: Path) -> _Decoded:
    """Decode a spooled JSON answer through a memory map: the body is never read into the heap whole."""
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return _decode_success(b"")
        # MAP_POPULATE: the pages are mapped in one go, not faulted in one by one while the scan walks them.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with mmap.mmap(file.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as mapped:
            return _decode_success(mapped)


class OpenAIImages:
    """``ImageProvider`` for the OpenAI Images API and compatible servers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        settings: OpenAISettings,
        org_id: str | None = None,
        project_id: str | None = None,
        on_throttle: Callable[[float], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        result_budget: ByteBudget | None = None,
        metrics: Metrics | None = None,
    ):
        """``result_budget``: bytes that answers being decoded may hold at once (None: no limit)."""
        self._session = session
        self._base = base_url.rstrip("/")
        self._settings = settings
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        if org_id:
            self._headers["OpenAI-Organization"] = org_id
        if project_id:
            self._headers["OpenAI-Project"] = project_id
        self._on_throttle = on_throttle
        self._sleep = sleep
        self._budget = result_budget
        self._metrics = metrics or Metrics()
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout, sock_connect=settings.connect_timeout)

    @property
    def name(self) -> str:
        return "openai"

    @property
    def offline(self) -> bool:
        return False

    # --- ImageProvider ------------------------------------------------------------------------------

    async def generate(self, call: ProviderGenerate, *, on_partial: OnPartial | None = None) -> ProviderImages:
        body: dict[str, Any] = {"model": call.model, "prompt": call.prompt, "n": call.n}
        optional = {
            "size": call.size,
            "quality": call.quality,
            "background": call.background,
            "output_format": call.output_format,
        }
        body.update({k: v for k, v in optional.items() if v})
        body.update(call.extra)
        stream = call.partial_images > 0
        if stream:
            body.update({"stream": True, "partial_images": call.partial_images})
        return await self._images(
            "/images/generations",
            call.model,
            lambda: {"json": body},
            stream=stream,
            on_partial=on_partial,
            spool=call.spool,
        )

    async def edit(self, call: ProviderEdit, *, on_partial: OnPartial | None = None) -> ProviderImages:
        fields = {"model": call.model, "prompt": call.prompt, "n": str(call.n), "size": call.size}
        fields.update({"quality": call.quality, **call.extra})
        stream = call.partial_images > 0
        if stream:
            fields.update({"stream": "true", "partial_images": str(call.partial_images)})

        def form() -> dict[str, Any]:
            data = aiohttp.FormData()
            for key, value in fields.items():
                if value:
                    data.add_field(key, value)
            image_field = "image" if len(call.images) == 1 else "image[]"
            for index, image in enumerate(call.images, start=1):
                extension, mime = _file_kind(image)
                data.add_field(image_field, image, filename=f"image-{index}.{extension}", content_type=mime)
            if call.mask is not None:
                data.add_field("mask", call.mask, filename="mask.png", content_type="image/png")
            return {"data": data}

        return await self._images(
            "/images/edits", call.model, form, stream=stream, on_partial=on_partial, spool=call.spool
        )

    async def vary(self, call: ProviderVary) -> ProviderImages:
        fields = {"model": call.model, "n": str(call.n), "size": call.size, **call.extra}

        def form() -> dict[str, Any]:
            data = aiohttp.FormData()
            for key, value in fields.items():
                if value:
                    data.add_field(key, value)
            data.add_field("image", call.image, filename="image.png", content_type="image/png")
            return {"data": data}

        return await self._images("/images/variations", call.model, form, spool=call.spool)

    async def recover(self, spool: Path) -> ProviderImages:
        """Finish an answer a previous process spooled: decode it (and fetch any ``url`` items)."""
        try:
            decoded = await asyncio.to_thread(_decode_spool, spool)
        except OSError as exc:
            raise ProviderResponseError(detail=f"spool {spool.name} unreadable: {exc.strerror}") from None
        return await self._fetch_urls(decoded)

    async def check(self, model: str) -> ProviderHealth:
        url = f"{self._base}/models/{model}"
        try:
            async with self._session.get(url, headers=self._headers, timeout=self._quick_timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            return ProviderHealth(False, None, f"{self._base} did not answer in time")
        except aiohttp.ClientError as exc:
            return ProviderHealth(False, None, f"cannot reach {self._base}: {type(exc).__name__}")
        if status == 200:
            return ProviderHealth(True, True, f"{self._base} knows {model}")
        body = _json_or_none(raw)
        if status in {401, 403}:
            raise translate_error(status, body, model=model, raw_text=raw.decode("utf-8", "replace"))
        if status == 404:
            return ProviderHealth(True, False, f"{self._base} answered 404 for model {model}")
        return ProviderHealth(True, None, f"{self._base} answered HTTP {status} to the model lookup")

    # --- the HTTP loop ------------------------------------------------------------------------------

    @property
    def _quick_timeout(self) -> aiohttp.ClientTimeout:
        settings = self._settings
        return aiohttp.ClientTimeout(total=min(30.0, settings.request_timeout), sock_connect=settings.connect_timeout)

    async def _images(
        self,
        path: str,
        model: str,
        request_kwargs: Callable[[], dict[str, Any]],
        *,
        stream: bool = False,
        on_partial: OnPartial | None = None,
        spool: WriteAhead | None = None,
    ) -> ProviderImages:
        attempts = self._settings.max_retries + 1
        for attempt in range(attempts):
            outcome = await self._attempt(
                path, model, request_kwargs, stream=stream, on_partial=on_partial, spool=spool
            )
            if isinstance(outcome, ProviderImages):
                self._metrics.upstream_attempt(model, None, None)
                return outcome
            self._metrics.upstream_attempt(model, outcome.error, outcome.status)
            if (
                attempt == attempts - 1
                or not outcome.retryable
                or not should_retry(outcome.status, outcome.code, outcome.should_retry_header)
            ):
                raise outcome.error
            if outcome.retry_after is not None and outcome.retry_after > self._settings.retry_after_cap:
                log.warning("not retrying %s: retry-after %.0fs is over the cap", path, outcome.retry_after)
                raise outcome.error
            delay = backoff_delay(attempt, outcome.retry_after, jitter=random.random())  # noqa: S311 - jitter only
            log.warning(
                "retrying POST %s in %.2fs (attempt %d of %d): %s",
                path,
                delay,
                attempt + 2,
                attempts,
                outcome.error.log_line(),
            )
            self._metrics.upstream_retry(model, outcome.status)
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        path: str,
        model: str,
        request_kwargs: Callable[[], dict[str, Any]],
        *,
        stream: bool = False,
        on_partial: OnPartial | None = None,
        spool: WriteAhead | None = None,
    ) -> ProviderImages | _Failure:
        """One HTTP round trip: the images, or what went wrong and whether the server said when to retry.

        A 2xx body is written to ``spool`` (when given) as it arrives and renamed into place once complete,
        before it is decoded: from then on a crash loses nothing. A body cut short (fewer bytes than
        announced, a dropped connection) is a transport failure; a complete answer that holds no usable
        image is a response failure; both are retried like an outage.
        """
        started = time.monotonic()
        previews: list[int] = []  # previews handed on in this attempt (a failure after one is not retried)
        try:
            async with self._session.post(
                self._base + path, headers=self._headers, timeout=self._timeout, **request_kwargs()
            ) as resp:
                status = resp.status
                headers = dict(resp.headers)
                if 200 <= status < 300:
                    self._note_rate_headers(headers)
                    if spool is not None:
                        await spool.answered()  # billed from here on, whatever becomes of the body
                    request_id = scrub_header(headers.get("x-request-id"))
                    if stream and resp.content_type == "text/event-stream":
                        log.info("POST %s -> %s streaming (request %s)", path, status, request_id)
                        return await self._read_stream(resp, path, model, on_partial, previews, spool)
                    async with _SpoolWriter.to(spool) as body:
                        await self._receive(resp, body)
                        # While decoding: the mapped body plus the images (3/4 of its base64).
                        await body.settle()
                        async with self._holding(body.size * 7 // 4):
                            decoded = await asyncio.to_thread(body.commit_and_decode)
                    log.info(
                        "POST %s -> %s in %.2fs, %d bytes (request %s)",
                        path,
                        status,
                        time.monotonic() - started,
                        body.size,
                        request_id,
                    )
                    return await self._fetch_urls(decoded)
                raw = await _read_capped(resp, _ERROR_BODY_LIMIT)
        except TimeoutError:
            elapsed = time.monotonic() - started
            timed_out = ProviderTimeoutError(detail=f"POST {path} timed out after {elapsed:.1f}s")
            return _Failure(timed_out, retryable=not previews)
        except aiohttp.ClientError as exc:
            outage = ProviderOutageError(detail=f"POST {path} failed: {type(exc).__name__}: {exc}")
            return _Failure(outage, retryable=not previews)
        except ProviderResponseError as exc:  # a complete 2xx that holds no usable image
            return _Failure(exc, retryable=not previews)
        elapsed = time.monotonic() - started
        log.info(
            "POST %s -> %s in %.2fs (request %s)", path, status, elapsed, scrub_header(headers.get("x-request-id"))
        )
        self._note_rate_headers(headers)
        body = _json_or_none(raw)
        retry_after = parse_retry_after(headers)
        code = _error_code(body)
        text = raw.decode("utf-8", "replace")
        error = translate_error(status, body, model=model, retry_after=retry_after, raw_text=text)
        if status == 429 and self._on_throttle is not None and code not in TERMINAL_CODES:
            self._on_throttle(retry_after if retry_after is not None else 1.0)
        lowered = {k.lower(): v for k, v in headers.items()}
        return _Failure(error, status, code, retry_after, lowered.get("x-should-retry"))

    def _holding(self, size: int) -> contextlib.AbstractAsyncContextManager[None]:
        return self._budget.hold(size) if self._budget is not None else contextlib.nullcontext()

    async def _receive(self, resp: aiohttp.ClientResponse, body: _SpoolWriter) -> None:
        """Copy a response body into ``body`` chunk by chunk; aiohttp raises if it ends short."""
        limit = self._settings.max_download_bytes * 2
        if resp.content_length is not None and resp.content_length <= limit:
            body.expect(resp.content_length)
        async for chunk in resp.content.iter_any():  # as received: no joining into fixed-size pieces
            if body.size + len(chunk) > limit:
                raise ProviderResponseError(detail=f"answer is over {limit} bytes")
            await body.write(chunk)

    async def _read_stream(
        self,
        resp: aiohttp.ClientResponse,
        path: str,
        model: str,
        on_partial: OnPartial | None,
        previews: list[int],
        spool: WriteAhead | None,
    ) -> ProviderImages | _Failure:
        """Read an image event stream: previews go to ``on_partial``, completed events make the result.

        The raw stream is spooled as it arrives; the spool is committed once the stream has ended with images.
        """
        images: list[bytes] = []
        usage: Usage | None = None
        decoder = SSEDecoder()
        async with _SpoolWriter.to(spool) as body:
            async for line in self._lines(resp, body):
                if len(line) <= _INLINE_LINE and line.strip():  # a short field line: framing only
                    decoder.feed(line.decode("utf-8", "replace"))
                    continue
                step = await asyncio.to_thread(_feed_line, decoder, line)  # megabytes of base64, or an event's end
                if step is None:
                    continue
                event, item = step
                if item.kind == "error":
                    status = _stream_error_status(item.body)
                    error = translate_error(status, item.body, model=model, raw_text=event.data)
                    return _Failure(error, status, _error_code(item.body), retryable=not previews)
                if item.kind == "partial":
                    previews.append(len(item.image))
                    await self._hand_on(on_partial, item.image, path)
                elif item.kind == "completed":
                    images.append(item.image)
                    usage = item.usage or usage
            if not images:
                return _Failure(
                    ProviderResponseError(detail=f"POST {path}: the stream ended without a completed image"),
                    retryable=False,
                )
            await body.settle()
            await asyncio.to_thread(body.commit)
        log.info("POST %s: stream finished with %d preview(s) and %d image(s)", path, len(previews), len(images))
        return ProviderImages(tuple(images), usage, (None,) * len(images))

    async def _lines(self, resp: aiohttp.ClientResponse, body: _SpoolWriter) -> AsyncIterator[bytes]:
        """The body's lines as bytes, read as they arrive (a line holding a base64 image can be megabytes long:
        it is copied once here, and turned into text by the caller's worker thread, not on the loop)."""
        limit = self._settings.max_download_bytes * 2
        buffer = bytearray()
        async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
            await body.write(chunk)
            searched = len(buffer)  # only the new bytes can hold the next newline
            buffer += chunk
            while (end := buffer.find(b"\n", searched)) >= 0:
                view = memoryview(buffer)
                try:
                    line = bytes(view[: end + 1])  # one copy (slicing the bytearray would make two)
                finally:
                    view.release()
                del buffer[: end + 1]
                searched = 0
                yield line
            if len(buffer) > limit:
                raise aiohttp.ClientPayloadError(f"a stream line is over {limit} bytes")
        if buffer:
            yield bytes(buffer)
        yield b""  # end any event the server did not close with a blank line

    @staticmethod
    async def _hand_on(on_partial: OnPartial | None, image: bytes, path: str) -> None:
        """Give a preview to the caller; its failure must not cost the job."""
        if on_partial is None:
            return
        try:
            await on_partial(image)
        except Exception:
            log.exception("POST %s: a preview handler failed (the job goes on)", path)

    async def _fetch_urls(self, decoded: _Decoded) -> ProviderImages:
        images: list[bytes] = []
        for item in decoded.images:
            images.append(item if isinstance(item, bytes) else await self._download(item))
        return ProviderImages(tuple(images), decoded.usage, decoded.revised_prompts)

    async def _download(self, url: str) -> bytes:
        """Fetch an image the server answered with a ``url`` for (they expire: fetch at once)."""
        limit = self._settings.max_download_bytes
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ProviderResponseError(detail=f"image url answered HTTP {resp.status}: {url}")
                return await _read_capped(resp, limit, what=f"image at url {url}")
        except TimeoutError:
            raise ProviderTimeoutError(detail=f"downloading a result timed out: {url}") from None
        except aiohttp.ClientError as exc:
            raise ProviderOutageError(detail=f"downloading a result failed: {type(exc).__name__}: {url}") from None

    def _note_rate_headers(self, headers: Mapping[str, str]) -> None:
        """Slow the whole process down when the server says the request budget is spent."""
        if self._on_throttle is None:
            return
        lowered = {k.lower(): v for k, v in headers.items()}
        for kind in ("images", "requests"):
            remaining = lowered.get(f"x-ratelimit-remaining-{kind}")
            if remaining is not None and remaining.strip() == "0":
                reset = parse_reset_duration(lowered.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self._on_throttle(min(reset, self._settings.retry_after_cap))
                return


class _SpoolWriter:
    """A 2xx body on its way to the job's spool (or to memory when the call has none).

    Bytes go to ``<spool>.part`` as they arrive, a megabyte at a time in a worker thread while the next megabyte
    is read (one write in flight at most); ``commit`` writes the rest and renames it to the spool, so a spool on
    disk is always a whole answer. Nothing is fsynced: the
    spool must survive the process being killed, which the page cache does; a power cut is out of scope, as
    for the job database (SQLite WAL with synchronous=NORMAL).
    """

    def __init__(self, path: Path | None, reuse: Callable[[Path], bool] | None = None):
        self.path = path
        self._reuse = reuse  # puts a recycled spool at the part's path, to be written over
        self.size = 0
        self._memory = bytearray()  # the body when there is no spool (sized once when its length is announced)
        self._pending: list[bytes] = []  # received, not yet written
        self._pending_size = 0
        self._file: BinaryIO | None = None
        self._writing: concurrent.futures.Future[None] | None = None  # the batch being written by a spool thread

    @classmethod
    @contextlib.asynccontextmanager
    async def to(cls, spool: WriteAhead | None) -> AsyncIterator[_SpoolWriter]:
        writer = cls(spool.path, spool.reuse) if spool is not None else cls(None)
        try:
            yield writer
        finally:
            with contextlib.suppress(Exception):
                await writer.settle()  # never close the file under a write in flight
            writer._close()  # a body that was not committed stays a ".part" and is never read

    def expect(self, size: int) -> None:
        """The body's announced length: an in-memory body is allocated once, not grown chunk by chunk."""
        if self.path is None and self.size == 0:
            self._memory = bytearray(size)

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.path is None:
            start = self.size - len(chunk)
            room = max(0, min(len(chunk), len(self._memory) - start))
            if room:  # into the space allocated for the announced length
                self._memory[start : start + room] = memoryview(chunk)[:room]
            if room < len(chunk):  # longer than announced, or no length: grow
                self._memory += memoryview(chunk)[room:]
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _SPOOL_FLUSH:
            await self.settle()
            batch, self._pending, self._pending_size = self._pending, [], 0
            self._writing = _SPOOL_WRITERS.submit(self._write, batch)

    async def settle(self) -> None:
        """Wait for the write in flight (call before ``commit`` and before closing).

        A write is handed to a spool thread without an asyncio future: the loop is woken only when it has to wait
        for one (usually the last megabyte has long been written when the next one has arrived)."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        if not writing.done():
            await asyncio.wrap_future(writing)
        writing.result()  # its error, if it failed

    def _write(self, batch: list[bytes]) -> None:
        """Write a batch of received chunks (worker thread)."""
        if self._file is None:
            part = spool_part(self.path or Path())
            part.parent.mkdir(parents=True, exist_ok=True)
            reused = self._reuse is not None and self._reuse(part)
            self._file = part.open("r+b" if reused else "wb")  # a recycled spool is written over, not emptied
        self._file.writelines(batch)

    def _flush(self) -> None:
        """Write what has arrived and is not written yet (worker thread, no write in flight)."""
        batch, self._pending, self._pending_size = self._pending, [], 0
        self._write(batch)

    def commit(self) -> None:
        """The body is complete: make it the spool (worker thread)."""
        if self.path is None:
            return
        self._flush()
        if self._file is not None:
            self._file.truncate()  # what a recycled spool held beyond this answer
        self._close()
        os.replace(spool_part(self.path), self.path)

    def commit_and_decode(self) -> _Decoded:
        """Commit, then decode the answer from the spool (worker thread: JSON and base64 of megabytes)."""
        if self.path is None:
            del self._memory[self.size :]  # an answer shorter than announced (aiohttp raises before this)
            return _decode_success(self._memory)
        self.commit()
        return _decode_file(self.path)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def spool_part(spool: Path) -> Path:
    """Where a body is written until it is complete."""
    return spool.with_name(spool.name + ".part")


def _decode_spool(path: Path) -> _Decoded:
    """A spooled answer, JSON or an event stream, decoded as when it arrived (worker thread)."""
    with path.open("rb") as file:
        head = file.read(64)
    if not head.lstrip().startswith((b"event:", b"data:", b":")):
        return _decode_file(path)
    raw = path.read_bytes()
    images: list[bytes | str] = []
    usage: Usage | None = None
    for event in parse_sse_lines(raw.decode("utf-8", "replace").splitlines()):
        item = _decode_stream_event(event)
        if item.kind == "completed":
            images.append(item.image)
            usage = item.usage or usage
    if not images:
        raise ProviderResponseError(detail=f"spooled stream {path.name} holds no completed image")
    return _Decoded(tuple(images), (None,) * len(images), usage)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, *, what: str = "answer") -> bytes:
    """A body of at most ``limit`` bytes; longer ones are refused for a download, cut for an error body."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
        size += len(chunk)
        if size > limit:
            if what != "answer":
                raise ProviderResponseError(detail=f"{what} is over {limit} bytes")
            chunks.append(chunk[: limit - (size - len(chunk))])
            break
        chunks.append(chunk)
    return b"".join(chunks)


def scrub_header(value: str | None) -> str:
    """An upstream header value fit for a log line: short, printable and redacted."""
    if not value:
        return "-"
    return untrusted(value, 128)


def _file_kind(data: bytes) -> tuple[str, str]:
    """File extension and MIME type for an upload, from its magic bytes (the API checks both)."""
    kind = imaging.sniff_format(data) or "png"
    return imaging.EXTENSIONS[kind], imaging.MIME[kind]


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested deeper than Python recurses
        return None


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code") or error.get("type")
        return str(code) if code else None
    return None
