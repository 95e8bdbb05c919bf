"""Slack users get their replies in their own language: users.info with include_locale (asked once, cached),
also for what a restart tells them.

Apart from tests/test_locales.py because starting a Slack bot registers the fake Slack tokens as secrets for the
rest of the process (bot.redact), which tests/test_redact.py must run without."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, moderation_blocked
from tests.fakes.slack_server import ACK_DEADLINE, USER_ID, FakeSlack
from tests.slack_harness import responses_to, slack_bot
from tests.test_slack_restart import _leave_running


async def test_a_slack_user_with_a_german_locale_gets_german(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeOpenAI() as openai:
        slack.users[USER_ID]["locale"] = "de-DE"
        on = {"openai_api_key": DEFAULT_KEY, "openai_base_url": openai.base_url, "openai": {"max_retries": 0}}
        async with slack_bot(slack, tmp_path / "data", **on) as bot:
            openai.script(moderation_blocked("input", ["violence"]))
            await slack.send_slash_command("/imagine", "etwas")
            await slack.wait_for(lambda: any("Ref." in t for t in bot.ephemeral_texts()), what="the German failure")
            await slack.send_slash_command("/imagine", "ein Leuchtturm")
            await bot.uploads_done(1)
            refused = await slack.send_slash_command("/imagine", "a cat --n 99")  # refused after an empty ack
            ack = await slack.wait_for_ack(refused.envelope_id, timeout=ACK_DEADLINE)
            await slack.wait_for(lambda: responses_to(slack, refused.payload), what="the refusal")
            await bot.adapter.idle()
        [refusal] = responses_to(slack, refused.payload)
        assert not ack.payload and ack.at < refusal.at
        assert str(refusal.body["text"]).startswith("--n erwartet eine Bildanzahl"), refusal.body
        texts = bot.ephemeral_texts()
        assert any(t.startswith("Der Sicherheitsfilter des Bilddienstes") for t in texts), texts
        [controls] = bot.controls()
        labels = [e["text"]["text"] for b in controls.blocks or [] for e in b.get("elements", []) if "text" in e]
        assert "Variieren" in labels and "Neu würfeln" in labels
        info = [c for c in slack.calls if c.method == "users.info"]
        assert len(info) == 1 and str(info[0].args.get("include_locale")).lower() in ("true", "1")  # once, cached
        await slack.settle()
        slack.assert_no_errors()


async def test_a_slack_restart_tells_a_german_requester_in_german(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        slack.users[USER_ID]["locale"] = "de-DE"
        async with slack_bot(slack, tmp_path / "data") as first:
            job = await _leave_running(first, "eine Burg")
        async with slack_bot(slack, tmp_path / "data") as second:
            await second.adapter.redelivered()
        told = [m.text for m in slack.messages if m.ephemeral_to == USER_ID]
        assert told == [
            "Ein Neustart hat deine Anfrage „eine Burg“ unterbrochen; es wurde nichts berechnet. "
            "Bitte frag noch einmal."
        ], job.id
        await slack.settle()
        slack.assert_no_errors()


async def test_a_burst_from_a_new_user_asks_slack_for_the_language_once(tmp_path: Path) -> None:
    """Ten commands at once from a user not seen yet: one users.info, not ten (a burst must not add a call per
    command to Slack's rate limits and the loop's work), and every reply is in German."""
    async with FakeSlack() as slack:
        slack.users[USER_ID]["locale"] = "de-DE"
        async with slack_bot(slack, tmp_path / "data", limits={"per_user_jobs": 20}) as bot:
            for n in range(10):
                await slack.send_slash_command("/imagine", f"ein Leuchtturm {n}")
            await bot.uploads_done(10)
            await bot.adapter.idle()
        info = [c for c in slack.calls if c.method == "users.info"]
        assert len(info) == 1, len(info)
        await slack.settle()
        slack.assert_no_errors()
