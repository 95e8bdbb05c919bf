"""Tests of the fake OpenAI Images API itself, with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.fakes.openai_server import (
    FakeOpenAI,
    Reply,
    malformed_json,
    moderation_blocked,
    rate_limited,
    timeout,
)

KEY = "sk-test-abcdefghijklmnop1234"
AUTH = {"Authorization": f"Bearer {KEY}"}

# verbatim from the seed document
SEED_MISSING_IMAGE = {
    "error": {"code": None, "message": "'image' is a required property", "param": None, "type": "invalid_request_error"}
}
SEED_NO_API_KEY = {
    "error": {
        "code": None,
        "message": "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're "
        "accesing the API from your browser and are prompted for a username and password. You can obtain an API key "
        "from https://beta.openai.com.",
        "param": None,
        "type": "invalid_request_error",
    }
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def png(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int, int] = (255, 0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


async def generate(http: aiohttp.ClientSession, fake: FakeOpenAI, **body: Any) -> aiohttp.ClientResponse:
    body = {"model": "gpt-image-2", "prompt": "a red fox", **body}
    async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
        await resp.read()
        return resp


async def test_generation_returns_n_pngs_of_requested_size(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-image-2", "prompt": "a red fox", "n": 3, "size": "1536x1024"}
    async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        answer = await resp.json()
    assert len(answer["data"]) == 3
    for item in answer["data"]:
        img = decode(item["b64_json"])
        assert (img.format, img.size) == ("PNG", (1536, 1024))
    assert answer["size"] == "1536x1024"
    assert answer["usage"]["total_tokens"] == 1106
    assert isinstance(answer["created"], int)
    assert fake.last.json == body
    assert fake.last.status == 200


async def test_auto_size_is_1024_square(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-image-2", "prompt": "x", "size": "auto"}
    async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
        answer = await resp.json()
    assert decode(answer["data"][0]["b64_json"]).size == (1024, 1024)


async def test_non_json_generation_body_is_rejected(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.expect_violations = True  # a bad request on purpose
    async with http.post(f"{fake.base_url}/images/generations", data=b"prompt=fox", headers=AUTH) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "could not parse the JSON body" in error["message"]


async def test_edit_records_repeated_images_and_mask(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    first, second, mask = png(colour=(1, 2, 3, 255)), png(colour=(4, 5, 6, 255)), png(colour=(0, 0, 0, 0))
    form = aiohttp.FormData()
    form.add_field("model", "gpt-image-2")
    form.add_field("prompt", "merge them")
    form.add_field("n", "2")
    form.add_field("image[]", first, filename="a.png", content_type="image/png")
    form.add_field("image[]", second, filename="b.png", content_type="image/png")
    form.add_field("mask", mask, filename="mask.png", content_type="image/png")
    async with http.post(f"{fake.base_url}/images/edits", data=form, headers=AUTH) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert len(answer["data"]) == 2
    rec = fake.last
    assert rec.path == "/v1/images/edits"
    assert [(f.filename, f.content_type, f.data) for f in rec.files["image[]"]] == [
        ("a.png", "image/png", first),
        ("b.png", "image/png", second),
    ]
    assert rec.files["mask"][0].data == mask
    assert rec.form == {"model": ["gpt-image-2"], "prompt": ["merge them"], "n": ["2"]}
    assert rec.param("n") == "2"


async def test_edit_with_single_image_defaults_to_input_size(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("prompt", "add a hat")
    form.add_field("image", png((320, 240)), filename="in.png", content_type="image/png")
    async with http.post(f"{fake.base_url}/images/edits", data=form, headers=AUTH) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert decode(answer["data"][0]["b64_json"]).size == (320, 240)
    assert list(fake.last.files) == ["image"]


async def test_edit_without_image_answers_seed_body(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.expect_violations = True  # a bad request on purpose
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("prompt", "add a hat")
    form.add_field("model", "gpt-image-2")
    async with http.post(f"{fake.base_url}/images/edits", data=form, headers=AUTH) as resp:
        assert resp.status == 400
        assert await resp.json() == SEED_MISSING_IMAGE


async def test_missing_api_key_answers_seed_401(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-image-2", "prompt": "fox"}
    async with http.post(f"{fake.base_url}/images/generations", json=body) as resp:
        assert resp.status == 401
        assert await resp.json() == SEED_NO_API_KEY


async def test_wrong_key_answers_invalid_api_key_with_masked_key(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    wrong = "sk-wrong-key-00009876"
    body = {"model": "gpt-image-2", "prompt": "fox"}
    headers = {"Authorization": f"Bearer {wrong}"}
    async with http.post(f"{fake.base_url}/images/generations", json=body, headers=headers) as resp:
        assert resp.status == 401
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == (
        "Incorrect API key provided: sk-**************9876. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert wrong not in error["message"]


async def test_scripted_429_then_success(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(rate_limited(retry_after=1, retry_after_ms=20))
    first = await generate(http, fake)
    assert first.status == 429
    assert first.headers["retry-after"] == "1"
    assert first.headers["retry-after-ms"] == "20"
    second = await generate(http, fake)
    assert second.status == 200
    assert [r.status for r in fake.image_requests] == [429, 200]


async def test_scripted_error_body_is_the_real_envelope(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(moderation_blocked(stage="output", categories=("violence",)))
    async with http.post(f"{fake.base_url}/images/generations", json={"prompt": "x"}, headers=AUTH) as resp:
        error = (await resp.json())["error"]
    assert resp.status == 400
    assert error["code"] == "moderation_blocked"
    assert error["moderation_details"] == {"moderation_stage": "output", "categories": ["violence"]}
    assert error["message"].endswith("safety_violations=[violence].")


async def test_scripted_malformed_json(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(malformed_json())
    async with http.post(f"{fake.base_url}/images/generations", json={"prompt": "x"}, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.text() == '{"data": ['
        with pytest.raises(ValueError):
            await resp.json()


async def test_scripted_raw_reply_with_headers(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(Reply(503, text="<html>down</html>", headers={"Content-Type": "text/html", "x-should-retry": "true"}))
    resp = await generate(http, fake)
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "text/html"
    assert resp.headers["x-should-retry"] == "true"


async def test_scripted_delay_provokes_client_timeout(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(timeout(30))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await http.post(
            f"{fake.base_url}/images/generations",
            json={"prompt": "x"},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert time.monotonic() - started < 5
    assert fake.pending == 0


async def test_url_mode_serves_the_png(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.response_mode = "url"
    async with http.post(
        f"{fake.base_url}/images/generations", json={"prompt": "x", "size": "256x256"}, headers=AUTH
    ) as resp:
        item = (await resp.json())["data"][0]
    assert "b64_json" not in item
    assert item["url"].startswith(f"http://127.0.0.1:{fake.port}/files/")
    assert item["url"].endswith(".png")
    async with http.get(item["url"]) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        img = Image.open(io.BytesIO(await resp.read()))
    assert (img.format, img.size) == ("PNG", (256, 256))


async def test_known_model_lookup(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.base_url}/models/gpt-image-2", headers=AUTH) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": "gpt-image-2", "object": "model", "created": 0, "owned_by": "system"}


async def test_unknown_model_lookup_is_404(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.base_url}/models/dall-e-3", headers=AUTH) as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "error": {
                "message": "The model 'dall-e-3' does not exist",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }


async def test_200_concurrent_generations_are_all_answered(fake: FakeOpenAI) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        responses = await asyncio.gather(*(generate(http, fake, prompt=f"p{i % 4}") for i in range(200)))
    assert {r.status for r in responses} == {200}
    assert len(fake.image_requests) == 200


async def test_latency_is_added_to_successes(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key=KEY, latency=0.3) as slow:
        started = time.monotonic()
        resp = await generate(http, slow)
        assert resp.status == 200
        assert time.monotonic() - started >= 0.3


async def test_urlencoded_edit_without_file_answers_seed_body(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.expect_violations = True  # a bad request on purpose
    # aiohttp sends a FormData without files as application/x-www-form-urlencoded
    async with http.post(f"{fake.base_url}/images/edits", data={"prompt": "hat"}, headers=AUTH) as resp:
        assert resp.status == 400
        assert await resp.json() == SEED_MISSING_IMAGE
    assert fake.last.form == {"prompt": ["hat"]}


async def test_scripted_success_carries_extra_headers(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.script(Reply(200, success=True, headers={"x-ratelimit-remaining-images": "0"}))
    resp = await generate(http, fake)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-images"] == "0"
    assert fake.last.status == 200
