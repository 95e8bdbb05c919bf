"""Upscale tools in the core: Zoom out and Pan build a transparent-bordered canvas at a size the model accepts and
send it to /images/edits; Vary (Subtle/Strong) use their prompts; the new jobs reroll and tell their story."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from adapters.common.story import story, upscale_story
from bot import imaging
from bot.bootstrap import Core, open_core
from bot.catalog import Catalog, ModelSpec, nearest_size, parse_size
from bot.errors import ImageBotError
from bot.models import GenerateRequest, JobContext
from bot.settings import load_settings
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, RecordedRequest
from tests.images import png

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1")
SETTINGS = load_settings()
CATALOG, MODELS = SETTINGS.catalog(), SETTINGS.models
INPUT_MAX_EDGE = SETTINGS.imaging.input_max_edge
EDIT_MODELS = [name for name, spec in MODELS.items() if spec.edits]
LIVE_EDIT_MODELS = [name for name in EDIT_MODELS if not CATALOG.retired(MODELS[name])]  # the table decides
OUTPAINTS = [("zoom", 1.5), ("zoom", 2.0), ("pan", "left"), ("pan", "right"), ("pan", "up"), ("pan", "down")]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def extension(width: int, height: int, how: str, arg: float | str) -> imaging.Extension:
    if how == "zoom":
        return imaging.zoom_extension(width, height, float(arg))
    return imaging.pan_extension(width, height, str(arg))


def sources(spec: ModelSpec) -> list[tuple[int, int]]:
    fixed = [dims for dims in (parse_size(size) for size in spec.sizes) if dims is not None]
    return fixed + ([(1280, 720), (3072, 2048)] if spec.size_rule is not None else [])


# --- sizes: every model row, every source size, every tool ---------------------------------------------------


@pytest.mark.parametrize("model", EDIT_MODELS)
def test_every_extended_canvas_gets_a_size_the_model_accepts(model: str) -> None:
    spec = MODELS[model]
    for width, height in sources(spec):
        for how, arg in OUTPAINTS:
            wanted = extension(width, height, how, arg)
            size = nearest_size(spec, wanted.width, wanted.height, max_edge=INPUT_MAX_EDGE)
            text = f"{size[0]}x{size[1]}"
            assert Catalog.check_size(model, spec, text) == text, (model, width, height, how, arg)
            assert max(size) <= INPUT_MAX_EDGE or spec.size_rule is None
            if spec.size_rule is not None:  # free sizes keep the extended aspect (to the rule's rounding)
                aspect = min(max(wanted.width / wanted.height, 1 / 3), 3)
                assert abs(size[0] / size[1] - aspect) < 0.05, (model, size, aspect)


def test_fixed_sizes_pick_the_closest_aspect() -> None:
    spec = MODELS["gpt-image-1.5"]
    assert nearest_size(spec, 2304, 1024) == (1536, 1024)  # a pan left of a landscape image stays landscape
    assert nearest_size(spec, 1024, 1536) == (1024, 1536)
    assert nearest_size(spec, 2048, 2048) == (1024, 1024)


# --- canvases -----------------------------------------------------------------------------------------------


def test_zoom_canvas_is_transparent_around_the_centred_image() -> None:
    canvas = decode(imaging.outpaint_canvas(png(300, 200), imaging.zoom_extension(300, 200, 2), (600, 400)))
    assert canvas.size == (600, 400) and canvas.mode == "RGBA"
    alpha = canvas.getchannel("A")
    assert [alpha.getpixel(p) for p in ((0, 0), (599, 399), (149, 200), (300, 99), (451, 200), (300, 301))] == [0] * 6
    assert [alpha.getpixel(p) for p in ((300, 200), (151, 101), (448, 298))] == [255] * 3


def test_pan_canvas_is_transparent_on_the_new_side_only() -> None:
    canvas = decode(imaging.outpaint_canvas(png(200, 200), imaging.pan_extension(200, 200, "left"), (300, 200)))
    alpha = canvas.getchannel("A")
    assert alpha.crop((0, 0, 100, 200)).getextrema() == (0, 0)
    assert alpha.crop((100, 0, 300, 200)).getextrema() == (255, 255)
    up = decode(imaging.outpaint_canvas(png(200, 200), imaging.pan_extension(200, 200, "up"), (200, 300)))
    assert up.getchannel("A").crop((0, 0, 200, 100)).getextrema() == (0, 0)
    assert up.getchannel("A").crop((0, 100, 200, 300)).getextrema() == (255, 255)


def test_a_canvas_of_another_aspect_centres_the_extension() -> None:
    # a fixed-size model: pan right of a square image onto a square canvas -> transparent above, below, right
    canvas = decode(imaging.outpaint_canvas(png(90, 90), imaging.pan_extension(90, 90, "right"), (90, 90)))
    alpha = canvas.getchannel("A")
    assert alpha.getpixel((1, 45)) == 255 and alpha.getpixel((89, 45)) == 0 and alpha.getpixel((30, 0)) == 0


# --- through the core, against the fake OpenAI -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def core_on(openai: FakeOpenAI, data_dir: Path) -> AsyncIterator[Core]:
    settings = load_settings(data_dir=data_dir, OPENAI_API_KEY=DEFAULT_KEY, OPENAI_BASE_URL=openai.base_url)
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        yield core


def assert_outpaint_request(sent: RecordedRequest, model: str, how: str, arg: float | str) -> None:
    """The edit the fake received: a canvas of exactly the ``size`` sent (valid for the model), transparent
    where it was extended and opaque where the source image sits, and a mask of the same size."""
    assert sent.path.endswith("/images/edits") and sent.param("model") == model
    size = sent.param("size") or ""
    spec = MODELS[model]
    assert Catalog.check_size(model, spec, size) == size
    canvas = decode((sent.files.get("image") or sent.files["image[]"])[0].data)
    assert canvas.format == "PNG" and f"{canvas.width}x{canvas.height}" == size
    alpha = canvas.convert("RGBA").getchannel("A")
    w, h = canvas.size
    assert alpha.getpixel((w // 2, h // 2)) == 255 or how == "pan"
    new_side = {"left": (0, h // 2), "right": (w - 1, h // 2), "up": (w // 2, 0), "down": (w // 2, h - 1)}
    old_side = {"left": (w - 2, h // 2), "right": (1, h // 2), "up": (w // 2, h - 2), "down": (w // 2, 1)}
    if how == "zoom":
        assert [alpha.getpixel(p) for p in ((0, 0), (w - 1, h - 1), (0, h // 2), (w // 2, 0))] == [0] * 4
    else:
        assert alpha.getpixel(new_side[str(arg)]) == 0 and alpha.getpixel(old_side[str(arg)]) == 255
    assert decode(sent.files["mask"][0].data).size == canvas.size


@pytest.mark.parametrize("model", LIVE_EDIT_MODELS)
async def test_zoom_and_pan_send_a_transparent_canvas_of_a_valid_size(model: str, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, core_on(openai, tmp_path) as core:
        request = GenerateRequest(prompt="a red fox in the snow", size="1536x1024", model=model, quality="low")
        source = (await core.jobs.submit(ALICE, request)).job
        for how, arg in [("zoom", 2.0), ("zoom", 1.5), ("pan", "left"), ("pan", "up")]:
            options = {"zoom": arg} if how == "zoom" else {"pan": arg}
            outcome = await core.jobs.outpaint(source.id, 1, ALICE, **options)  # type: ignore[arg-type]
            assert_outpaint_request(openai.last, model, how, arg)
            assert openai.last.param("quality") == "low"  # the source's quality
            assert outcome.job.kind == how and outcome.result is not None
        assert not openai.spec_violations


async def test_outpainted_jobs_tell_their_story_reroll_and_survive_a_restart(tmp_path: Path) -> None:
    async with FakeOpenAI() as openai:
        async with core_on(openai, tmp_path) as core:
            source = (await core.jobs.submit(ALICE, GenerateRequest(prompt="a red fox in the snow", n=2))).job
        async with core_on(openai, tmp_path) as core:  # a restart: the buttons name the job, the store has it
            zoomed = (await core.jobs.outpaint(source.id, 2, ALICE, zoom=2.0)).job
            canvas = (openai.last.files.get("image") or openai.last.files["image[]"])[0].data
            panned = (await core.jobs.outpaint(zoomed.id, 1, ALICE, pan="left")).job
            rerolled = (await core.jobs.reroll(zoomed.id, ALICE)).job
            rerolled_canvas = (openai.last.files.get("image") or openai.last.files["image[]"])[0].data
        assert story(zoomed).plain() == "Zoom out 2× of image 2 — a red fox in the snow"
        assert story(panned).plain() == "Pan left of image 1 — a red fox in the snow"
        assert (rerolled.kind, story(rerolled).headline) == ("zoom", "Reroll of zoom out 2× of image 2")
        assert decode(rerolled_canvas).size == decode(canvas).size
        assert decode(rerolled_canvas).tobytes() == decode(canvas).tobytes()
        assert upscale_story(source, 2).plain() == "Upscale of image 2 — a red fox in the snow"
        assert story(source).headline == ""


@pytest.mark.parametrize("strength", ["subtle", "strong"])
async def test_vary_strength_sends_its_own_prompt_and_says_so(strength: str, tmp_path: Path) -> None:
    settings = load_settings()
    expected = settings.variation_prompt_subtle if strength == "subtle" else settings.variation_prompt_strong
    async with FakeOpenAI() as openai, core_on(openai, tmp_path) as core:
        source = (await core.jobs.submit(ALICE, GenerateRequest(prompt="a red fox in the snow", n=2))).job
        varied = (await core.jobs.vary_result(source.id, 2, ALICE, n=1, strength=strength)).job
        assert openai.last.path.endswith("/images/edits") and openai.last.param("prompt") == expected
        rerolled = (await core.jobs.reroll(varied.id, ALICE)).job
        assert openai.last.param("prompt") == expected
    assert story(varied).plain() == f"Variations ({strength}) of image 2 — a red fox in the snow"
    assert story(rerolled).headline == f"Reroll of variations ({strength}) of image 2"


async def test_a_model_without_edits_cannot_zoom(tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, core_on(openai, tmp_path) as core:
        source = (await core.jobs.submit(ALICE, GenerateRequest(prompt="a fox"))).job
        await core.jobs.store.update(source.id, model="dall-e-3")
        with pytest.raises(ImageBotError) as caught:
            await core.jobs.outpaint(source.id, 1, ALICE, zoom=2.0)
        assert "dall-e-3" in caught.value.friendly() or "retired" in caught.value.friendly()
        assert len(openai.image_requests) == 1


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(EDIT_MODELS),
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    max_edge=st.sampled_from([1024, 2048, 4096]),
)
def test_any_extension_gets_a_size_the_model_accepts(model: str, width: int, height: int, max_edge: int) -> None:
    spec = MODELS[model]
    size = nearest_size(spec, width, height, max_edge=max_edge)
    assert Catalog.check_size(model, spec, f"{size[0]}x{size[1]}") == f"{size[0]}x{size[1]}"
    rule = spec.size_rule
    if rule is not None:  # within the edge cap, unless the rule's minimum area can't be had under it
        stretch = min(max(width / height, height / width), rule.max_ratio)
        assert max(size) <= max_edge or max_edge * max_edge / stretch < rule.min_pixels
