"""Retired models are refused before any call on OpenAI's API, with the replacement named; a compatible
server that still serves one can say so in the operator's override file.

Driven through the real ImageService and OpenAIImages against FakeOpenAI on 127.0.0.1. The fake stands for
OpenAI itself (``openai_api=True``): it counts a retired model it receives as a violation, and every request
it receives is checked against OpenAI's published schemas.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp
import pytest

from bot.catalog import Catalog, is_openai_api
from bot.errors import ModelUnavailableError
from bot.limits import Admission
from bot.models import EditRequest, GenerateRequest, VaryRequest
from bot.providers.openai import OpenAIImages
from bot.service import ImageService
from bot.settings import Settings, load_settings
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI
from tests.images import png

TODAY = dt.date(2026, 11, 30)
OPENAI = "https://api.openai.com/v1"
RETIRED = {"dall-e-2": "gpt-image-2", "dall-e-3": "gpt-image-2", "gpt-image-1": "gpt-image-2.5-flare"}
LAST_DAY = ("gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest")  # shut down 2026-12-01


def service_for(
    settings: Settings, http: aiohttp.ClientSession, fake: FakeOpenAI, today: dt.date = TODAY
) -> ImageService:
    """The service as bootstrap builds it, with its HTTP calls going to the fake wherever the settings point."""
    provider = OpenAIImages(http, base_url=fake.base_url, api_key=DEFAULT_KEY, settings=settings.openai)
    return ImageService(
        provider=provider,
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=2, images_per_minute=0, per_user_jobs=5, max_queue=10),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
        today=lambda: today,
    )


def requests_for(model: str, image: bytes) -> list[GenerateRequest | EditRequest | VaryRequest]:
    return [
        GenerateRequest(prompt="a fox", model=model),
        EditRequest(images=(image,), prompt="add a hat", model=model),
        VaryRequest(image=image, model=model),
    ]


async def run(service: ImageService, request: GenerateRequest | EditRequest | VaryRequest) -> object:
    if isinstance(request, GenerateRequest):
        return await service.generate(request)
    if isinstance(request, EditRequest):
        return await service.edit(request)
    return await service.vary(request)


@pytest.mark.parametrize("model", sorted(RETIRED))
async def test_a_retired_model_is_refused_before_any_call_naming_its_replacement(
    model: str, http: aiohttp.ClientSession
) -> None:
    async with FakeOpenAI() as fake:
        fake.known_models.add(model)  # even if the server answered, nothing may reach it
        service = service_for(load_settings(), http, fake)
        for request in requests_for(model, png(256, 256)):
            with pytest.raises(ModelUnavailableError) as caught:
                await run(service, request)
            message = caught.value.user_message
            assert f"'{model}' was retired on" in message
            assert f"use {RETIRED[model]} instead" in message
        assert fake.requests == []


async def test_vary_with_dall_e_2_never_reaches_the_variations_endpoint(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake:
        fake.known_models.add("dall-e-2")
        service = service_for(load_settings(), http, fake)
        with pytest.raises(ModelUnavailableError, match="gpt-image-2"):
            await service.vary(VaryRequest(image=png(256, 256), model="dall-e-2", size="512x512"))
        assert not [r for r in fake.requests if r.path.endswith("/images/variations")]
        assert fake.requests == []


@pytest.mark.parametrize("model", LAST_DAY)
async def test_models_retiring_tomorrow_still_work_today_and_stop_tomorrow(
    model: str, http: aiohttp.ClientSession
) -> None:
    async with FakeOpenAI() as fake:
        result = await service_for(load_settings(), http, fake).generate(GenerateRequest(prompt="a fox", model=model))
        assert result.model == model
        assert len(result.images) == 1
        assert fake.last.json["model"] == model

        tomorrow = service_for(load_settings(), http, fake, today=dt.date(2026, 12, 1))
        fake.reset()
        with pytest.raises(ModelUnavailableError, match="retired on 2026-12-01"):
            await tomorrow.generate(GenerateRequest(prompt="a fox", model=model))
        assert fake.requests == []


async def test_a_retired_default_model_tells_the_operator_what_to_switch_to(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEBOT_DEFAULT_MODEL", "dall-e-3")
    async with FakeOpenAI() as fake:
        with pytest.raises(ModelUnavailableError) as caught:
            await service_for(load_settings(), http, fake).generate(GenerateRequest(prompt="a fox"))
        assert "IMAGEBOT_DEFAULT_MODEL" in caught.value.user_message
        assert "gpt-image-2" in caught.value.user_message
        assert fake.requests == []


def override(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "override.toml"
    path.write_text(text)
    return path


SERVES_DALL_E_2 = '[models."dall-e-2"]\nserved_by_compatible_server = true\n'


async def test_a_compatible_server_that_says_it_serves_dall_e_2_gets_variations(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with FakeOpenAI(openai_api=False) as fake:
        fake.known_models.add("dall-e-2")
        settings = load_settings(override(tmp_path, SERVES_DALL_E_2), openai_base_url=fake.base_url)
        assert settings.catalog().openai_api is False
        result = await service_for(settings, http, fake).vary(
            VaryRequest(image=png(256, 256), model="dall-e-2", n=2, size="512x512")
        )
        assert len(result.images) == 2
        (request,) = fake.image_requests
        assert request.path == "/v1/images/variations"
        assert request.param("model") == "dall-e-2"


async def test_a_compatible_server_without_that_row_still_refuses_the_retired_model(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(openai_api=False) as fake:
        fake.known_models.add("dall-e-2")
        service = service_for(load_settings(openai_base_url=fake.base_url), http, fake)
        with pytest.raises(ModelUnavailableError, match="use gpt-image-2 instead"):
            await service.generate(GenerateRequest(prompt="a fox", model="dall-e-2"))
        assert fake.requests == []


async def test_the_compatible_server_row_never_applies_to_openai_itself(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = load_settings(override(tmp_path, SERVES_DALL_E_2), openai_base_url=OPENAI)
    assert settings.models["dall-e-2"].served_by_compatible_server is True
    assert settings.catalog().openai_api is True
    async with FakeOpenAI() as fake:
        fake.known_models.add("dall-e-2")
        with pytest.raises(ModelUnavailableError, match="use gpt-image-2 instead"):
            await service_for(settings, http, fake).vary(VaryRequest(image=png(256, 256), model="dall-e-2"))
        assert fake.requests == []


def test_every_packaged_row_past_its_date_names_a_live_replacement() -> None:
    settings = load_settings()
    catalog = settings.catalog()
    retired = [name for name, spec in settings.models.items() if catalog.retired(spec, today=TODAY)]
    assert sorted(retired) == sorted(RETIRED)
    for name in retired:
        replacement = settings.models[name].replacement
        assert replacement is not None
        assert not catalog.retired(settings.models[replacement], today=dt.date(2027, 1, 1))


@pytest.mark.parametrize(
    ("url", "openai"),
    [
        ("https://api.openai.com/v1", True),
        ("https://API.OpenAI.com./v1/", True),
        ("https://us.api.openai.com/v1", True),
        ("http://127.0.0.1:8080/v1", False),
        ("https://my-resource.openai.azure.com/openai", False),
        ("https://api.openai.com.example.net/v1", False),
        ("https://notopenai.com/v1", False),
        ("https://user:pass@api.openai.com/v1", True),
    ],
)
def test_openai_base_urls_are_told_from_compatible_servers(url: str, openai: bool) -> None:
    assert is_openai_api(url) is openai


def test_catalog_defaults_to_the_strict_openai_rule() -> None:
    settings = load_settings()
    catalog = Catalog(settings.models, settings.aliases, settings.default_model)
    assert catalog.openai_api is True
    with pytest.raises(ModelUnavailableError):
        catalog.resolve("dall-e-3", today=TODAY)
