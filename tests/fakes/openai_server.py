"""A fake OpenAI Images API on 127.0.0.1 (aiohttp, port 0), speaking the real wire protocol.

    async with FakeOpenAI(api_key="sk-test-key") as fake:
        fake.script(rate_limited(retry_after=1))      # next image request gets a 429, the one after succeeds
        ...  # point the client at fake.base_url ("http://127.0.0.1:PORT/v1")
        assert fake.last.files["image[]"][1].data == png

Error bodies marked "seed" are verbatim from the seed document (/work/shared/seed/*.txt).

Every image request is checked against OpenAI's published OpenAPI schemas (tests/spec/openai-images.json) and,
for an OpenAI base URL (``openai_api=True``, the default), against the models OpenAI has retired. A request
that breaks either is answered with a 400 like OpenAI's and kept in ``spec_violations``; leaving the
``async with`` block with violations fails the test (``expect_violations=True`` for tests that send bad
requests on purpose).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import json
import re
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
from aiohttp import BodyPartReader, web
from multidict import CIMultiDict, CIMultiDictProxy
from PIL import Image, ImageChops

from tests.fakes.loopback import LoopbackServer

DEFAULT_KEY = "sk-test-0123456789abcdefFAKE"
# models alive on 2026-11-25 (platform-facts 1.1); anything else answers model_not_found
DEFAULT_MODELS = frozenset(("gpt-image-1-mini", "gpt-image-1.5", "chatgpt-image-latest", "gpt-image-2"))
DEFAULT_MODELS |= {"gpt-image-2-2026-04-21", "gpt-image-2.5-sunburst", "gpt-image-2.5-flare"}
DEFAULT_MODELS |= {"gpt-image-2.6-sunburst", "gpt-image-2.6-flare"}
USAGE: dict[str, Any] = {
    "input_tokens": 50,
    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
    "output_tokens": 1056,
    "output_tokens_details": {"text_tokens": 0, "image_tokens": 1056},
    "total_tokens": 1106,
}
# retired on OpenAI's own API (platform-facts 1.1): never to be sent to an OpenAI base URL
RETIRED_ON_OPENAI = frozenset(("dall-e-2", "dall-e-3", "gpt-image-1"))
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_MAX_EDGE = 3840
_SPEC_FILE = Path(__file__).resolve().parent.parent / "spec" / "openai-images.json"
_REQUEST_SCHEMAS = {
    "generations": "CreateImageRequest",
    "edits": "CreateImageEditRequest",
    "variations": "CreateImageVariationRequest",
}
# multipart sends every field as text: these are read as the JSON types the schemas name
_INTEGER_FIELDS = frozenset(("n", "partial_images", "output_compression"))
_BOOLEAN_FIELDS = frozenset(("stream",))


@dataclass(frozen=True)
class Reply:
    """A scripted answer (``text`` wins over ``json_body``).

    ``success=True``: after ``delay``, answer the normal success body, with this status and these extra headers.
    """

    status: int
    json_body: Any = None
    headers: Mapping[str, str] | None = None
    text: str | None = None
    delay: float = 0.0
    success: bool = False
    cut_at: int | None = None  # success only: announce the whole body, send this many bytes, drop the connection


@dataclass(frozen=True)
class RecordedFile:
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    query: dict[str, list[str]]
    received_at: float  # time.monotonic() on arrival
    body: bytes = b""  # raw body of non-multipart requests
    json: Any = None  # parsed JSON body, None if absent or invalid
    form: dict[str, list[str]] = field(default_factory=dict)  # multipart/urlencoded text fields, names as sent
    files: dict[str, list[RecordedFile]] = field(default_factory=dict)  # multipart files: "image", "image[]", "mask"
    status: int = 0  # status the fake answered with

    def param(self, name: str) -> str | None:
        """First value of a JSON key or multipart text field, as a string."""
        if isinstance(self.json, dict) and name in self.json:
            return str(self.json[name])
        values = self.form.get(name)
        return values[0] if values else None


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _seed(status: int, message: str, code: str | None = None) -> Reply:
    # key order as printed in the seed document
    return Reply(status, {"error": {"code": code, "message": message, "param": None, "type": "invalid_request_error"}})


MISSING_IMAGE = _seed(400, "'image' is a required property")
NO_API_KEY = _seed(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accesing the API "
    "from your browser and are prompted for a username and password. You can obtain an API key from "
    "https://beta.openai.com.",
)
WRONG_API_KEY = _seed(
    401,
    "Incorrect API key provided: sk-***********************. You can find your API key at https://beta.openai.com.",
    "invalid_api_key",
)
BILLING_HARD_LIMIT = _seed(400, "Billing hard limit has been reached", "billing_hard_limit_reached")
INSUFFICIENT_QUOTA = Reply(
    429,
    error_body(
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        code="insufficient_quota",
    ),
)


def not_png(status: int = 400) -> Reply:
    """Seed body "Uploaded image must be a PNG and less than 4 MB." (the seed shows it under 401; really 400)."""
    return _seed(status, "Uploaded image must be a PNG and less than 4 MB.")


NOT_PNG_OR_4MB = not_png()


def mask_key(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 7 else "*" * len(key)


def wrong_key(key: str | None = None) -> Reply:
    """401 invalid_api_key echoing the masked key (``None``: the seed's all-stars body verbatim)."""
    if key is None:
        return WRONG_API_KEY
    message = (
        f"Incorrect API key provided: {mask_key(key)}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    return _seed(401, message, "invalid_api_key")


def moderation_blocked(stage: str = "input", categories: Iterable[str] = ("sexual",)) -> Reply:
    cats = list(categories)
    body = error_body(
        "Your request was rejected by the safety system. If you believe this is an error, contact us at "
        f"help.openai.com and include the request ID req_0123456789abcdef. safety_violations=[{', '.join(cats)}].",
        "image_generation_user_error",
        code="moderation_blocked",
    )
    body["error"]["moderation_details"] = {"moderation_stage": stage, "categories": cats}
    return Reply(400, body)


def content_policy_violation() -> Reply:
    message = (
        "Your request was rejected as a result of our safety system. "
        "Your prompt may contain text that is not allowed by our safety system."
    )
    return Reply(400, error_body(message, code="content_policy_violation"))


def rate_limited(
    retry_after: float | str | None = None, retry_after_ms: float | None = None, *, reset: str | None = None
) -> Reply:
    """429 rate_limit_exceeded; ``reset`` (e.g. "12s") adds x-ratelimit-{limit,remaining,reset}-images headers."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = _num(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = _num(retry_after_ms)
    if reset is not None:
        headers |= {
            "x-ratelimit-limit-images": "5",
            "x-ratelimit-remaining-images": "0",
            "x-ratelimit-reset-images": reset,
        }
    message = (
        "Rate limit reached for gpt-image-2 in organization org-AbCdEf123456 on images per minute (IPM): "
        "Limit 5, Used 5, Requested 1. Please try again in 12s."
    )
    return Reply(429, error_body(message, "requests", code="rate_limit_exceeded"), headers)


def server_error(status: int = 500) -> Reply:
    message = "The server had an error while processing your request. Sorry about that!"
    return Reply(status, error_body(message, "server_error"))


def bad_gateway_html() -> Reply:
    page = (
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
    )
    return Reply(502, text=page, headers={"Content-Type": "text/html"})


def model_not_found(model: str) -> Reply:
    return Reply(404, error_body(f"The model '{model}' does not exist", code="model_not_found"))


def org_not_verified() -> Reply:
    message = (
        "Your organization must be verified to use the model `gpt-image-2`. Please go to: "
        "https://platform.openai.com/settings/organization/general and click on Verify Organization."
    )
    return Reply(403, error_body(message))


def malformed_json() -> Reply:
    return Reply(200, text='{"data": [', headers={"Content-Type": "application/json"})


def truncated(at: int = 4096) -> Reply:
    """A normal success whose transfer breaks off after ``at`` bytes (Content-Length says more)."""
    return Reply(200, success=True, cut_at=at)


def timeout(delay: float) -> Reply:
    """Answer normally, but only after ``delay`` seconds (cut short when the server closes)."""
    return Reply(200, delay=delay, success=True)


def stream_cut(kind: str = "image_generation") -> Reply:
    """A 200 event stream that stops after one preview, without the completed event."""
    partial = {"type": f"{kind}.partial_image", "b64_json": _render((16, 16), (9, 9, 9), "png", False)[1]}
    text = f"event: {kind}.partial_image\ndata: {json.dumps(partial)}\n\n"
    return Reply(200, text=text, headers={"Content-Type": "text/event-stream"})


def stream_error(code: str = "server_error", message: str = "The server had an error while streaming.") -> Reply:
    """A 200 event stream whose only event is an ``error`` (how a failure looks once a stream has started)."""
    body = {"type": "error", **error_body(message, "server_error", code=code)}
    return Reply(200, text=f"event: error\ndata: {json.dumps(body)}\n\n", headers={"Content-Type": "text/event-stream"})


def _bad(message: str, param: str | None = None, code: str | None = None) -> Reply:
    return Reply(400, error_body(message, param=param, code=code))


def invalid_value(param: str, value: object) -> Reply:
    return _bad(f"Invalid value for '{param}': {value!r}.", param, "invalid_value")


INVALID_JSON = Reply(
    400,
    error_body(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have "
        "trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
    ),
)


@functools.lru_cache(maxsize=4)
def _request_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for one endpoint's request schema. Stricter than the schema as OpenAI is: unknown keys fail."""
    spec = json.loads(_SPEC_FILE.read_text(encoding="utf-8"))
    name = _REQUEST_SCHEMAS[kind]
    schema = {**spec["components"]["schemas"][name], "additionalProperties": False}
    document = {**schema, "components": spec["components"]}
    return jsonschema.Draft202012Validator(document)


def _as_json(rec: RecordedRequest) -> dict[str, Any]:
    """A multipart request as the JSON object the schema describes (files become placeholders)."""
    out: dict[str, Any] = {}
    for name, values in rec.form.items():
        value: Any = values[0] if len(values) == 1 else list(values)
        if name in _INTEGER_FIELDS and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        elif name in _BOOLEAN_FIELDS and isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            value = value.strip().lower() == "true"
        out[name] = value
    for name, files in rec.files.items():
        key = name.removesuffix("[]")
        placeholders = [f"<file {f.filename}>" for f in files]
        if name.endswith("[]") or key in out:
            previous = out.get(key, [])
            out[key] = [*(previous if isinstance(previous, list) else [previous]), *placeholders]
        else:
            out[key] = placeholders[0] if len(placeholders) == 1 else placeholders
    return out


def _spec_error(error: jsonschema.ValidationError) -> Reply:
    """OpenAI's 400 for a request that breaks its schema (unknown, missing, mistyped or unsupported values)."""
    param = ".".join(str(p) for p in error.absolute_path) or None
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = unknown[0] if unknown else "?"
        return _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else "?"
        return _bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if error.validator == "type":
        return _bad(f"Invalid type for '{param}': {error.message}.", param, "invalid_type")
    return _bad(f"Invalid value for '{param}': {error.message}.", param, "invalid_value")


def _num(value: float | str) -> str:
    return str(int(value)) if isinstance(value, int | float) and float(value).is_integer() else str(value)


@functools.lru_cache(maxsize=256)
def _render(size: tuple[int, int], colour: tuple[int, int, int], fmt: str, transparent: bool) -> tuple[bytes, str]:
    """Solid colour image (transparent: an opaque centre on a clear background), encoded bytes + base64."""
    if transparent and fmt != "jpeg":
        img = Image.new("RGBA", size, (*colour, 0))
        w, h = size
        img.paste((*colour, 255), (w // 4, h // 4, w - w // 4, h - h // 4))
    else:
        img = Image.new("RGB", size, colour)
    buf = io.BytesIO()
    options: dict[str, Any] = {"png": {"compress_level": 1}, "jpeg": {"quality": 85}, "webp": {"method": 0}}[fmt]
    img.save(buf, format=_FORMATS[fmt], **options)
    data = buf.getvalue()
    return data, base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=16)
def _render_photo(size: tuple[int, int], colour: tuple[int, int, int], fmt: str) -> tuple[bytes, str]:
    """A photo-like image (smooth light plus grain), so encoded sizes are like the API's (~2 MB PNG at 1024²)."""
    light = Image.linear_gradient("L").resize(size)
    channels = []
    for shift in colour:
        grain = Image.effect_noise(size, 24 + shift % 16)
        channels.append(ImageChops.add(ImageChops.multiply(light, grain), Image.new("L", size, shift // 2)))
    img = Image.merge("RGB", channels)
    buf = io.BytesIO()
    img.save(buf, format=_FORMATS[fmt], **({"compress_level": 6} if fmt == "png" else {"quality": 90}))
    data = buf.getvalue()
    return data, base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=64)
def _preview(b64: str, index: int) -> str:
    """A partial image: the final picture as a thumbnail, a little larger for each later preview (base64 PNG)."""
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.thumbnail((16 * (index + 1), 16 * (index + 1)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class FakeOpenAI(LoopbackServer):
    def __init__(
        self,
        api_key: str | None = DEFAULT_KEY,
        known_models: Iterable[str] = DEFAULT_MODELS,
        latency: float = 0.0,
        response_mode: Literal["b64_json", "url"] = "b64_json",
        revised_prompt: bool | str = False,
        photo_like: bool = False,
        *,
        openai_api: bool = True,
        expect_violations: bool = False,
        images_per_minute: int | None = None,
        rate_window: float = 60.0,
    ) -> None:
        """``openai_api``: stand for OpenAI itself (retired models are violations), not a compatible server.

        ``images_per_minute``: like an account's IPM limit, a request whose images would take the images accepted
        in the last ``rate_window`` seconds (by arrival) over it gets OpenAI's 429, and counts for nothing.
        """
        self.images_per_minute = images_per_minute
        self.rate_window = rate_window
        self.accepted: list[tuple[float, int]] = []  # (received_at, images) of image requests within the limit
        self.rate_limited_count = 0  # image requests answered 429 by the limit
        self.openai_api = openai_api
        self.expect_violations = expect_violations
        self.spec_violations: list[str] = []  # "POST /v1/images/edits: <why>" for each bad request received
        self.api_key = api_key  # None: any bearer key is accepted
        self.known_models = set(known_models)
        self.latency = latency
        self.response_mode = response_mode
        self.revised_prompt = revised_prompt  # True: echo the prompt; str: that text
        self.photo_like = photo_like  # True: grainy photo-like images of the real encoded size, else flat colour
        self.usage: dict[str, Any] | None = USAGE  # the ``usage`` of every answer (None: the answer has none)
        self.answered: list[float] = []  # time.monotonic() when each success body was completely written
        self.answered_event = asyncio.Event()  # set at each complete success body (clear it to wait for the next)
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._files: dict[str, bytes] = {}
        self._renders: dict[tuple[Any, ...], asyncio.Future[tuple[bytes, str]]] = {}
        self._closing = asyncio.Event()
        self.port = 0
        self.app = web.Application(client_max_size=256 * 1024**2)
        self.app.router.add_post("/v1/images/generations", self._generations)
        self.app.router.add_post("/v1/images/edits", self._edits)
        self.app.router.add_post("/v1/images/variations", self._variations)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/v1/models/{model}", self._model)
        self.app.router.add_get("/files/{name}", self._file)
        self.app.router.add_route("*", "/{tail:.*}", self._unknown)

    # --- lifecycle and accessors -----------------------------------------------------------------------

    async def _before_start(self) -> None:
        self._closing.clear()

    async def _before_close(self) -> None:
        self._closing.set()  # wakes delayed/latency sleeps

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def image_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/v1/images/")]

    @property
    def last(self) -> RecordedRequest:
        if not self.requests:
            raise LookupError("the fake OpenAI server has recorded no request")
        return self.requests[-1]

    def script(self, *responses: Reply) -> None:
        """Serve these, in order, to the next image requests (then normal success again)."""
        self._script.extend(responses)

    @property
    def pending(self) -> int:
        return len(self._script)

    def reset(self) -> None:
        self.requests.clear()
        self._script.clear()

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    async def _record(self, request: web.Request) -> RecordedRequest:
        rec = RecordedRequest(
            request.method,
            request.path,
            CIMultiDictProxy(CIMultiDict(request.headers)),
            {k: request.query.getall(k) for k in request.query},
            time.monotonic(),
        )
        self.requests.append(rec)
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                name, data = part.name or "", await part.read()
                if part.filename is not None:
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    rec.files.setdefault(name, []).append(RecordedFile(part.filename, ctype, data))
                else:
                    rec.form.setdefault(name, []).append(data.decode(part.get_charset("utf-8"), "replace"))
        elif request.content_type == "application/x-www-form-urlencoded":
            rec.body = await request.read()
            rec.form = urllib.parse.parse_qs(rec.body.decode("utf-8", "replace"), keep_blank_values=True)
        elif request.can_read_body:
            rec.body = await request.read()
            try:
                rec.json = json.loads(rec.body)
            except ValueError:
                rec.json = None
        return rec

    def _respond(self, rec: RecordedRequest, reply: Reply) -> web.Response:
        headers = CIMultiDict(reply.headers or {})
        headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        if reply.text is not None:
            body = reply.text.encode()
            headers.setdefault("Content-Type", "text/plain")
        elif reply.json_body is not None:
            body = json.dumps(reply.json_body, indent=4 if reply.status >= 400 else None).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            body = b""
        rec.status = reply.status
        return web.Response(status=reply.status, body=body, headers=headers)

    def _auth_error(self, rec: RecordedRequest) -> Reply | None:
        scheme, _, key = rec.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return NO_API_KEY
        if self.api_key is not None and key.strip() != self.api_key:
            return wrong_key(key.strip())
        return None

    def _over_limit(self, rec: RecordedRequest) -> Reply | None:
        """The images-per-minute limit, counted over a rolling window of arrivals (as the API counts them)."""
        if self.images_per_minute is None:
            return None
        try:
            images = max(1, int(rec.param("n") or 1))
        except ValueError:
            images = 1
        start = rec.received_at - self.rate_window
        recent = [(t, n) for t, n in self.accepted if start < t <= rec.received_at]
        used = sum(n for _, n in recent)
        if used + images <= self.images_per_minute:
            self.accepted.append((rec.received_at, images))
            return None
        self.rate_limited_count += 1
        freed, wait = 0, self.rate_window
        for when, count in sorted(recent):
            freed += count
            if used - freed + images <= self.images_per_minute:
                wait = when + self.rate_window - rec.received_at
                break
        limit, model = self.images_per_minute, rec.param("model") or "gpt-image-2"
        headers = {
            "retry-after": _num(max(1, round(wait))),
            "x-ratelimit-limit-images": str(limit),
            "x-ratelimit-remaining-images": str(max(0, limit - used)),
            "x-ratelimit-reset-images": f"{wait:.3f}s",
        }
        message = (
            f"Rate limit reached for {model} in organization org-AbCdEf123456 on images per minute (IPM): "
            f"Limit {limit}, Used {used}, Requested {images}. Please try again in {wait:.0f}s."
        )
        return Reply(429, error_body(message, "requests", code="rate_limit_exceeded"), headers)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        if exc[0] is None and self.spec_violations and not self.expect_violations:
            shown = "\n  ".join(self.spec_violations[:10])
            raise AssertionError(f"requests that break OpenAI's published spec:\n  {shown}")

    def _check_request(self, rec: RecordedRequest, kind: str) -> Reply | None:
        """Validate against the published schema and the retired models; record and answer what breaks."""
        body = rec.json if kind == "generations" else _as_json(rec)
        where = f"{rec.method} {rec.path}"
        if not isinstance(body, dict):
            self.spec_violations.append(f"{where}: the body is not a JSON object")
            return INVALID_JSON
        error = jsonschema.exceptions.best_match(_request_validator(kind).iter_errors(body))
        if error is not None:
            reply = _spec_error(error)
            self.spec_violations.append(f"{where}: {reply.json_body['error']['message']} (body {_summary(body)})")
            return reply
        model = body.get("model")
        if self.openai_api and model in RETIRED_ON_OPENAI:
            self.spec_violations.append(f"{where}: the retired model {model!r} was sent to OpenAI")
            return model_not_found(str(model))
        return None

    async def _image_endpoint(self, request: web.Request, kind: str) -> web.StreamResponse:
        rec = await self._record(request)
        violation = self._check_request(rec, kind)
        scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            await self._sleep(scripted.delay)
            if not scripted.success:
                return self._respond(rec, scripted)
        ok = scripted or Reply(200)  # a success=True script lends its status and headers to the normal answer
        problem = self._auth_error(rec) or self._over_limit(rec)
        if problem is None:
            result = await self._images(rec, kind, violation)
            if isinstance(result, Reply):
                problem = result
            elif str(rec.param("stream")).lower() == "true":
                return await self._stream(request, rec, kind, result, ok)
            else:
                await self._sleep(self.latency)
                return await self._send_success(request, rec, Reply(ok.status, result, ok.headers), ok.cut_at)
        return self._respond(rec, problem)

    async def _send_success(
        self, request: web.Request, rec: RecordedRequest, reply: Reply, cut_at: int | None
    ) -> web.StreamResponse:
        """Write the answer ourselves, to know when the last byte left (or to break the transfer off)."""
        prepared = self._respond(rec, reply)
        body = prepared.body
        assert isinstance(body, bytes)
        response = web.StreamResponse(status=prepared.status, headers=prepared.headers)
        response.content_length = len(body)
        await response.prepare(request)
        if cut_at is not None:
            await response.write(body[:cut_at])
            assert request.transport is not None
            request.transport.close()  # the client sees fewer bytes than Content-Length announced
            return response
        await response.write(body)
        await response.write_eof()
        self.answered.append(time.monotonic())
        self.answered_event.set()
        return response

    async def _images(self, rec: RecordedRequest, kind: str, violation: Reply | None) -> dict[str, Any] | Reply:
        """The answer: the checks with OpenAI's own wording first, then the spec's ``violation``, else images."""
        default = (1024, 1024)
        if kind == "generations":
            if not isinstance(rec.json, dict):
                return INVALID_JSON
            params: dict[str, Any] = rec.json
            if not params.get("prompt"):
                return _bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        else:
            ctype = rec.headers.get("Content-Type", "")
            if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                return _bad(f"Invalid Content-Type header ({ctype}), expected multipart/form-data.")
            params = {k: v[0] for k, v in rec.form.items()}
            images = rec.files.get("image", []) + rec.files.get("image[]", [])
            if not images:
                return MISSING_IMAGE
            try:
                default = Image.open(io.BytesIO(images[0].data)).size
            except Exception:
                message = "Invalid image file or mode for image 1, please check your image file."
                return _bad(message, "image", "invalid_image_file")
            if kind == "edits" and not params.get("prompt"):
                return _bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        if violation is not None:
            return violation
        model = params.get("model")
        if model is not None and model not in self.known_models:
            return model_not_found(str(model))
        try:
            n = int(params.get("n", 1))
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= 10:
            return invalid_value("n", params.get("n"))
        size_text = str(params.get("size") or "auto")
        match = re.fullmatch(r"(\d+)x(\d+)", size_text)
        size = (int(match[1]), int(match[2])) if match else default
        if (not match and size_text != "auto") or not (0 < size[0] <= _MAX_EDGE and 0 < size[1] <= _MAX_EDGE):
            return invalid_value("size", size_text)
        fmt = str(params.get("output_format") or "png")
        if fmt not in _FORMATS:
            return invalid_value("output_format", fmt)
        transparent = params.get("background") == "transparent"
        prompt = str(params.get("prompt") or "")
        data: list[dict[str, str]] = []
        for index in range(n):
            digest = hashlib.sha256(f"{model}|{prompt}|{index}".encode()).digest()
            raw, b64 = await self._render(size, (digest[0], digest[1], digest[2]), fmt, transparent)
            if self.response_mode == "url":
                name = f"{uuid.uuid4().hex}.{fmt}"
                self._files[name] = raw
                item = {"url": f"{self.url}/files/{name}"}
            else:
                item = {"b64_json": b64}
            if self.revised_prompt:
                item["revised_prompt"] = prompt if self.revised_prompt is True else str(self.revised_prompt)
            data.append(item)
        quality = str(params.get("quality") or "auto")
        answer = {
            "created": int(time.time()),
            "data": data,
            "size": f"{size[0]}x{size[1]}",
            "quality": "medium" if quality == "auto" else quality,
            "output_format": fmt,
            "background": "transparent" if transparent else "opaque",
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer

    async def _stream(
        self, request: web.Request, rec: RecordedRequest, kind: str, answer: dict[str, Any], ok: Reply
    ) -> web.StreamResponse:
        """``stream: true``: ``partial_images`` previews per image, then one completed event per image (SSE)."""
        prefix = "image_generation" if kind == "generations" else "image_edit"
        try:
            partials = max(0, min(3, int(rec.param("partial_images") or 0)))
        except ValueError:
            partials = 0
        common = {k: answer[k] for k in ("background", "output_format", "quality", "size")}
        events: list[tuple[str, dict[str, Any]]] = []
        for item in answer["data"]:
            b64 = item.get("b64_json") or base64.b64encode(self._files[item["url"].rpartition("/")[2]]).decode()
            for index in range(partials):
                preview = await asyncio.to_thread(_preview, b64, index)
                event = {"b64_json": preview, "partial_image_index": index, "created_at": answer["created"]}
                events.append((f"{prefix}.partial_image", {**event, **common}))
            done = {"b64_json": b64, "created_at": answer["created"], "usage": answer.get("usage")}
            events.append((f"{prefix}.completed", {**done, **common}))
        headers = CIMultiDict(ok.headers or {})
        headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(status=ok.status, headers=headers)
        rec.status = ok.status
        await response.prepare(request)
        for name, body in events:
            await self._sleep(self.latency / len(events))
            payload = {"type": name, **body}
            await response.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
        await response.write_eof()
        return response

    async def _render(
        self, size: tuple[int, int], colour: tuple[int, int, int], fmt: str, transparent: bool
    ) -> tuple[bytes, str]:
        key = (size, colour, fmt, transparent)
        future = self._renders.get(key)
        if future is None:  # one encode per distinct image, shared by concurrent requests
            if self.photo_like and not transparent:
                future = asyncio.ensure_future(asyncio.to_thread(_render_photo, size, colour, fmt))
            else:
                future = asyncio.ensure_future(asyncio.to_thread(_render, size, colour, fmt, transparent))
            self._renders[key] = future
        return await asyncio.shield(future)

    # --- handlers -----------------------------------------------------------------------------------------

    async def _generations(self, request: web.Request) -> web.StreamResponse:
        return await self._image_endpoint(request, "generations")

    async def _edits(self, request: web.Request) -> web.StreamResponse:
        return await self._image_endpoint(request, "edits")

    async def _variations(self, request: web.Request) -> web.StreamResponse:
        return await self._image_endpoint(request, "variations")

    async def _models(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        models = [_model_object(m) for m in sorted(self.known_models)]
        return self._respond(rec, self._auth_error(rec) or Reply(200, {"object": "list", "data": models}))

    async def _model(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        model = request.match_info["model"]
        found = Reply(200, _model_object(model)) if model in self.known_models else model_not_found(model)
        return self._respond(rec, self._auth_error(rec) or found)

    async def _file(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        name = request.match_info["name"]
        if name not in self._files:
            return self._respond(rec, Reply(404, text="Not Found"))
        rec.status = 200
        return web.Response(body=self._files[name], content_type=f"image/{name.rpartition('.')[2]}")

    async def _unknown(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        return self._respond(rec, Reply(404, error_body(f"Invalid URL ({request.method} {request.path})")))


def _summary(body: Mapping[str, Any]) -> str:
    return json.dumps({k: (v if not isinstance(v, str) or len(v) <= 60 else v[:57] + "...") for k, v in body.items()})


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "system"}
