"""The redactor scrubs every secret shape from user text and from log records."""

from __future__ import annotations

import logging

import pytest

import bot.redact as redact_module
from bot.redact import LOG_LIMIT, MASK, RedactingFilter, redact, register_secrets, untrusted

# Registered as configured secrets (the ends are what partial echoes keep): an OpenAI key, a Slack signing
# secret (hex, no recognisable shape) and a Discord token.
API_KEY = "sk-proj-Xy7Qm2Lp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXkJtM"
SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea9d7c"
DISCORD_TOKEN = "MTA1MjM0NTY3ODkwMTIzNDU2Nw.GhIjKl.Zp3Lq8Rw2Xv6Ty1Bn5Mc9Kd4Fs7Hg0Ja2"
register_secrets([API_KEY, SIGNING_SECRET, DISCORD_TOKEN])


@pytest.fixture(autouse=True)
def only_these_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry is per process: tests that ran before (a Slack token ends in ``6789``) must not mask this
    module's ordinary text; each test starts from this module's secrets and its own additions are undone."""
    monkeypatch.setattr(redact_module, "_secrets", ())
    register_secrets([API_KEY, SIGNING_SECRET, DISCORD_TOKEN])


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


# --- registered secrets in the partial forms services echo back ------------------------------------------

PARTIAL_FORMS = [
    # (why, text, what must be gone)
    ("whole", f"key {API_KEY} rejected", API_KEY[-4:]),
    ("whole, glued to text", f"xx{SIGNING_SECRET}yy", SIGNING_SECRET[-4:]),
    ("elided with ...", "Incorrect API key provided: sk-proj-Xy7...kJtM.", "kJtM"),
    ("elided with …", "key sk-pro…kJtM is invalid", "kJtM"),
    ("elided non-sk secret", "signing secret 8f14…9d7c did not match", "9d7c"),
    ("elided non-sk head", "signing secret 8f14e4...9d7c did not match", "8f14e4"),
    ("tail in quotes", "the key ending 'qZvXkJtM' was revoked", "kJtM"),
    ("4-char tail in quotes", 'key ending "kJtM"', "kJtM"),
    ("tail after a mask", f"{MASK}…kJtM", "kJtM"),
    ("tail after stars", "key ****9d7c", "9d7c"),
    ("tail after ...", "key ...kJtM", "kJtM"),
    ("tail at the end of the text", "key kJtM", "kJtM"),
    ("tail before an escape", "key kJtM\\n next", "kJtM"),
    ("tail after an escape", "key\\nkJtM next", "kJtM"),
    ("tail after a kept \\u escape", "key\\u000akJtM next", "kJtM"),
    ("long tail glued to text", "abcTqZvXkJtM", "TqZvXkJtM"),
    ("head of a truncated body", 'Incorrect key "8f14e45fcee', "8f14e45fcee"),
    ("discord token tail", "token ...Hg0Ja2 invalid", "Hg0Ja2"),
    ("discord token head", "token MTA1MjM0...", "MTA1MjM0"),
    ("json-escaped key", "key \\u0073k-proj-Xy7Qm2Lp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXkJtM", "kJtM"),
    ("json-escaped inside the key", "key sk-proj-Xy7Qm2\\u004cp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXk\\u004atM", "tM"),
    ("json-escaped twice", "key \\\\u0073k-proj-Xy7Qm2Lp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXk\\\\u004aTM", "qZvXk"),
    ("json-escaped tail after an escaped …", "key \\u2026\\u006bJtM", "JtM"),
    ("html-escaped", "key &#115;k-proj-Xy7&#x51;m2Lp9Rt4Vb8Nc3Wd6Hf1Jk5Ga0Se2Uo7Iy4TqZvXkJtM", "kJtM"),
    ("json-escaped truncated body", '{"error": {"message": "bad \\u0073k-proj-Xy7Qm2Lp9Rt4', "Xy7Qm2"),
]


@pytest.mark.parametrize(("why", "text", "gone"), PARTIAL_FORMS, ids=[row[0] for row in PARTIAL_FORMS])
def test_partial_forms_of_a_registered_secret_are_removed(why: str, text: str, gone: str) -> None:
    cleaned = redact(text)
    assert gone not in cleaned
    assert MASK in cleaned


WORDS_SHARING_A_SECRETS_ENDS = [
    "stakJtMx and xkJtM stay",  # a secret's last 4 characters inside longer words
    "1/2 of MTA1MjQxyz",  # a Discord token's first 6 characters glued to other ones
    "e-mail 9d7cabc or abc9d7c",
    "the 8f14e9 firmware",  # the token goes on past the secret's first 5 characters
]


@pytest.mark.parametrize("text", WORDS_SHARING_A_SECRETS_ENDS)
def test_short_fragments_inside_words_are_kept(text: str) -> None:
    assert redact(text) == text


def test_a_token_equal_to_a_secrets_first_or_last_characters_is_scrubbed() -> None:
    assert redact("the 8f14 firmware, part 9d7c") == f"the {MASK} firmware, part {MASK}"


@pytest.mark.parametrize(
    "text",
    [
        "xxxBearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "Authorization:Bearer abc123token",
        "curl -H 'authorization: basic dXNlcjpwYXNzd29yZA=='",
        "header=Bearer%20abc123token",
        "Authorization: Bot NzkyNzE1NDU0MTk2MDg4ODQy.X-hvzA.Ovy4MCQywSkoMRRclStW4xAYK7I",
    ],
)
def test_authorization_credentials_are_removed_wherever_they_start(text: str) -> None:
    cleaned = redact(text)
    for secret in ("c2lnbmF0dXJl", "abc123token", "dXNlcjpwYXNzd29yZA", "Ovy4MCQywSkoMRRclStW4xAYK7I"):
        assert secret not in cleaned
    assert MASK in cleaned


@pytest.mark.parametrize(
    "token",
    ["xoxe.xoxp-1-Mi0yLTM0MTQwNDE0", "xoxe-1-My0xLTM0MTQwNDE0", "xoxc-1234-5678", "eyJhbGciOi.eyJzdWIiOiIx"],
)
def test_more_token_shapes(token: str) -> None:
    assert token not in redact(f"got {token} here")


def test_decoded_escapes_never_add_a_line_break() -> None:
    assert redact("a\\u000ab\\u2028c") == "a\\u000ab\\u2028c"
    assert redact("caf\\u00e9 \\ud83d\\ude00 &#233;") == "café 😀 é"


def test_untrusted_text_is_one_capped_redacted_line() -> None:
    hostile = "line one\nFAKE LOG LINE\r\n" + "x" * 1_000_000 + API_KEY
    line = untrusted(hostile)
    assert "\n" not in line and "\r" not in line
    assert len(line) < 2200
    assert line.endswith("[1000000 more characters]") or "more characters" in line


def test_untrusted_cut_never_leaves_a_secret_end_behind() -> None:
    # the cut falls right after the secret's tail, which was glued to more text before the cut
    text = "y" * 2040 + " ...kJtMzzzz"
    assert "kJtM" not in untrusted(text)


def test_a_huge_log_message_is_cut_before_it_is_logged() -> None:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "body: %s", ("x" * 1_000_000,), None)
    RedactingFilter().filter(record)
    assert len(record.getMessage()) < LOG_LIMIT + 100
