"""The playground's U, Zoom out, Pan and Vary (Subtle/Strong) routes through aiohttp's client, on the fake OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.images import decode
from tests.test_web import Harness, _harness


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server
        assert not server.spec_violations


@pytest.fixture
async def web_bot(openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _harness(tmp_path, openai_api_key=DEFAULT_KEY, openai_base_url=openai.base_url):
        yield harness


async def test_u_then_zoom_out_then_pan(web_bot: Harness, openai: FakeOpenAI) -> None:
    grid = await web_bot.imagine("a red fox in the snow --n 2")
    job = grid["job"]["id"]
    assert grid["job"]["headline"] == ""

    upscaled = await web_bot.post(f"/api/jobs/{job}/upscale/2")
    assert upscaled["status"] == "upscaled" and upscaled["index"] == 2
    assert (upscaled["job"]["headline"], upscaled["job"]["prompt"]) == ("Upscale of image 2", "a red fox in the snow")
    [image] = upscaled["images"]
    assert image["url"] == f"/api/jobs/{job}/images/2" and (await web_bot.image(image["url"])).size == (1024, 1024)
    assert len(openai.image_requests) == 1

    zoomed = await web_bot.post(f"/api/jobs/{job}/outpaint/2", {"zoom": 1.5})
    assert zoomed["job"]["kind"] == "zoom" and zoomed["job"]["headline"] == "Zoom out 1.5× of image 2"
    assert zoomed["job"]["prompt"] == "a red fox in the snow"
    sent = openai.last
    canvas = decode((sent.files.get("image") or sent.files["image[]"])[0].data).convert("RGBA")
    assert sent.param("size") == "1536x1536" and canvas.size == (1536, 1536)
    assert canvas.getchannel("A").getpixel((10, 10)) == 0 and canvas.getchannel("A").getpixel((768, 768)) == 255
    assert (await web_bot.image(zoomed["images"][0]["url"])).size == (1536, 1536)

    panned = await web_bot.post(f"/api/jobs/{zoomed['job']['id']}/outpaint/1", {"pan": "right"})
    assert panned["job"]["headline"] == "Pan right of image 1"
    alpha = decode((openai.last.files.get("image") or openai.last.files["image[]"])[0].data).convert("RGBA")
    assert openai.last.param("size") == "2048x1360"  # 2304x1536 on the 2048 px input edge, multiples of 16
    assert alpha.getchannel("A").getpixel((2047, 680)) == 0 and alpha.getchannel("A").getpixel((0, 680)) == 255


async def test_vary_subtle_and_strong_under_an_upscaled_image(web_bot: Harness, openai: FakeOpenAI) -> None:
    grid = await web_bot.imagine("a lighthouse --n 2")
    subtle = await web_bot.post(f"/api/jobs/{grid['job']['id']}/vary/1", {"strength": "subtle"})
    assert subtle["job"]["headline"] == "Variations (subtle) of image 1" and subtle["job"]["prompt"] == "a lighthouse"
    assert "subtle variation" in (openai.last.param("prompt") or "")
    strong = await web_bot.post(f"/api/jobs/{grid['job']['id']}/vary/1", {"strength": "strong"})
    assert strong["job"]["headline"] == "Variations (strong) of image 1"
    assert "bold variation" in (openai.last.param("prompt") or "")


@pytest.mark.parametrize(
    "body", [{"zoom": 3}, {"zoom": "2"}, {"pan": "sideways"}, {}, {"zoom": 2, "pan": "left"}, {"pan": 1}]
)
async def test_a_bad_outpaint_request_is_a_friendly_error_and_makes_no_call(
    web_bot: Harness, openai: FakeOpenAI, body: dict[str, object]
) -> None:
    grid = await web_bot.imagine("a castle")
    answer = await web_bot.post(f"/api/jobs/{grid['job']['id']}/outpaint/1", body, status=400)
    assert "error" in answer and len(openai.image_requests) == 1
