"""ImageService: validation before any provider call, normalised inputs, masks, results, errors, progress."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest

from bot.catalog import Catalog
from bot.errors import (
    ImageBotError,
    InvalidImageError,
    InvalidRequestError,
    ModelUnavailableError,
    ProviderResponseError,
    UnexpectedError,
)
from bot.limits import Admission
from bot.models import (
    EditRequest,
    GenerateRequest,
    JobStatus,
    Progress,
    ProviderEdit,
    ProviderGenerate,
    ProviderImages,
    ProviderVary,
    VaryRequest,
)
from bot.service import ImageService
from bot.settings import load_settings
from tests.fakes.provider import FakeImages
from tests.images import decode, half_white_mask, jpeg, png, png_with_hole


class Recorder:
    def __init__(self) -> None:
        self.updates: list[Progress] = []

    async def __call__(self, update: Progress) -> None:
        self.updates.append(update)


@pytest.fixture
def provider() -> FakeImages:
    return FakeImages()


def make_service(
    provider: FakeImages, today: dt.date = dt.date(2026, 11, 25), *, partial_images: int = 0
) -> ImageService:
    # a compatible server that still emulates DALL·E, so the legacy rows' capabilities can be exercised
    settings = load_settings(openai_base_url="http://compatible.test/v1")
    models = dict(settings.models)
    for legacy in ("dall-e-2", "dall-e-3"):
        models[legacy] = models[legacy].model_copy(update={"served_by_compatible_server": True})
    admission = Admission(max_concurrent=2, images_per_minute=0, per_user_jobs=5, max_queue=10)
    return ImageService(
        provider=provider,
        catalog=Catalog(models, settings.aliases, settings.default_model, openai_api=False),
        admission=admission,
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
        partial_images=partial_images,
        today=lambda: today,
    )


@pytest.fixture
def service(provider: FakeImages) -> ImageService:
    return make_service(provider)


# --- validation happens before any provider call ------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (GenerateRequest(prompt="   "), "prompt is empty"),
        (GenerateRequest(prompt="x" * 32_001), "at most 32,000"),
        (GenerateRequest(prompt="a fox", n=11), "1 to 10 images"),
        (GenerateRequest(prompt="a fox", size="1000x1000"), "multiples of 16"),
        (GenerateRequest(prompt="a fox", size="4096x4096"), "longest side"),
        (GenerateRequest(prompt="a fox", size="3840x1024"), "aspect ratio"),
        (GenerateRequest(prompt="a fox", size="big"), "isn't a size"),
        (GenerateRequest(prompt="a fox", quality="ultra"), "Quality for gpt-image-2 can be"),
        (GenerateRequest(prompt="a fox", model="dall-e-3", n=2), "1 to 1 images"),
        (GenerateRequest(prompt="a fox", model="dall-e-2", size="1536x1024"), "256x256, 512x512, 1024x1024"),
        (GenerateRequest(prompt="a fox", model="dall-e-2", quality="high"), "no quality option"),
    ],
)
async def test_invalid_requests_are_refused_before_calling_the_provider(
    service: ImageService, provider: FakeImages, request_: GenerateRequest, fragment: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(request_)
    assert fragment in caught.value.user_message
    assert provider.calls == []


async def test_unknown_model_lists_the_known_ones(service: ImageService, provider: FakeImages) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        await service.generate(GenerateRequest(prompt="a fox", model="dall-e-9"))
    assert "gpt-image-2" in caught.value.user_message
    assert provider.calls == []


async def test_retired_model_points_to_its_replacement(provider: FakeImages) -> None:
    service = make_service(provider, today=dt.date(2026, 12, 1))
    with pytest.raises(ModelUnavailableError) as caught:
        await service.generate(GenerateRequest(prompt="a fox", model="gpt-image-1-mini"))
    assert "retired on 2026-12-01" in caught.value.user_message
    assert "gpt-image-2.6-flare" in caught.value.user_message
    assert provider.calls == []


async def test_model_is_always_sent_explicitly_and_aliases_resolve(service: ImageService, provider: FakeImages) -> None:
    await service.generate(GenerateRequest(prompt="a fox"))
    await service.generate(GenerateRequest(prompt="a fox", model="fast"))
    assert [call.model for call in provider.calls] == ["gpt-image-2", "gpt-image-2.6-flare"]


async def test_generate_normalises_options(service: ImageService, provider: FakeImages) -> None:
    await service.generate(GenerateRequest(prompt="  a   fox \n in snow ", n=2, size=" 1536X1024 ", quality="HIGH"))
    call = provider.calls[0]
    assert isinstance(call, ProviderGenerate)
    assert (call.prompt, call.n, call.size, call.quality) == ("a fox in snow", 2, "1536x1024", "high")
    assert call.extra == {}


async def test_response_format_is_sent_only_where_the_model_row_says(
    service: ImageService, provider: FakeImages
) -> None:
    await service.generate(GenerateRequest(prompt="a fox", model="dall-e-2", size="512x512"))
    assert provider.calls[0].extra == {"response_format": "b64_json"}


# --- results -----------------------------------------------------------------------------------------------


async def test_result_carries_files_alt_text_and_cost(service: ImageService) -> None:
    result = await service.generate(GenerateRequest(prompt="RESTfull API security", n=2))
    assert [image.filename for image in result.images] == ["restfull_api_security-1.png", "restfull_api_security-2.png"]
    assert result.images[0].alt_text == "AI-generated image 1 of 2: RESTfull API security"
    assert result.images[0].mime_type == "image/png"
    assert (result.images[0].width, result.images[0].height) == (32, 32)
    # 50 text tokens at $5/M + 1056 image output tokens at $30/M
    assert result.cost_usd == pytest.approx((50 * 5 + 1056 * 30) / 1_000_000)
    assert result.notice is None


async def test_garbage_from_the_provider_is_a_provider_error(service: ImageService, provider: FakeImages) -> None:
    provider.answer = b"<html>502 Bad Gateway</html>"
    with pytest.raises(ProviderResponseError):
        await service.generate(GenerateRequest(prompt="a fox"))


async def test_unexpected_exception_becomes_a_generic_apology_with_ref(
    service: ImageService, provider: FakeImages, caplog: pytest.LogCaptureFixture
) -> None:
    provider.fail_with = RuntimeError("internal detail with sk-proj-LEAKEDKEY123")
    with caplog.at_level(logging.ERROR), pytest.raises(UnexpectedError) as caught:
        await service.generate(GenerateRequest(prompt="a fox"))
    error = caught.value
    assert "internal detail" not in error.user_message
    assert error.ref in caplog.text
    assert "LEAKEDKEY123" not in error.detail


async def test_progress_reports_running_then_done(service: ImageService) -> None:
    progress = Recorder()
    await service.generate(GenerateRequest(prompt="a fox"), progress)
    assert [u.status for u in progress.updates] == [JobStatus.RUNNING, JobStatus.DONE]


async def test_progress_reports_the_place_in_line_while_queued(provider: FakeImages) -> None:
    service = make_service(provider)
    release = asyncio.Event()

    async def slow_generate(call: ProviderGenerate) -> ProviderImages:
        await release.wait()
        return ProviderImages((png(8, 8),))

    provider.generate = slow_generate  # type: ignore[method-assign]
    busy = [asyncio.create_task(service.generate(GenerateRequest(prompt="x", requester=f"u{i}"))) for i in range(2)]
    progress = Recorder()
    waiting = asyncio.create_task(service.generate(GenerateRequest(prompt="x", requester="me"), progress))
    for _ in range(20):
        await asyncio.sleep(0)
    assert progress.updates[0] == Progress(JobStatus.QUEUED, position=1, queue_length=1)
    release.set()
    await asyncio.gather(*busy, waiting)
    assert [u.status for u in progress.updates] == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE]


async def test_previews_are_reported_as_running_updates_before_done(provider: FakeImages) -> None:
    progress = Recorder()
    await make_service(provider, partial_images=2).generate(GenerateRequest(prompt="a fox"), progress)
    call = provider.calls[0]
    assert isinstance(call, ProviderGenerate) and call.partial_images == 2
    statuses = [(u.status, u.preview is not None) for u in progress.updates]
    assert statuses == [
        (JobStatus.RUNNING, False),
        (JobStatus.RUNNING, True),
        (JobStatus.RUNNING, True),
        (JobStatus.DONE, False),
    ]
    assert decode(progress.updates[1].preview or b"").format == "PNG"


async def test_an_edit_asks_for_previews_too(provider: FakeImages) -> None:
    progress = Recorder()
    request = EditRequest(images=(png(64, 64),), prompt="add a moon")
    await make_service(provider, partial_images=1).edit(request, progress)
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit) and call.partial_images == 1
    assert sum(u.preview is not None for u in progress.updates) == 1


@pytest.mark.parametrize(
    "request_",
    [
        GenerateRequest(prompt="a fox", n=2),  # several images: no previews
        GenerateRequest(prompt="a fox", model="dall-e-3"),  # the model cannot stream
    ],
)
async def test_no_partial_images_for_several_images_or_a_model_without_streaming(
    provider: FakeImages, request_: GenerateRequest
) -> None:
    progress = Recorder()
    await make_service(provider, partial_images=2).generate(request_, progress)
    call = provider.calls[0]
    assert isinstance(call, ProviderGenerate) and call.partial_images == 0
    assert all(u.preview is None for u in progress.updates)


async def test_progress_reports_failure_with_the_friendly_message(service: ImageService) -> None:
    progress = Recorder()
    with pytest.raises(ImageBotError) as caught:
        await service.generate(GenerateRequest(prompt=""), progress)
    last = progress.updates[-1]
    assert last.status is JobStatus.FAILED
    assert last.message == caught.value.friendly()


async def test_a_broken_progress_sink_does_not_break_the_job(service: ImageService) -> None:
    async def broken(update: Progress) -> None:
        raise RuntimeError("display gone")

    result = await service.generate(GenerateRequest(prompt="a fox"), broken)
    assert len(result.images) == 1


# --- edits and masks ----------------------------------------------------------------------------------------


async def test_edit_with_a_region_sends_a_mask_of_the_image_size(service: ImageService, provider: FakeImages) -> None:
    await service.edit(EditRequest(images=(jpeg(80, 60),), prompt="a dragon", region="top-half"))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit)
    assert call.mask is not None
    image, mask = decode(call.images[0]), decode(call.mask)
    assert image.format == "JPEG"  # gpt-image-2 accepts JPEG: a photo is not re-encoded as a big slow PNG
    assert mask.format == "PNG"
    assert mask.size == image.size == (80, 60)
    alpha = mask.getchannel("A")
    assert alpha.getpixel((40, 10)) == 0  # top half editable
    assert alpha.getpixel((40, 50)) == 255  # bottom half kept


async def test_edit_with_an_uploaded_mask(service: ImageService, provider: FakeImages) -> None:
    await service.edit(EditRequest(images=(png(80, 60),), prompt="snow", mask=half_white_mask(80, 60)))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit) and call.mask is not None
    alpha = decode(call.mask).getchannel("A")
    assert alpha.getpixel((10, 30)) == 0  # white = editable
    assert alpha.getpixel((70, 30)) == 255


async def test_edit_uses_the_image_transparency_as_mask(service: ImageService, provider: FakeImages) -> None:
    await service.edit(EditRequest(images=(png_with_hole(64, 48),), prompt="a window"))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit) and call.mask is not None
    alpha = decode(call.mask).getchannel("A")
    assert alpha.getpixel((5, 5)) == 0
    assert alpha.getpixel((60, 40)) == 255


async def test_edit_of_several_images(service: ImageService, provider: FakeImages) -> None:
    await service.edit(EditRequest(images=(png(), jpeg()), prompt="combine them"))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit)
    assert len(call.images) == 2
    assert call.mask is None


async def test_edit_refused_for_a_model_without_edits(service: ImageService, provider: FakeImages) -> None:
    with pytest.raises(InvalidRequestError, match="can't edit"):
        await service.edit(EditRequest(images=(png(),), prompt="x", model="dall-e-3"))
    assert provider.calls == []


async def test_bad_upload_is_refused_before_the_provider(service: ImageService, provider: FakeImages) -> None:
    with pytest.raises(InvalidImageError):
        await service.edit(EditRequest(images=(b"not an image at all",), prompt="x"))
    assert provider.calls == []


async def test_bad_region_is_refused_with_the_choices(service: ImageService, provider: FakeImages) -> None:
    with pytest.raises(InvalidImageError) as caught:
        await service.edit(EditRequest(images=(png(),), prompt="x", region="upper-third"))
    assert "top-half" in caught.value.user_message
    assert provider.calls == []


# --- variations ---------------------------------------------------------------------------------------------


async def test_vary_without_the_endpoint_is_an_edit_with_the_variation_prompt(
    service: ImageService, provider: FakeImages
) -> None:
    result = await service.vary(VaryRequest(image=jpeg(), n=3))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit)
    assert call.prompt.startswith("Create a variation of this image")
    assert call.n == 3 and call.mask is None
    assert result.images[0].filename == "variation-1.png"


async def test_vary_with_a_prompt_steers_the_edit(service: ImageService, provider: FakeImages) -> None:
    await service.vary(VaryRequest(image=jpeg(), prompt="in winter"))
    call = provider.calls[0]
    assert isinstance(call, ProviderEdit)
    assert call.prompt.endswith("in winter")


async def test_vary_uses_the_variations_endpoint_where_the_model_has_it(
    service: ImageService, provider: FakeImages
) -> None:
    await service.vary(VaryRequest(image=jpeg(300, 200), model="dall-e-2", size="512x512"))
    call = provider.calls[0]
    assert isinstance(call, ProviderVary)
    image = decode(call.image)
    assert image.format == "PNG" and image.size == (1024, 1024)  # square PNG, as DALL·E 2 required
    assert call.extra == {"response_format": "b64_json"}


# --- the event loop is never blocked by image work --------------------------------------------------------


async def test_image_work_never_runs_on_the_event_loop(service: ImageService, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot import imaging

    on_loop: list[str] = []
    for name in ("prepare_input", "mask_from_upload", "region_mask", "mask_from_alpha", "inspect_output"):
        original = getattr(imaging, name)

        def guarded(*args: object, __original=original, __name=name, **kwargs: object) -> object:
            try:
                asyncio.get_running_loop()
                on_loop.append(__name)
            except RuntimeError:
                pass
            return __original(*args, **kwargs)

        monkeypatch.setattr(imaging, name, guarded)
    await service.generate(GenerateRequest(prompt="a fox"))
    await service.edit(EditRequest(images=(jpeg(),), prompt="x", region="A1:B2"))
    await service.edit(EditRequest(images=(png_with_hole(),), prompt="x"))
    await service.edit(EditRequest(images=(png(),), prompt="x", mask=png(64, 48, (255, 255, 255))))
    await service.vary(VaryRequest(image=png()))
    assert on_loop == []


async def test_no_blocking_io_on_the_event_loop_during_a_whole_edit(service: ImageService) -> None:
    """blockbuster raises BlockingError for blocking calls (file I/O, sleep, sockets...) made on the loop."""
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["bot"]):
        result = await service.edit(EditRequest(images=(jpeg(640, 480),), prompt="a moon", region="top-half"))
    assert len(result.images) == 1
