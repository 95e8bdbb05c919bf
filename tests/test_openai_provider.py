"""OpenAIImages against the fake Images API on 127.0.0.1: the wire format, retries and every error class."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from bot import errors
from bot.models import ProviderEdit, ProviderGenerate, ProviderVary
from bot.providers.openai import OpenAIImages, SSEEvent, parse_sse_lines
from bot.settings import OpenAISettings
from tests.fakes.openai_server import (
    BILLING_HARD_LIMIT,
    DEFAULT_KEY,
    INSUFFICIENT_QUOTA,
    MISSING_IMAGE,
    NO_API_KEY,
    FakeOpenAI,
    Reply,
    bad_gateway_html,
    malformed_json,
    moderation_blocked,
    not_png,
    org_not_verified,
    rate_limited,
    server_error,
    stream_cut,
    stream_error,
    truncated,
    wrong_key,
)
from tests.images import decode, png


class Sleeps:
    """Injected instead of asyncio.sleep: records the backoff without waiting for it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_provider(
    http: aiohttp.ClientSession,
    fake: FakeOpenAI,
    *,
    key: str = DEFAULT_KEY,
    sleeps: Sleeps | None = None,
    throttles: list[float] | None = None,
    **settings: float,
) -> OpenAIImages:
    return OpenAIImages(
        http,
        base_url=fake.base_url,
        api_key=key,
        org_id="org-TESTORG123456",
        project_id="proj_TESTPROJECT1",
        settings=OpenAISettings(**settings),  # type: ignore[arg-type]
        sleep=sleeps or Sleeps(),
        on_throttle=throttles.append if throttles is not None else None,
    )


GENERATE = ProviderGenerate(model="gpt-image-2", prompt="a lighthouse at dusk", n=2, size="1536x1024", quality="low")


# --- the wire format ---------------------------------------------------------------------------------------


async def test_generate_posts_json_with_model_and_auth_headers(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    result = await make_provider(http, fake_openai).generate(GENERATE)
    request = fake_openai.last
    assert request.path == "/v1/images/generations"
    assert request.json == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "1536x1024",
        "quality": "low",
    }
    assert request.headers["Authorization"] == f"Bearer {DEFAULT_KEY}"
    assert request.headers["OpenAI-Organization"] == "org-TESTORG123456"
    assert request.headers["OpenAI-Project"] == "proj_TESTPROJECT1"
    assert len(result.images) == 2
    assert decode(result.images[0]).size == (1536, 1024)
    assert result.usage is not None and result.usage.output_tokens == 1056


async def test_edit_sends_one_image_as_image_and_a_mask(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    image, mask = png(64, 64), png(64, 64, (0, 0, 0, 0), "RGBA")
    call = ProviderEdit("gpt-image-2", "add a moon", (image,), mask, 1, None, None)
    await make_provider(http, fake_openai).edit(call)
    request = fake_openai.last
    assert request.path == "/v1/images/edits"
    assert [f.data for f in request.files["image"]] == [image]
    assert request.files["mask"][0].data == mask
    assert request.form["model"] == ["gpt-image-2"]
    assert request.form["prompt"] == ["add a moon"]
    assert "size" not in request.form  # not sent when not chosen


async def test_edit_sends_several_images_as_repeated_image_brackets(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    images = (png(32, 32, (255, 0, 0)), png(32, 32, (0, 255, 0)))
    await make_provider(http, fake_openai).edit(ProviderEdit("gpt-image-2", "mix", images, None, 1, None, None))
    request = fake_openai.last
    assert [f.data for f in request.files["image[]"]] == list(images)
    assert "image" not in request.files


async def test_vary_posts_to_the_variations_endpoint(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.known_models.add("dall-e-2")
    fake_openai.openai_api = False  # a compatible server that still emulates DALL·E 2 (OpenAI retired it)
    call = ProviderVary("dall-e-2", png(64, 64), 2, "512x512", {"response_format": "b64_json"})
    result = await make_provider(http, fake_openai).vary(call)
    request = fake_openai.last
    assert request.path == "/v1/images/variations"
    assert request.form["response_format"] == ["b64_json"]
    assert len(result.images) == 2


async def test_url_answers_are_fetched_at_once(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(response_mode="url") as fake:
        result = await make_provider(http, fake).generate(GENERATE)
        assert decode(result.images[0]).format == "PNG"
        assert any(r.path.startswith("/files/") for r in fake.requests)


# --- retries -------------------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_that_long(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(rate_limited(retry_after=1))
    sleeps, throttles = Sleeps(), []
    result = await make_provider(http, fake_openai, sleeps=sleeps, throttles=throttles).generate(GENERATE)
    assert len(result.images) == 2
    assert len(fake_openai.image_requests) == 2
    assert sleeps.delays == [1.0]
    assert throttles == [1.0]  # the whole process slows down, not just this call


async def test_retry_after_ms_wins(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(rate_limited(retry_after=5, retry_after_ms=20))
    sleeps = Sleeps()
    await make_provider(http, fake_openai, sleeps=sleeps).generate(GENERATE)
    assert sleeps.delays == [0.02]


async def test_5xx_then_success_uses_backoff(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(server_error(500), bad_gateway_html())
    sleeps = Sleeps()
    result = await make_provider(http, fake_openai, sleeps=sleeps).generate(GENERATE)
    assert len(result.images) == 2
    assert len(sleeps.delays) == 2
    assert 0.375 <= sleeps.delays[0] <= 0.5 and 0.75 <= sleeps.delays[1] <= 1.0


async def test_x_should_retry_false_stops_retries(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        Reply(503, {"error": {"message": "overloaded", "type": "server_error"}}, {"x-should-retry": "false"})
    )
    with pytest.raises(errors.ProviderOutageError):
        await make_provider(http, fake_openai).generate(GENERATE)
    assert len(fake_openai.image_requests) == 1


async def test_persistent_outage_gives_up_after_max_retries(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(*(server_error(503) for _ in range(5)))
    with pytest.raises(errors.ProviderOutageError) as caught:
        await make_provider(http, fake_openai, max_retries=2).generate(GENERATE)
    assert len(fake_openai.image_requests) == 3
    assert "having trouble" in caught.value.user_message


async def test_rate_limit_that_persists_becomes_rate_limited(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(*(rate_limited(retry_after=2) for _ in range(3)))
    with pytest.raises(errors.RateLimitedError) as caught:
        await make_provider(http, fake_openai, max_retries=2).generate(GENERATE)
    assert "2 seconds" in caught.value.user_message


async def test_retry_after_beyond_the_cap_is_not_waited_for(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(rate_limited(retry_after=3600))
    sleeps = Sleeps()
    with pytest.raises(errors.RateLimitedError):
        await make_provider(http, fake_openai, sleeps=sleeps, retry_after_cap=60).generate(GENERATE)
    assert sleeps.delays == []
    assert len(fake_openai.image_requests) == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (INSUFFICIENT_QUOTA, errors.QuotaExhaustedError),
        (BILLING_HARD_LIMIT, errors.QuotaExhaustedError),
        (moderation_blocked(), errors.SafetyRefusalError),
        (NO_API_KEY, errors.AuthenticationError),
        (wrong_key(), errors.AuthenticationError),
        (org_not_verified(), errors.PermissionDeniedError),
        (MISSING_IMAGE, errors.InvalidImageError),
        (not_png(), errors.InvalidImageError),
    ],
)
async def test_terminal_errors_are_not_retried(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI, reply: Reply, expected: type[errors.ImageBotError]
) -> None:
    fake_openai.script(reply)
    with pytest.raises(expected):
        await make_provider(http, fake_openai).generate(GENERATE)
    assert len(fake_openai.image_requests) == 1


async def test_a_timeout_becomes_a_friendly_timeout(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Reply(200, success=True, delay=2.0))
    with pytest.raises(errors.ProviderTimeoutError) as caught:
        await make_provider(http, fake_openai, max_retries=0, request_timeout=0.2).generate(GENERATE)
    assert "took too long" in caught.value.user_message


async def test_malformed_json_is_retried_then_a_response_error(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(malformed_json(), malformed_json(), malformed_json())
    with pytest.raises(errors.ProviderResponseError):
        await make_provider(http, fake_openai, max_retries=2).generate(GENERATE)
    assert len(fake_openai.image_requests) == 3  # the first call and two retries, then the user is told


async def test_a_transfer_cut_short_is_retried(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(truncated(at=4096))
    result = await make_provider(http, fake_openai).generate(GENERATE)
    assert len(fake_openai.image_requests) == 2
    assert [decode(image).size for image in result.images] == [(1536, 1024)] * 2


async def test_a_complete_answer_with_cut_base64_is_retried(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    cut_png = base64.b64encode(png(64, 64)[:-40]).decode()  # valid base64 of a PNG cut before its end
    fake_openai.script(
        Reply(200, {"created": 1, "data": [{"b64_json": "iVBORw0KGgoAAAANSUhEU"}]}),
        Reply(200, {"created": 1, "data": [{"b64_json": cut_png}]}),
    )
    result = await make_provider(http, fake_openai).generate(GENERATE)
    assert len(fake_openai.image_requests) == 3
    assert len(result.images) == 2


async def test_unreachable_server_is_an_outage(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake:
        base = fake.base_url
    provider = OpenAIImages(
        http, base_url=base, api_key=DEFAULT_KEY, settings=OpenAISettings(max_retries=1), sleep=Sleeps()
    )
    with pytest.raises(errors.ProviderOutageError):
        await provider.generate(GENERATE)


async def test_exhausted_rate_limit_headers_slow_everyone(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        Reply(200, success=True, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"})
    )
    throttles: list[float] = []
    await make_provider(http, fake_openai, throttles=throttles).generate(GENERATE)
    assert throttles == [6.0]


async def test_the_wrong_key_never_reaches_the_message_or_detail(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    bad_key = "sk-proj-WRONGwrongWRONG1234"
    with pytest.raises(errors.AuthenticationError) as caught:
        await make_provider(http, fake_openai, key=bad_key).generate(GENERATE)
    error = caught.value
    for text in (error.user_message, error.detail, error.log_line(), str(error)):
        assert "1234" not in text and "WRONG" not in text


# --- check -------------------------------------------------------------------------------------------------


async def test_check_knows_a_known_model(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    health = await make_provider(http, fake_openai).check("gpt-image-2")
    assert health.reachable and health.model_known


async def test_check_reports_an_unknown_model(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    health = await make_provider(http, fake_openai).check("dall-e-3")
    assert health.reachable and health.model_known is False


async def test_check_with_a_bad_key_raises_authentication(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(errors.AuthenticationError):
        await make_provider(http, fake_openai, key="sk-nope-000000").check("gpt-image-2")


# --- streaming: partial previews -------------------------------------------------------------------------------

STREAMED = ProviderGenerate(model="gpt-image-2", prompt="a fox", n=1, size="1024x1024", quality="low", partial_images=2)


class Previews:
    """An ``on_partial`` that keeps what it is given (and can be told to fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.images: list[bytes] = []
        self.fail = fail

    async def __call__(self, image: bytes) -> None:
        self.images.append(image)
        if self.fail:
            raise RuntimeError("the chat platform is down")


@pytest.mark.parametrize(
    ("lines", "events"),
    [
        (["event: a", "data: {}", ""], [SSEEvent("a", "{}")]),
        (['data: {"type": "x"}', "", "data: [DONE]", ""], [SSEEvent(None, '{"type": "x"}'), SSEEvent(None, "[DONE]")]),
        ([": keep-alive", "", "event: b\r\n", "data:1\n", "data: 2", "\r\n"], [SSEEvent("b", "1\n2")]),
        (["event: lonely", ""], []),  # no data: nothing to dispatch
        (["event: c", "data: cut"], [SSEEvent("c", "cut")]),  # the stream ended without the blank line
        (["id: 7", "retry: 10", "data: x", ""], [SSEEvent(None, "x")]),
    ],
)
def test_parse_sse_lines(lines: list[str], events: list[SSEEvent]) -> None:
    assert parse_sse_lines(lines) == events


async def test_streaming_generate_asks_for_a_stream_with_partial_images(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    await make_provider(http, fake_openai).generate(STREAMED, on_partial=Previews())
    assert fake_openai.last.json["stream"] is True
    assert fake_openai.last.json["partial_images"] == 2


async def test_no_stream_is_asked_for_without_partial_images(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    await make_provider(http, fake_openai).generate(GENERATE, on_partial=Previews())
    assert "stream" not in fake_openai.last.json and "partial_images" not in fake_openai.last.json


async def test_streamed_previews_reach_on_partial_before_the_call_returns(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    previews = Previews()
    result = await make_provider(http, fake_openai).generate(STREAMED, on_partial=previews)
    assert len(previews.images) == 2
    assert all(decode(image).format == "PNG" for image in previews.images)
    assert all(image not in result.images for image in previews.images)


async def test_a_streamed_result_has_the_final_image_and_usage(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    result = await make_provider(http, fake_openai).generate(STREAMED, on_partial=Previews())
    assert len(result.images) == 1
    assert decode(result.images[0]).size == (1024, 1024)
    assert result.usage is not None and result.usage.output_tokens == 1056 and result.usage.total_tokens == 1106


async def test_a_streaming_edit_sends_stream_and_partial_images_as_form_fields(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    call = ProviderEdit("gpt-image-2", "add a moon", (png(64, 64),), None, 1, None, None, partial_images=1)
    previews = Previews()
    result = await make_provider(http, fake_openai).edit(call, on_partial=previews)
    assert fake_openai.last.form["stream"] == ["true"]
    assert fake_openai.last.form["partial_images"] == ["1"]
    assert len(previews.images) == 1 and len(result.images) == 1


async def test_a_stream_cut_before_completed_is_a_response_error(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(stream_cut())
    previews = Previews()
    with pytest.raises(errors.ProviderResponseError):
        await make_provider(http, fake_openai).generate(STREAMED, on_partial=previews)
    assert len(previews.images) == 1
    assert len(fake_openai.image_requests) == 1  # previews were shown: no second, different picture


async def test_a_failing_preview_handler_does_not_break_the_job(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    previews = Previews(fail=True)
    result = await make_provider(http, fake_openai).generate(STREAMED, on_partial=previews)
    assert len(previews.images) == 2
    assert len(result.images) == 1


async def test_an_error_event_before_any_preview_is_retried(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    sleeps = Sleeps()
    fake_openai.script(stream_error("server_error"))
    result = await make_provider(http, fake_openai, sleeps=sleeps).generate(STREAMED, on_partial=Previews())
    assert len(result.images) == 1
    assert len(fake_openai.image_requests) == 2 and len(sleeps.delays) == 1


async def test_an_error_event_is_translated_like_an_error_answer(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(stream_error("moderation_blocked", "Your request was rejected by the safety system."))
    with pytest.raises(errors.SafetyRefusalError):
        await make_provider(http, fake_openai).generate(STREAMED, on_partial=Previews())
    assert len(fake_openai.image_requests) == 1


async def test_an_error_status_before_the_stream_is_retried_as_usual(
    http: aiohttp.ClientSession, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(rate_limited(retry_after=1))
    previews = Previews()
    result = await make_provider(http, fake_openai).generate(STREAMED, on_partial=previews)
    assert len(result.images) == 1 and len(previews.images) == 2
    assert len(fake_openai.image_requests) == 2


async def test_reading_a_stream_does_not_block_the_loop(http: aiohttp.ClientSession, fake_openai: FakeOpenAI) -> None:
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["bot"]):
        result = await make_provider(http, fake_openai).generate(STREAMED, on_partial=Previews())
    assert len(result.images) == 1
