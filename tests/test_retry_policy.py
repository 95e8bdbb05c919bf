"""The retry decision, the Retry-After parser and error translation are pure functions, tested as tables."""

from __future__ import annotations

import email.utils

import pytest

from bot import errors
from bot.providers.openai import (
    backoff_delay,
    parse_reset_duration,
    parse_retry_after,
    should_retry,
    translate_error,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # a broken ms value falls back
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "tomorrow"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize(("offset", "expected"), [(30, 30.0), (-30, 0.0)])  # a date in the past means now
def test_parse_retry_after_http_date(offset: float, expected: float) -> None:
    headers = {"retry-after": email.utils.formatdate(NOW + offset, usegmt=True)}
    assert parse_retry_after(headers, now=NOW) == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("0.5s", 0.5),
        ("", None),
        (None, None),
        ("x", None),
    ],
)
def test_parse_reset_duration(value: str | None, expected: float | None) -> None:
    assert parse_reset_duration(value) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        (None, None, True),  # connection error or timeout
        (408, None, True),
        (409, None, True),
        (429, "rate_limit_exceeded", True),
        (429, "insufficient_quota", False),
        (400, "billing_hard_limit_reached", False),
        (400, "moderation_blocked", False),
        (400, "content_policy_violation", False),
        (401, "invalid_api_key", False),
        (404, "model_not_found", False),
        (400, None, False),
        (401, None, False),
        (403, None, False),
        (500, None, True),
        (502, None, True),
        (503, "server_error", True),
    ],
)
def test_should_retry(status: int | None, code: str | None, retry: bool) -> None:
    assert should_retry(status, code) is retry


@pytest.mark.parametrize(
    ("status", "code", "header", "retry"),
    [
        (400, None, "true", True),  # the server's x-should-retry wins over the status...
        (500, None, "false", False),
        (503, None, "FALSE ", False),
        (500, None, "maybe", True),  # ...when it says true or false
        (429, "insufficient_quota", "true", False),  # but quota, safety and key errors are never retried
        (400, "moderation_blocked", "true", False),
    ],
)
def test_x_should_retry_header(status: int, code: str | None, header: str, retry: bool) -> None:
    assert should_retry(status, code, header) is retry


@pytest.mark.parametrize(
    ("attempt", "retry_after", "jitter", "expected"),
    [
        (0, None, 0.0, 0.5),
        (1, None, 0.0, 1.0),
        (2, None, 0.0, 2.0),
        (10, None, 0.0, 8.0),  # capped
        (0, None, 0.999, 0.5 * (1 - 0.25 * 0.999)),
        (3, 12.0, 0.5, 12.0),  # the server's word wins
    ],
)
def test_backoff_delay(attempt: int, retry_after: float | None, jitter: float, expected: float) -> None:
    assert backoff_delay(attempt, retry_after, jitter=jitter) == pytest.approx(expected)


def _body(
    message: str,
    *,
    code: str | None = None,
    etype: str = "invalid_request_error",
    param: str | None = None,
    **extra: object,
) -> dict[str, object]:
    return {"error": {"message": message, "type": etype, "param": param, "code": code, **extra}}


SEED_WRONG_KEY = _body(
    "Incorrect API key provided: sk-***********************. You can find your API key at https://beta.openai.com.",
    code="invalid_api_key",
)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, _body("'image' is a required property"), errors.InvalidImageError),
        (401, _body("Uploaded image must be a PNG and less than 4 MB."), errors.AuthenticationError),
        (400, _body("Uploaded image must be a PNG and less than 4 MB."), errors.InvalidImageError),
        (401, SEED_WRONG_KEY, errors.AuthenticationError),
        (
            400,
            _body("Billing hard limit has been reached", code="billing_hard_limit_reached"),
            errors.QuotaExhaustedError,
        ),
        (
            429,
            _body("You exceeded your current quota", code="insufficient_quota", etype="insufficient_quota"),
            errors.QuotaExhaustedError,
        ),
        (429, _body("Rate limit reached", code="rate_limit_exceeded", etype="requests"), errors.RateLimitedError),
        (
            403,
            _body("Your organization must be verified to use the model `gpt-image-2`."),
            errors.PermissionDeniedError,
        ),
        (404, _body("The model 'x' does not exist", code="model_not_found"), errors.ModelUnavailableError),
        (400, _body("The model `dall-e-3` has been deprecated", code="model_not_found"), errors.ModelUnavailableError),
        (500, _body("The server had an error", etype="server_error"), errors.ProviderOutageError),
        (502, None, errors.ProviderOutageError),
        (504, None, errors.ProviderTimeoutError),
        (400, _body("Invalid size '1000x1000'", param="size"), errors.InvalidRequestError),
        (
            400,
            _body("Your request was rejected as a result of our safety system.", code="content_policy_violation"),
            errors.SafetyRefusalError,
        ),
    ],
)
def test_translate_error_classes(status: int, body: object, expected: type[errors.ImageBotError]) -> None:
    error = translate_error(status, body, model="gpt-image-2")
    assert type(error) is expected


def test_moderation_blocked_names_stage_and_categories() -> None:
    body = _body(
        "Your request was rejected by the safety system. If you believe this is an error, contact us at "
        "help.openai.com and include the request ID req_123. safety_violations=[sexual].",
        code="moderation_blocked",
        etype="image_generation_user_error",
        moderation_details={"moderation_stage": "output", "categories": ["sexual", "violence"]},
    )
    error = translate_error(400, body, model="gpt-image-2")
    assert isinstance(error, errors.SafetyRefusalError)
    assert "generated picture" in error.user_message
    assert "sexual, violence" in error.user_message
    assert "rephras" in error.user_message


def test_moderation_categories_fall_back_to_the_message() -> None:
    body = _body("Rejected by the safety system. safety_violations=[violence].", code="moderation_blocked")
    error = translate_error(400, body, model="gpt-image-2")
    assert isinstance(error, errors.SafetyRefusalError)
    assert error.categories == ("violence",)


def test_user_messages_never_hold_the_raw_provider_text_or_key() -> None:
    error = translate_error(401, SEED_WRONG_KEY, model="gpt-image-2")
    assert "sk-" not in error.user_message
    assert "Incorrect API key provided" not in error.user_message
    assert "sk-***" not in error.detail  # the detail is redacted too
    assert "OPENAI_API_KEY" in error.user_message


def test_rate_limited_message_says_when() -> None:
    error = translate_error(429, _body("slow down", code="rate_limit_exceeded"), model="m", retry_after=12)
    assert "12 seconds" in error.user_message
