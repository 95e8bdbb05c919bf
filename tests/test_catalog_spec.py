"""FakeOpenAI holds every request to OpenAI's published schemas (tests/spec/openai-images.json), so the whole
suite fails if the bot ever sends a request OpenAI's spec does not allow, or a retired model to OpenAI."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.images import png

AUTH = {"Authorization": f"Bearer {DEFAULT_KEY}"}


def test_the_vendored_spec_names_its_source() -> None:
    from tests.fakes.openai_server import _SPEC_FILE

    spec = json.loads(_SPEC_FILE.read_text())
    assert spec["source"]["repository"] == "openai/openai-openapi"
    assert len(spec["source"]["commit"]) == 40
    assert {"CreateImageRequest", "CreateImageEditRequest", "CreateImageVariationRequest"} <= set(
        spec["components"]["schemas"]
    )


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "gpt-image-2", "prompt": "fox", "n": "2"}, "invalid_type", "n"),
        ({"model": "gpt-image-2", "prompt": "fox", "n": 11}, "invalid_value", "n"),
        ({"model": "gpt-image-2", "prompt": "fox", "quality": "ultra"}, "invalid_value", "quality"),
        ({"model": "gpt-image-2", "prompt": "fox", "partial_images": 4}, "invalid_value", "partial_images"),
        ({"model": "gpt-image-2", "prompt": "fox", "colour": "red"}, "unknown_parameter", "colour"),
        ({"model": "gpt-image-2", "prompt": "fox", "stream": "yes"}, "invalid_type", "stream"),
    ],
)
async def test_a_generation_that_breaks_the_spec_gets_openais_400_and_is_recorded(
    body: dict[str, object], code: str, param: str, http: aiohttp.ClientSession
) -> None:
    async with FakeOpenAI(expect_violations=True) as fake:
        async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
        assert len(fake.spec_violations) == 1
        assert param in fake.spec_violations[0]


async def test_multipart_fields_are_read_as_the_types_the_spec_names(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake:
        form = aiohttp.FormData()
        for name, value in {"model": "gpt-image-2", "prompt": "hat", "n": "2", "stream": "false"}.items():
            form.add_field(name, value)
        for index in (1, 2):
            form.add_field("image[]", png(64, 64), filename=f"i{index}.png", content_type="image/png")
        async with http.post(f"{fake.base_url}/images/edits", data=form, headers=AUTH) as resp:
            assert resp.status == 200
            assert len((await resp.json())["data"]) == 2
        assert fake.spec_violations == []


async def test_a_multipart_edit_with_an_unknown_field_is_refused(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(expect_violations=True) as fake:
        form = aiohttp.FormData()
        for name, value in {"model": "gpt-image-2", "prompt": "hat", "n": "two", "style": "vivid"}.items():
            form.add_field(name, value)
        form.add_field("image", png(64, 64), filename="i.png", content_type="image/png")
        async with http.post(f"{fake.base_url}/images/edits", data=form, headers=AUTH) as resp:
            assert resp.status == 400
        assert len(fake.spec_violations) == 1


async def test_a_retired_model_sent_to_openai_is_a_violation(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(expect_violations=True) as fake:
        body = {"model": "dall-e-3", "prompt": "fox"}
        async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
            assert resp.status == 404
        assert fake.spec_violations == ["POST /v1/images/generations: the retired model 'dall-e-3' was sent to OpenAI"]


async def test_leaving_the_fake_with_violations_fails_the_test(http: aiohttp.ClientSession) -> None:
    with pytest.raises(AssertionError, match="break OpenAI's published spec"):
        async with FakeOpenAI() as fake:
            body = {"prompt": "fox", "n": 0}
            async with http.post(f"{fake.base_url}/images/generations", json=body, headers=AUTH) as resp:
                assert resp.status == 400
