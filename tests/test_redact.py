"""The redactor scrubs every secret shape from user text and from log records."""

from __future__ import annotations

import logging

import pytest

from bot.redact import MASK, RedactingFilter, redact, register_secrets

SECRETS_IN_TEXT = [
    ("Incorrect API key provided: sk-proj-abcDEF1234567890xyz.", "sk-proj-abcDEF1234567890xyz"),
    ("Incorrect API key provided: sk-***********************. You can find", "sk-***********************"),
    ("key sk-proj-***abcd was rejected", "sk-proj-***abcd"),
    ("legacy sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefgh key", "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefgh"),
    ("Authorization: Bearer sk-live-123456", "sk-live-123456"),
    ("header Bearer abc.def.ghi-jkl", "abc.def.ghi-jkl"),
    ("slack xoxb-1234-5678-abcdefABCDEF failed", "xoxb-1234-5678-abcdefABCDEF"),
    ("user token xoxp-1-2-3-abc", "xoxp-1-2-3-abc"),
    ("app token xapp-1-A0123-456-abcdef", "xapp-1-A0123-456-abcdef"),
    (
        "discord MTA1MjM0NTY3ODkwMTIzNDU2Nw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB bad",
        "MTA1MjM0NTY3ODkwMTIzNDU2Nw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB",
    ),
    ("in organization org-AbCdEf123456 on images", "org-AbCdEf123456"),
    ("project proj_AbCdEf123456 limit", "proj_AbCdEf123456"),
    (
        "see https://cdn.discordapp.com/attachments/1/2/a.png?ex=65f&is=65e&hm=deadbeef now",
        "ex=65f&is=65e&hm=deadbeef",
    ),
    ("blob https://x.blob.core.windows.net/c/img.png?sv=2021&sig=AbC%2Fd", "sig=AbC%2Fd"),
    ('{"api_key": "hunter2hunter2"}', "hunter2hunter2"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS_IN_TEXT)
def test_redact_removes_secret_shapes(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert MASK in cleaned


def test_redact_keeps_ordinary_text() -> None:
    text = "Generated 2 images of a lighthouse at dusk (1024x1024) in 7.2s for user 1234567890."
    assert redact(text) == text


def test_redact_keeps_url_without_query() -> None:
    text = "uploaded to https://files.example.com/a/b.png"
    assert redact(text) == text


def test_registered_secret_is_removed_whatever_its_shape() -> None:
    register_secrets(["my-signing-secret-0xDEAD"])
    assert "0xDEAD" not in redact("signature made with my-signing-secret-0xDEAD")


def test_logging_filter_redacts_message_args_and_traceback() -> None:
    record_holder: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record_holder.append(record)

    logger = logging.getLogger("test.redact")
    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("boom with sk-proj-SECRETSECRET123")
        except RuntimeError:
            logger.exception("calling with key %s", "sk-proj-OTHERSECRET99")
    finally:
        logger.removeHandler(handler)
    record = record_holder[0]
    formatted = logging.Formatter().format(record)
    assert "SECRETSECRET123" not in formatted
    assert "OTHERSECRET99" not in formatted
    assert "calling with key" in formatted
    assert "RuntimeError" in formatted
