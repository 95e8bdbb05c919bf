"""OfflineImages: procedural pictures that honour the ImageProvider port, made without blocking the loop."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageStat

from bot.errors import ImageBotError, InvalidImageError, InvalidRequestError
from bot.limits import Admission
from bot.models import EditRequest, ProviderEdit, ProviderGenerate, ProviderVary, Usage, VaryRequest
from bot.providers import offline
from bot.providers.offline import OfflineImages
from bot.service import ImageService
from bot.settings import load_settings

MODEL = "gpt-image-1"


# --- helpers ------------------------------------------------------------------------------------------------


def generate_call(prompt: str = "a fox in the snow", **options: Any) -> ProviderGenerate:
    values: dict[str, Any] = {"model": MODEL, "prompt": prompt, "n": 1, "size": "1024x1024", "quality": None}
    values.update(options)
    return ProviderGenerate(**values)


def edit_call(image: bytes, mask: bytes | None = None, **options: Any) -> ProviderEdit:
    values: dict[str, Any] = {
        "model": MODEL,
        "prompt": "a lighthouse at night",
        "images": (image,),
        "mask": mask,
        "n": 1,
        "size": None,
        "quality": None,
    }
    values.update(options)
    return ProviderEdit(**values)


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def photo(seed: int, size: tuple[int, int] = (384, 384)) -> Image.Image:
    """A busy test picture: a coloured background with overlapping discs and bars, different per seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y, s = rng.randrange(size[0]), rng.randrange(size[1]), rng.randrange(10, size[0] // 3)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + s, y + s), fill=colour)
        else:
            draw.rectangle((x, y, x + s, y + s // 4), fill=colour)
    return img


def centre_hole_mask(size: tuple[int, int]) -> Image.Image:
    """Opaque everywhere (keep) except a transparent square in the middle (editable)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    w, h = size
    ImageDraw.Draw(mask).rectangle((w // 4, h // 4, 3 * w // 4 - 1, 3 * h // 4 - 1), fill=(0, 0, 0, 0))
    return mask


@pytest.fixture
def provider() -> OfflineImages:
    return OfflineImages()


# --- identity and health --------------------------------------------------------------------------------------


def test_says_it_is_the_offline_provider(provider: OfflineImages) -> None:
    assert (provider.name, provider.offline) == ("offline", True)


async def test_check_reports_reachable_and_explains_why(provider: OfflineImages) -> None:
    health = await provider.check(MODEL)

    assert (health.reachable, health.model_known) == (True, True)
    assert health.detail == "offline provider (no API key): images are made locally"


# --- generate ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1024x1024", (1024, 1024)), ("1536x1024", (1536, 1024)), ("1024x1536", (1024, 1536)), ("auto", (1024, 1024)),
     (None, (1024, 1024))],
)  # fmt: skip
async def test_generate_honours_the_size(provider: OfflineImages, size: str | None, expected: tuple[int, int]) -> None:
    result = await provider.generate(generate_call(size=size))

    assert opened(result.images[0]).size == expected


async def test_generate_returns_n_distinct_images(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call(n=3))

    assert len(result.images) == 3
    assert len(set(result.images)) == 3


async def test_generate_is_deterministic_for_the_same_prompt(provider: OfflineImages) -> None:
    first = await provider.generate(generate_call("sunset over the mountains", n=2))
    second = await provider.generate(generate_call("sunset over the mountains", n=2))

    assert first.images == second.images


async def test_generate_ignores_case_and_spacing_of_the_prompt_when_seeding(provider: OfflineImages) -> None:
    plain = await provider.generate(generate_call("a fox in the snow", background="transparent"))
    shouted = await provider.generate(generate_call("  A FOX   in the\tSnow ", background="transparent"))

    assert plain.images == shouted.images  # transparent: no caption, which shows the prompt as typed


async def test_different_prompts_give_visibly_different_pictures(provider: OfflineImages) -> None:
    fox = await provider.generate(generate_call("a fox in the snow"))
    city = await provider.generate(generate_call("a city at night"))

    assert mean_abs_difference(opened(fox.images[0]), opened(city.images[0])) > 20


async def test_images_of_one_request_are_visibly_different(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call("a lighthouse by the ocean", n=2))

    assert mean_abs_difference(opened(result.images[0]), opened(result.images[1])) > 5


async def test_generate_makes_a_png_by_default(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call())

    img = opened(result.images[0])
    assert result.images[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert (img.format, img.mode) == ("PNG", "RGB")


async def test_generate_is_a_picture_not_a_flat_fill(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call())

    img = opened(result.images[0]).convert("RGB")
    assert len(img.getcolors(maxcolors=1_000_000) or ()) > 500
    assert min(ImageStat.Stat(img).stddev) > 10


async def test_generate_encodes_jpeg_when_asked(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call(output_format="jpeg"))

    assert result.images[0].startswith(b"\xff\xd8\xff")
    assert opened(result.images[0]).format == "JPEG"


async def test_generate_encodes_webp_when_asked(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call(output_format="webp"))

    assert opened(result.images[0]).format == "WEBP"


async def test_transparent_background_leaves_the_sky_clear(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call("rolling hills", background="transparent"))

    alpha = opened(result.images[0]).convert("RGBA").getchannel("A")
    assert alpha.getextrema() == (0, 255)
    assert alpha.getpixel((512, 5)) == 0  # top of the sky
    assert alpha.getpixel((512, 1018)) == 255  # the nearest hill


async def test_generate_reports_no_usage_and_no_revised_prompts(provider: OfflineImages) -> None:
    result = await provider.generate(generate_call(n=2))

    assert result.usage == Usage()
    assert result.revised_prompts == (None, None)


@pytest.mark.parametrize("size", ["big", "0x1024", "1024x99999"])
async def test_generate_rejects_a_malformed_size(provider: OfflineImages, size: str) -> None:
    with pytest.raises(InvalidRequestError):
        await provider.generate(generate_call(size=size))


# --- edit with a mask -------------------------------------------------------------------------------------------


async def test_masked_edit_keeps_every_pixel_outside_the_mask(provider: OfflineImages) -> None:
    source = photo(1)
    mask = centre_hole_mask(source.size)

    result = await provider.edit(edit_call(png(source), png(mask)))

    changed = ImageChops.difference(opened(result.images[0]).convert("RGB"), source)
    kept = Image.composite(changed, Image.new("RGB", source.size), mask.getchannel("A"))
    assert kept.getbbox() is None


async def test_masked_edit_paints_inside_the_mask(provider: OfflineImages) -> None:
    source = photo(1)
    mask = centre_hole_mask(source.size)

    result = await provider.edit(edit_call(png(source), png(mask)))

    inside = (120, 120, 264, 264)  # well inside the hole, past the feathered edge
    edited = opened(result.images[0]).convert("RGB").crop(inside)
    assert mean_abs_difference(edited, source.crop(inside)) > 20


async def test_masked_edit_keeps_transparent_input_pixels_outside_the_mask(provider: OfflineImages) -> None:
    source = photo(2).convert("RGBA")
    source.putalpha(Image.linear_gradient("L").resize(source.size))
    mask = centre_hole_mask(source.size)

    result = await provider.edit(edit_call(png(source), png(mask)))

    edited = opened(result.images[0]).convert("RGBA")
    changed = ImageChops.difference(edited, source)
    kept = Image.composite(changed, Image.new("RGBA", source.size, (0, 0, 0, 0)), mask.getchannel("A"))
    assert kept.getbbox() is None


async def test_edit_keeps_the_input_size(provider: OfflineImages) -> None:
    source = photo(3, size=(400, 240))

    result = await provider.edit(edit_call(png(source), png(centre_hole_mask(source.size)), size="1024x1024", n=2))

    assert [opened(image).size for image in result.images] == [(400, 240), (400, 240)]


async def test_edit_rejects_a_mask_of_another_size(provider: OfflineImages) -> None:
    source = photo(1)

    with pytest.raises(InvalidImageError):
        await provider.edit(edit_call(png(source), png(centre_hole_mask((100, 100)))))


async def test_edit_of_undecodable_bytes_raises_a_bot_error(provider: OfflineImages) -> None:
    with pytest.raises(InvalidImageError):
        await provider.edit(edit_call(b"\x89PNG\r\n\x1a\nnot really a png"))


# --- edit without a mask, and vary ------------------------------------------------------------------------------


async def test_unmasked_edit_resembles_the_input_without_copying_it(provider: OfflineImages) -> None:
    source, unrelated = photo(4), photo(5)

    result = await provider.edit(edit_call(png(source)))

    edited = opened(result.images[0])
    distance = mean_abs_difference(edited, source)
    assert 2 < distance < 0.6 * mean_abs_difference(unrelated, source)


async def test_unmasked_edit_gives_different_images_per_index(provider: OfflineImages) -> None:
    result = await provider.edit(edit_call(png(photo(4)), n=2))

    assert mean_abs_difference(opened(result.images[0]), opened(result.images[1])) > 2


async def test_vary_resembles_the_input_without_copying_it(provider: OfflineImages) -> None:
    source, unrelated = photo(6), photo(7)

    result = await provider.vary(ProviderVary(model="dall-e-2", image=png(source), n=1, size=None))

    varied = opened(result.images[0])
    assert varied.size == source.size
    distance = mean_abs_difference(varied, source)
    assert 2 < distance < 0.6 * mean_abs_difference(unrelated, source)


async def test_vary_is_deterministic_and_distinct_per_index(provider: OfflineImages) -> None:
    call = ProviderVary(model="dall-e-2", image=png(photo(6)), n=2, size=None)

    first, second = await provider.vary(call), await provider.vary(call)

    assert first.images == second.images
    assert first.images[0] != first.images[1]


# --- failures and the event loop ----------------------------------------------------------------------------


async def test_pillow_failures_become_bot_errors(provider: OfflineImages, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_encoder(img: Image.Image, output_format: str) -> bytes:
        raise OSError("encoder jpeg not available")

    monkeypatch.setattr(offline, "_encode", broken_encoder)

    with pytest.raises(ImageBotError) as caught:
        await provider.generate(generate_call())
    assert "encoder" not in str(caught.value)  # the user-facing text never carries the raw error


async def test_pillow_work_runs_in_a_worker_thread(provider: OfflineImages, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []
    real_paint = offline._paint

    def spying_paint(*args: Any, **kwargs: Any) -> Image.Image:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((threading.current_thread().name, on_loop))
        return real_paint(*args, **kwargs)

    monkeypatch.setattr(offline, "_paint", spying_paint)
    source = png(photo(8))

    await provider.generate(generate_call(n=2))
    await provider.edit(edit_call(source, png(centre_hole_mask((384, 384)))))
    await provider.edit(edit_call(source))
    await provider.vary(ProviderVary(model="dall-e-2", image=source, n=1, size=None))

    assert len(seen) == 5
    assert all(not on_loop and name != threading.main_thread().name for name, on_loop in seen)


async def test_event_loop_stays_responsive_while_generating(provider: OfflineImages) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    await provider.generate(generate_call("a harbour town at dusk", n=4, size="1536x1024", quality="high"))
    done.set()
    await ticking

    assert len(gaps) >= 3
    assert max(gaps) < 0.25


async def test_a_32000_character_prompt_is_captioned_with_few_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caption is cut by binary search: a hostile long prompt must not cost quadratic text layout."""
    from PIL import ImageFont

    calls = 0
    real = ImageFont.FreeTypeFont.getlength

    def counting(self: ImageFont.FreeTypeFont, text: str, *args: object, **kwargs: object) -> float:
        nonlocal calls
        calls += 1
        return real(self, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageFont.FreeTypeFont, "getlength", counting)
    prompt = "a lighthouse at dusk " * 1600
    result = await OfflineImages().generate(ProviderGenerate("gpt-image-2", prompt[:32000], 1, "1024x1024", None))
    assert len(result.images) == 1
    assert 0 < calls < 40


# --- previews ---------------------------------------------------------------------------------------------------


async def test_a_preview_is_sent_before_the_image_when_partial_images_are_asked_for(provider: OfflineImages) -> None:
    previews: list[bytes] = []

    async def on_partial(image: bytes) -> None:
        previews.append(image)

    result = await provider.generate(generate_call(partial_images=2), on_partial=on_partial)
    assert len(previews) == 1
    assert opened(previews[0]).size == (256, 256)  # a quarter of the 1024x1024 result, cheap to make
    assert opened(result.images[0]).size == (1024, 1024)
    await provider.edit(edit_call(png(photo(1)), partial_images=1), on_partial=on_partial)
    assert len(previews) == 2 and opened(previews[1]).size == (96, 96)


async def test_no_preview_without_partial_images(provider: OfflineImages) -> None:
    previews: list[bytes] = []

    async def on_partial(image: bytes) -> None:
        previews.append(image)

    await provider.generate(generate_call(), on_partial=on_partial)
    assert previews == []


# --- tiny and extreme inputs, through the core ----------------------------------------------------------------


def offline_service() -> ImageService:
    settings = load_settings()
    return ImageService(
        provider=OfflineImages(),
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=2, images_per_minute=0, per_user_jobs=10, max_queue=10),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )


async def edit_and_vary(service: ImageService, size: tuple[int, int]) -> None:
    """Edit (plain and with a region) and vary an image of ``size``: each gives one readable picture."""
    source = png(photo(size[0] * 100 + size[1], size) if min(size) >= 40 else Image.new("RGB", size, (90, 140, 30)))
    results = [
        await service.edit(EditRequest(images=(source,), prompt="a lighthouse at night")),
        await service.edit(EditRequest(images=(source,), prompt="a lighthouse", region="center")),
        await service.vary(VaryRequest(image=source)),
    ]
    for result in results:
        (image,) = result.images
        assert opened(image.data).size == (image.width, image.height)


@pytest.mark.parametrize("size", [(1, 1), (10000, 10), (10, 10000), (2, 3), (4096, 1)])
async def test_edit_and_vary_of_extreme_shapes_make_images(size: tuple[int, int]) -> None:
    await edit_and_vary(offline_service(), size)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 64), height=st.integers(1, 64))
def test_edit_and_vary_work_for_every_small_size(width: int, height: int) -> None:
    asyncio.run(edit_and_vary(offline_service(), (width, height)))
