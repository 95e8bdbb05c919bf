"""What users read about a failed request: flagged categories from a known list, right singular and plural."""

from __future__ import annotations

import pytest

from bot.errors import RateLimitedError, SafetyRefusalError
from bot.providers.openai import translate_error


def _blocked(categories: object, message: str = "Your request was rejected by the safety system.") -> dict[str, object]:
    error = {"message": message, "type": "image_generation_user_error", "code": "moderation_blocked"}
    return {"error": {**error, "moderation_details": {"moderation_stage": "input", "categories": categories}}}


@pytest.mark.parametrize(
    ("categories", "shown"),
    [
        (["sexual", "violence/graphic"], ("sexual", "violence/graphic")),
        (
            ["self_harm", "Self-Harm/Intent", "harassment threatening"],
            ("self-harm", "self-harm/intent", "harassment/threatening"),
        ),
        (["Authorization: Bearer sk-proj-abc", "sexual"], ("sexual", "other")),
        (["x1", "x2", 3, None, {"a": 1}], ("other",)),
        (
            ["hate", "hate", "illicit/violent", "sexual/minors", "violence", "self-harm/instructions", "sexual"],
            ("hate", "illicit/violent", "sexual/minors", "violence", "self-harm/instructions"),
        ),
        (
            ["x", "hate", "sexual", "violence", "illicit", "self-harm"],
            ("hate", "sexual", "violence", "illicit", "other"),
        ),
    ],
)
def test_flagged_categories_come_from_the_known_list(categories: list[object], shown: tuple[str, ...]) -> None:
    """Known names in any spelling; anything else is "other"; deduplicated; at most 5 (with "other" kept)."""
    error = translate_error(400, _blocked(categories), model="gpt-image-2")
    assert isinstance(error, SafetyRefusalError)
    assert error.categories == shown
    assert "sk-proj" not in error.friendly()


def test_categories_listed_in_the_message_are_mapped_too() -> None:
    message = "Rejected. safety_violations=[violence, xoxb-123-456-SECRETSECRET, hate]."
    error = translate_error(400, _blocked(None, message), model="gpt-image-2")
    assert isinstance(error, SafetyRefusalError)
    assert error.categories == ("violence", "hate", "other")
    assert "(flagged: violence, hate, other)" in error.user_message


def test_an_unknown_stage_is_not_shown() -> None:
    body = _blocked(["sexual"])
    body["error"]["moderation_details"]["moderation_stage"] = ["not", "hashable"]  # type: ignore[index]
    error = translate_error(400, body, model="gpt-image-2")
    assert isinstance(error, SafetyRefusalError) and error.stage is None
    assert "that request" in error.user_message


@pytest.mark.parametrize(
    ("retry_after", "when"),
    [
        (None, "in a minute"),
        (0.2, "in about 1 second"),
        (1.0, "in about 1 second"),
        (2.4, "in about 2 seconds"),
        (59.4, "in about 59 seconds"),
        (59.6, "in about 1 minute"),
        (90.0, "in about 2 minutes"),
        (3600.0, "later"),
        (float("inf"), "later"),
        (float("nan"), "in a minute"),
    ],
)
def test_rate_limit_wording(retry_after: float | None, when: str) -> None:
    assert RateLimitedError(retry_after=retry_after).user_message.endswith(f"Please try again {when}.")


def test_a_megabyte_upstream_message_is_capped_in_the_detail_and_log_line() -> None:
    body = {"error": {"message": "A" * 1_000_000, "type": "server_error", "code": "x" * 10_000, "param": None}}
    error = translate_error(500, body, model="gpt-image-2")
    assert len(error.detail) < 2300
    assert len(error.log_line()) < 2400
    assert "more characters" in error.detail
