"""Hostile upstream error bodies never leak a configured secret, whole or in part.

A property-based fuzz: error answers with statuses 400-599 in every format (JSON, nested, HTML, plain,
truncated, empty, ~1 MB, too deep to parse, unicode) carry the bot's own secrets in every field, category
and header, in the forms services echo them (whole, elided, a tail, JSON-escaped, behind ``Bearer``).
Nothing of a secret - neither whole nor its last 4 characters - may reach the user's text, the log (text
and JSON formats, through the project's own logging set-up) or the job store.

The redaction rule being held (bot/redact.py): a secret's end of 4-7 characters is scrubbed when it stands
as a token (or after ``...``, ``…``, ``*``); 8 or more are scrubbed even glued to other text. So a short
tail is planted with a non-alphanumeric character on each side, a long one anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import re
import string
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.__main__ import configure_logging
from bot.errors import ImageBotError
from bot.jobs import JobService
from bot.limits import Admission
from bot.models import GenerateRequest, JobContext, JobStatus
from bot.providers.openai import OpenAIImages, parse_retry_after, translate_error
from bot.redact import register_secrets
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings, OpenAISettings, load_settings
from bot.store import ResultFiles, SQLiteJobStore
from tests.fakes.openai_server import FakeOpenAI, Reply

# Every secret the settings know, as the environment would give them. Their last 4 characters mix upper
# and lower case, so no random id the bot makes (job ids, refs, request ids) can contain one by chance.
ENVIRONMENT = {
    "OPENAI_API_KEY": "sk-proj-Xq7Wm2Lp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXkJtM",
    "OPENAI_ORG_ID": "org-Qw3Er5Ty7Ui9Op1AsDfGh",
    "OPENAI_PROJECT_ID": "proj_Zx2Cv4Bn6Mm8Lk0JhGfDs",
    "DISCORD_TOKEN": "MTE5ODc2NTQzMjEwOTg3NjU0Mw.Gq7RtY.Hk2Lm9Np4Qr7St1Uv5Wx8Yz3Ab6Cd0Ef9GhQw",
    "SLACK_BOT_TOKEN": "xoxb-2468013579-1357924680-Mn4Bv7Cx1Zq8Wp3Ls6Kd9JfRt",
    "SLACK_APP_TOKEN": "xapp-1-A07QWERTY12-7350917306248-c0ffee5eed1e4a9b8c7d6e5f4a3b2c1d0e9f8aBcDe",
    "SLACK_SIGNING_SECRET": "5d41402abc4b2a76b9719d911017cFgHj",
}
SECRETS = tuple(ENVIRONMENT.values())
TAIL = 4
MODEL = "gpt-image-2"

DIRECT_EXAMPLES = 10_000
END_TO_END_EXAMPLES = 200


# --- what a leak is ---------------------------------------------------------------------------------------------


def _decoded(text: str) -> str:
    """``text`` with JSON and HTML escapes undone (an escaped secret is still a leak)."""
    text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    text = re.sub(r"&#[xX]([0-9a-fA-F]{1,6});", lambda m: chr(min(int(m.group(1), 16), 0x10FFFF)), text)
    return re.sub(r"&#([0-9]{1,7});", lambda m: chr(min(int(m.group(1)), 0x10FFFF)), text)


def leaks(text: str) -> list[str]:
    """The secrets ``text`` shows, whole or by their last 4 characters."""
    found = []
    for candidate in (text, _decoded(text)):
        for secret in SECRETS:
            if secret in candidate or secret[-TAIL:] in candidate:
                found.append(secret)
    return found


def assert_clean(where: str, text: str) -> None:
    leaked = leaks(text)
    assert not leaked, f"{where} shows {leaked[0][-TAIL:]!r} of a secret: {text[:3000]!r}"


# --- hostile bodies ------------------------------------------------------------------------------------------

SHORT_SEPARATORS = [" ", "'", '"', ",", ".", ":", ";", "(", ")", "[", "]", "=", "/", "\n", "\t", "|", "<", ">", "-"]
SHORT_SEPARATORS += ["_", "…", "*", "\u00a0", "\u3000", "!"]
ELLIPSES = ["...", "…", "*", "****", "***"]
TAIL_CONTEXTS = ["", "...", "…", "****", "[redacted]…", "[redacted]...", "key ending '", "last4=", "sk-***"]
CREDENTIAL_PREFIXES = ["Bearer ", "bearer ", "BEARER\t", "Basic ", "Authorization: Bearer ", "authorization=Bot "]
CREDENTIAL_PREFIXES += ["xxxBearer ", "Bearer%20"]
FORMS = ["whole", "elided", "tail", "long tail", "credential"]
CODES = ["moderation_blocked", "content_policy_violation", "content_filter", "invalid_api_key", "model_not_found"]
CODES += ["insufficient_quota", "billing_hard_limit_reached", "rate_limit_exceeded", "server_error", "invalid_value"]
TYPES = ["invalid_request_error", "image_generation_user_error", "insufficient_quota", "server_error", "requests"]
KNOWN_CATEGORIES = ["sexual", "violence", "self-harm", "self_harm/intent", "harassment/threatening", "hate"]
ASCII_FILLER = string.ascii_letters + string.digits + " -_.:;,/=()[]'"
# filler for the seeded generator: ASCII, escapes' own characters, accents, CJK, emoji, controls, bidi overrides
ANY_FILLER = ASCII_FILLER + '\\u&#;"{}<>\n\r\t\x00\x1b' + "éßøΩЖ中文한😀\u0301\u200b\u202e\u2028\ufeff"
T = TypeVar("T")


class Choices(Protocol):
    """Where the generator's decisions come from."""

    def pick(self, options: Sequence[T]) -> T: ...
    def number(self, low: int, high: int) -> int: ...
    def filler(self, *, header: bool) -> str: ...


class DrawnChoices:
    """Every decision a hypothesis draw: slower, and a failure shrinks to a small readable body."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def number(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def filler(self, *, header: bool) -> str:
        return self._draw(st.text(alphabet=ASCII_FILLER, max_size=24) if header else st.text(max_size=24))


class SeededChoices:
    """Decisions from a generator seeded by one hypothesis draw: ~100 times cheaper per body (a hypothesis
    draw costs ~0.15 ms and a body needs hundreds), so 10,000 bodies fit in seconds; still reproducible."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return self._random.choice(options)

    def number(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def filler(self, *, header: bool) -> str:
        alphabet = ASCII_FILLER if header else ANY_FILLER
        return "".join(self._random.choices(alphabet, k=self._random.randint(0, 24)))


def _json_escape(text: str, c: Choices) -> str:
    """Some characters as ``\\uXXXX`` (or ``\\\\uXXXX``, as in a body encoded twice)."""
    slash = c.pick(("\\", "\\\\"))
    every = c.number(1, 4)
    return "".join(f"{slash}u{ord(ch):04{c.pick('xX')}}" if i % every == 0 else ch for i, ch in enumerate(text))


def planted(c: Choices, *, header: bool = False) -> str:
    """A secret in one of the forms services echo, with the separators its form needs around it."""
    secret = c.pick(SECRETS)
    form = c.pick(FORMS)
    short = False
    if form == "whole":
        text = secret
    elif form == "elided":
        ellipsis = c.pick(ELLIPSES[2:] if header else ELLIPSES)
        text = secret[: c.number(2, 10)] + ellipsis + secret[-c.number(TAIL, 10) :]
        short = True
    elif form == "tail":
        text = c.pick([t for t in TAIL_CONTEXTS if not header or t.isascii()]) + secret[-c.number(TAIL, 7) :]
        short = True
    elif form == "long tail":
        text = secret[-c.number(8, len(secret) - 1) :]
    else:
        text = c.pick(CREDENTIAL_PREFIXES) + secret
    if not header and c.pick((True, False)):
        text = _json_escape(text, c)
    separators = [s for s in SHORT_SEPARATORS if not header or (s.isascii() and s.isprintable())]
    if not short:
        separators.append("")
    return c.pick(separators) + text + c.pick(separators)


def field(c: Choices, *, header: bool = False) -> str:
    """Filler text with up to three planted secrets (header values stay printable ASCII)."""
    parts = [c.filler(header=header)]
    for _ in range(c.number(0 if header else 1, 3)):
        parts += [planted(c, header=header), c.filler(header=header)]
    return "".join(parts)


def _one_of(c: Choices, known: Sequence[str]) -> str | None:
    kind = c.pick(("known", "hostile", "absent"))
    return c.pick(known) if kind == "known" else field(c) if kind == "hostile" else None


def error_object(c: Choices) -> dict[str, Any]:
    message = field(c)
    if c.pick((True, False)):
        flagged = [_one_of(c, KNOWN_CATEGORIES) or "" for _ in range(c.number(0, 4))]
        message += f" safety_violations=[{', '.join(flagged)}]."
    error: dict[str, Any] = {
        "message": message,
        "type": _one_of(c, TYPES),
        "code": _one_of(c, CODES),
        "param": _one_of(c, ["image", "size", "prompt", "n"]),
    }
    if c.pick((True, False)):
        categories: Any = [_one_of(c, KNOWN_CATEGORIES) for _ in range(c.number(0, 8))]
        error["moderation_details"] = {
            "moderation_stage": c.pick(("input", "output", field(c), [field(c)])),
            "categories": c.pick((categories, field(c), [1, None, {"x": field(c)}])),
        }
    if c.pick((True, False)):  # nested: the message or an unknown member is itself a structure
        error[c.pick(("message", "details", "inner_error"))] = {"error": {"message": field(c)}}
    return error


def hostile_answer(c: Choices, kinds: Sequence[str]) -> tuple[int, str, dict[str, str]]:
    """(status, body text, headers) of one hostile error answer."""
    status = c.number(400, 599)
    kind = c.pick(kinds)
    error = error_object(c)
    content_type = "application/json"
    if kind in {"json", "truncated"}:
        body = json.dumps({"error": error}, ensure_ascii=c.pick((True, False)))
        if kind == "truncated":
            body = body[: c.number(0, len(body))]
    elif kind == "nested":
        body = json.dumps({"error": {"message": {"error": error}, "code": error.get("code")}})
    elif kind == "list":
        body = json.dumps([{"error": error}])
    elif kind == "html":
        body, content_type = f"<html><body><h1>{status}</h1><p>{field(c)}</p></body></html>", "text/html"
    elif kind == "plain":
        body, content_type = field(c), "text/plain"
    elif kind == "empty":
        body = ""
    elif kind == "huge":  # ~1 MB of message, secrets before and after the padding
        error["message"] = field(c) + "x" * 1_000_000 + field(c)
        body = json.dumps({"error": error})
    else:  # deeper than any JSON parser recurses
        body = "[" * 5000 + json.dumps({"error": error}) + "]" * 5000
    headers = {
        "Content-Type": content_type,
        "x-request-id": field(c, header=True),
        "openai-organization": field(c, header=True),
        "openai-project": field(c, header=True),
    }
    if status == 429 and c.pick((True, False)):
        headers["retry-after"] = c.pick(("1", "1.2", "30", "120", "inf", "nan", field(c, header=True)))
    return status, body, headers


KINDS = ["json"] * 5 + ["nested", "list", "html", "plain", "truncated", "truncated", "empty", "huge", "too deep"]
# for the 10,000 bodies: ~1 MB and too-deep bodies 1 in 100 (still a hundred of each), or they dominate the time
WEIGHTS = {"json": 40, "nested": 8, "list": 6, "html": 10, "plain": 10, "truncated": 16, "empty": 8, "huge": 1}
MANY_KINDS = [kind for kind, weight in {**WEIGHTS, "too deep": 1}.items() for _ in range(weight)]


@st.composite
def drawn_answer(draw: st.DrawFn) -> tuple[int, str, dict[str, str]]:
    return hostile_answer(DrawnChoices(draw), KINDS)


seeded_answer = st.integers(0, 2**64 - 1).map(lambda seed: hostile_answer(SeededChoices(seed), MANY_KINDS))


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# --- the project's own logging set-up, writing to memory --------------------------------------------------------


class ProjectLogs:
    """The handlers ``configure_logging`` makes for the text and JSON formats, both writing to memory."""

    def __init__(self) -> None:
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        self.streams: dict[str, io.StringIO] = {}
        handlers = []
        for fmt in ("text", "json"):
            configure_logging("DEBUG", fmt)
            (handler,) = root.handlers
            assert isinstance(handler, logging.StreamHandler)
            self.streams[fmt] = io.StringIO()
            handler.setStream(self.streams[fmt])
            handlers.append(handler)
        self._handlers = handlers
        self._saved = saved_handlers, saved_level
        self.isolate()

    def isolate(self) -> None:
        """Only these handlers on the root logger (pytest's capture would keep every record of every example)."""
        logging.getLogger().handlers[:] = self._handlers

    def take(self) -> dict[str, str]:
        """What each format wrote since the last call."""
        written = {}
        for fmt, stream in self.streams.items():
            written[fmt] = stream.getvalue()
            stream.seek(0)
            stream.truncate()
        return written

    def close(self) -> None:
        root = logging.getLogger()
        root.handlers[:], level = self._saved
        root.setLevel(level)


@pytest.fixture
def project_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProjectLogs]:
    """Secrets registered the way the bot registers them (from its settings), and its log handlers in memory."""
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    register_secrets(load_settings().secret_values())
    logs = ProjectLogs()
    try:
        yield logs
    finally:
        logs.close()


def assert_logs_clean(logs: ProjectLogs) -> None:
    for fmt, written in logs.take().items():
        assert_clean(f"the {fmt} log", written)
        if fmt == "json":
            for line in written.splitlines():
                assert_clean("a JSON log record", json.dumps(json.loads(line), ensure_ascii=False))


# --- the fuzz, straight through translate_error -------------------------------------------------------------------

upstream_log = logging.getLogger("bot.providers.openai")


@settings(
    max_examples=DIRECT_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answer=seeded_answer)
def test_no_hostile_error_body_leaks_a_secret(
    project_logs: ProjectLogs, answer: tuple[int, str, dict[str, str]]
) -> None:
    project_logs.isolate()
    status, raw, headers = answer
    error = translate_error(status, _parse(raw), model=MODEL, retry_after=parse_retry_after(headers), raw_text=raw)

    assert_clean("the user's message", error.friendly())
    assert_clean("the error's detail", error.detail)
    assert_clean("the error's log line", error.log_line())
    assert len(error.log_line()) < 8192  # a 1 MB upstream message is never logged whole
    request_id, organization, project = (headers[h] for h in ("x-request-id", "openai-organization", "openai-project"))
    upstream_log.info("POST -> %s (request %s, organization %s, project %s)", status, request_id, organization, project)
    upstream_log.warning("failed: %s", error.log_line())
    assert_logs_clean(project_logs)


# --- the fuzz, end to end: HTTP, provider, job service, SQLite store ---------------------------------------------


@contextlib.asynccontextmanager
async def openai_jobs(http: aiohttp.ClientSession, fake: FakeOpenAI, data: Path) -> AsyncIterator[JobService]:
    """A JobService over the real OpenAI provider (no retries: one scripted answer is the whole story)."""
    settings = load_settings()
    provider = OpenAIImages(
        http,
        base_url=fake.base_url,
        api_key=ENVIRONMENT["OPENAI_API_KEY"],
        org_id=ENVIRONMENT["OPENAI_ORG_ID"],
        project_id=ENVIRONMENT["OPENAI_PROJECT_ID"],
        settings=OpenAISettings(max_retries=0),
    )
    images = ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=4, images_per_minute=0, per_user_jobs=10, max_queue=50),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store = await SQLiteJobStore.open(data / "jobs.sqlite3", busy_timeout=0.2)
    jobs = JobService(
        images=images, store=store, files=ResultFiles(data / "results"), jobs=JobSettings(), budgets=BudgetSettings()
    )
    try:
        await jobs.start()
        yield jobs
    finally:
        await store.close()


def _stored_bytes(data: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in sorted(data.rglob("*")) if p.is_file())


@settings(
    max_examples=END_TO_END_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answer=drawn_answer())
async def test_no_hostile_error_answer_leaks_a_secret_end_to_end(
    project_logs: ProjectLogs,
    http: aiohttp.ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
    answer: tuple[int, str, dict[str, str]],
) -> None:
    project_logs.isolate()
    status, raw, headers = answer
    data = tmp_path_factory.mktemp("data")
    async with FakeOpenAI(api_key=None) as fake, openai_jobs(http, fake, data) as jobs:
        fake.script(Reply(status, text=raw, headers=headers))
        context = JobContext("discord", "alice", workspace="guild1", channel="c1")
        with pytest.raises(ImageBotError) as raised:
            await jobs.submit(context, GenerateRequest(prompt="a lighthouse at dusk", model=MODEL))
        (job,) = await jobs.store.history()
    error = raised.value
    assert error.kind != "unexpected", error.log_line()  # every hostile answer is understood, not a "bug"
    assert job.status is JobStatus.FAILED
    assert job.error_ref == error.ref
    assert_clean("the user's message", error.friendly())
    assert_clean("the error's log line", error.log_line())
    assert_clean("the stored job", f"{job.error_message} {job}")
    assert_clean("the data folder", _stored_bytes(data))
    assert_logs_clean(project_logs)
