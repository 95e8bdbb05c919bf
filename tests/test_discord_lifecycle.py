"""One request to one answer on Discord: mentions, capped downloads, exactly once across restarts, and every
failure acknowledged within 3 s with one friendly answer — through the fake Discord and FakeOpenAI."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl

from adapters.discord.adapter import apply_endpoints
from bot.bootstrap import open_core
from bot.models import JobStatus
from bot.settings import load_settings
from tests.fakes.discord_server import ARTIST_ROLE_ID, Callback, FakeDiscord, SentMessage, make_user
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, moderation_blocked, server_error
from tests.images import png
from tests.test_discord import (  # noqa: F401
    channel_result,
    custom_ids,
    delivered,
    fake,
    openai_settings,
    result_of,
    running,
    settings_for,
)

# --- mentions --------------------------------------------------------------------------------------------------


def mentions_off(sent: SentMessage) -> bool:
    allowed = sent.payload.get("allowed_mentions")
    return allowed is not None and allowed.get("parse") == [] and not allowed.get("users")


async def test_progress_and_error_edits_allow_no_mentions(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with FakeOpenAI(latency=0.3) as openai, running(openai_settings(fake, openai, tmp_path)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "@everyone look <@&1> at this"})
        result = await result_of(fake, inter.id)
        progress = [s for s in fake.sent if s.interaction_id == inter.id and s is not result]
        bad = await fake.dispatch_slash_command("imagine", {"prompt": "a fox", "size": "@everyone"})
        error = await fake.wait_for(
            lambda: next((s for s in fake.sent if s.interaction_id == bad.id and "(ref " in (s.content or "")), None),
            what="the error edit",
        )
    assert progress and all("Generating" in (s.content or "") for s in progress)
    assert all(mentions_off(s) for s in progress), [s.payload.get("allowed_mentions") for s in progress]
    assert "@everyone" in (error.content or "") and mentions_off(error)
    # the result names its requester: exactly that user may be mentioned
    assert result.payload["allowed_mentions"]["parse"] == []
    assert [str(u) for u in result.payload["allowed_mentions"]["users"]] == [fake.user["id"]]
    fake.assert_no_errors()


# --- downloads ---------------------------------------------------------------------------------------------------


async def test_a_body_larger_than_declared_is_cut_off_while_streaming(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    limit = 1024 * 1024
    async with running(settings_for(fake, tmp_path, imaging={"max_input_bytes": limit})):
        image = fake.add_attachment(png(32, 32), "cat.png")
        image["size"] = 1000
        fake.serve_instead(image, size=60 * 1024 * 1024)
        inter = await fake.dispatch_slash_command("vary", {"image": image})
        sent = await fake.next_webhook_message(inter.id, timeout=10)
        sent_bytes = fake.cdn_bytes_sent(image)
    assert "too large" in (sent.content or "")
    assert sent_bytes < 8 * limit, f"{sent_bytes} bytes were served before the download stopped"
    fake.assert_no_errors()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/cat.png",  # another host
        "https://cdn.discordapp.com:8443/attachments/1/2/cat.png",  # the CDN on another port
        "ftp://cdn.discordapp.com/attachments/1/2/cat.png",  # another scheme
    ],
)
async def test_downloads_only_from_the_cdn(fake: FakeDiscord, tmp_path: Path, url: str) -> None:  # noqa: F811
    async with running(settings_for(fake, tmp_path)):
        image = fake.add_attachment(png(), "cat.png") | {"url": url, "proxy_url": url}
        inter = await fake.dispatch_slash_command("vary", {"image": image})
        sent = await fake.next_webhook_message(inter.id)
    assert "only download images shared in Discord" in (sent.content or "")
    assert not [r for r in fake.requests if r.path.startswith("/attachments/")]
    fake.assert_no_errors()


async def test_a_declared_size_over_the_limit_is_refused_unread(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with running(settings_for(fake, tmp_path, imaging={"max_input_bytes": 1024 * 1024})):
        image = fake.add_attachment(png(), "cat.png") | {"size": 5 * 1024 * 1024}
        inter = await fake.dispatch_slash_command("vary", {"image": image})
        sent = await fake.next_webhook_message(inter.id)
    assert "too large" in (sent.content or "")
    assert fake.cdn_bytes_sent(image) == 0
    fake.assert_no_errors()


async def test_redirects_are_checked_again(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    async with running(settings_for(fake, tmp_path)):
        image = fake.add_attachment(png(), "cat.png")
        fake.serve_instead(image, redirect="http://169.254.169.254/latest/meta-data")
        inter = await fake.dispatch_slash_command("vary", {"image": image})
        sent = await fake.next_webhook_message(inter.id)
    assert "only download images shared in Discord" in (sent.content or "")
    fake.assert_no_errors()


# --- exactly once across restarts ----------------------------------------------------------------------------------


def results_posted(server: FakeDiscord, job: str) -> list[SentMessage]:
    return [s for s in server.sent if s.files and any(job in c for c in custom_ids(s))]


@pytest.mark.parametrize("token_lives", [True, False], ids=["token-lives", "token-expired"])
async def test_a_result_posted_before_a_crash_is_not_posted_again(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
    token_lives: bool,
) -> None:
    settings = settings_for(fake, tmp_path)
    async with running(settings) as first:
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse"})
        sent = await result_of(fake, inter.id)
        job = custom_ids(sent)[0].split(":")[2]
        await delivered(first, job)
    # what a kill -9 between the post and marking it delivered leaves: done, one delivery attempt
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        await core.jobs.store.update(job, status=JobStatus.DONE, delivered_at=None)
        assert (await core.jobs.store.get(job)).delivery_attempts == 1  # type: ignore[union-attr]
    lifetime = {} if token_lives else {"token_lifetime": 0.0}
    async with running(settings, **lifetime) as second:
        await delivered(second, job)
    assert len(results_posted(fake, job)) == 1
    assert ("GET", "messages") in {(r.method, r.path.rsplit("/", 1)[-1]) for r in fake.requests} or token_lives
    fake.assert_no_errors()


async def test_a_result_whose_post_never_arrived_is_posted_once(fake: FakeDiscord, tmp_path: Path) -> None:  # noqa: F811
    settings = settings_for(fake, tmp_path)
    async with running(settings) as first:
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a harbour"})
        sent = await result_of(fake, inter.id)
        job = custom_ids(sent)[0].split(":")[2]
        await delivered(first, job)
    fake.messages.pop(sent.message_id)  # the post never made it (as if the crash came before Discord had it)
    async with aiohttp.ClientSession() as session, open_core(settings, session) as core:
        await core.jobs.store.update(job, status=JobStatus.DONE, delivered_at=None)
    for _ in range(2):  # a second restart finds it delivered
        async with running(settings, token_lifetime=0.0) as again:
            await delivered(again, job)
    posts = [s for s in results_posted(fake, job) if s.kind == "channel"]
    assert len(posts) == 1 and posts[0].payload["enforce_nonce"] is True and posts[0].payload["nonce"]
    fake.assert_no_errors()


def snapshot(data_dir: Path, into: Path) -> None:
    """The job database as a kill -9 at this instant leaves it on disk."""
    into.mkdir()
    source = sqlite3.connect(data_dir / "jobs.sqlite3")
    target = sqlite3.connect(into / "jobs.sqlite3")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    if (data_dir / "results").exists():
        shutil.copytree(data_dir / "results", into / "results")


@pytest.mark.parametrize("token_lives", [True, False], ids=["token-lives", "token-expired"])
async def test_a_job_cut_off_by_a_restart_is_told_once(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
    token_lives: bool,
) -> None:
    crashed = tmp_path / "after-crash"
    async with FakeOpenAI(latency=30) as openai:
        async with running(openai_settings(fake, openai, tmp_path / "before")):
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a slow castle"})
            await fake.wait_for(lambda: openai.image_requests or None, what="the upstream call")
            snapshot(tmp_path / "before", crashed)
        told_before = len(fake.sent)
        lifetime = {} if token_lives else {"token_lifetime": 0.0}
        for _ in range(2):  # the second restart must not tell again
            async with running(openai_settings(fake, openai, crashed), **lifetime):
                pass
    notices = [s for s in fake.sent[told_before:] if "A restart interrupted your request" in (s.content or "")]
    assert len(notices) == 1, [s.content for s in fake.sent[told_before:]]
    [notice] = notices
    if token_lives:
        assert notice.interaction_id == inter.id and notice.kind == "webhook_edit"
    else:
        assert notice.kind == "channel" and f"<@{fake.user['id']}>" in (notice.content or "")
        assert [str(u) for u in notice.payload["allowed_mentions"]["users"]] == [fake.user["id"]]
    fake.assert_no_errors()


async def test_interaction_tokens_never_reach_the_logs(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.redact import RedactingFilter

    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG):
        async with running(settings_for(fake, tmp_path)):
            inter = await fake.dispatch_slash_command("imagine", {"prompt": "a fox"})
            await result_of(fake, inter.id)
    assert inter.token not in caplog.text and inter.token[20:60] not in caplog.text
    async with aiohttp.ClientSession() as session, open_core(settings_for(fake, tmp_path), session) as core:
        [job] = await core.jobs.history(limit=1)
    assert inter.token in (job.context.reply or "")  # kept for a restart, only in the job database


# --- failures: acknowledged in time, one friendly answer ------------------------------------------------------------

ENTRY_POINTS = ("slash", "menu", "button", "modal", "reply")
FAILURES = ("bad option", "refused", "budget", "upstream 400", "upstream 500", "bug")


class Stage:
    """A result to press, reply to and remix, made before the failure is set up."""

    def __init__(self, server: FakeDiscord) -> None:
        self.fake = server
        self.result: dict[str, Any] = {}
        self.job = ""

    async def prepare(self) -> None:
        inter = await self.fake.dispatch_slash_command("imagine", {"prompt": "a fox", "count": 2})
        sent = await result_of(self.fake, inter.id)
        self.result, self.job = sent.message, custom_ids(sent)[0].split(":")[2]

    async def request(self, entry: str, failure: str, user: dict[str, Any]) -> tuple[str | None, str, Callback | None]:
        """Make the request: (interaction id or None for a reply, what the answer refers to, the first response
        if it was already read)."""
        server, bad = self.fake, failure == "bad option"
        if entry == "slash":
            options = {"prompt": "a cat"} | ({"size": "999x999"} if bad else {})
            inter = await server.dispatch_slash_command("imagine", options, user=user)
        elif entry == "menu":
            files = [] if bad else [server.add_attachment(png(32, 32), "cat.png")]
            target = server.user_message("look", attachments=files)
            inter = await server.dispatch_message_command("Vary image", target, user=user)
        elif entry == "button":
            inter = await server.dispatch_component(f"img:v:{self.job}:1", message=self.result, user=user)
        elif entry == "modal":
            press = await server.dispatch_component(f"img:x:{self.job}:0", message=self.result, user=user)
            opened = await server.next_callback(press.id)
            if opened.type != 9:
                return press.id, press.id, opened
            prompt = " " if bad else "a fox at night"
            inter = await server.dispatch_modal_submit(opened.data["custom_id"], {"prompt": prompt}, user=user)
        else:
            message = await server.dispatch_message_create("more", author=user, reply_to=self.result)
            return None, message["id"], None
        return inter.id, inter.id, None


def answers(server: FakeDiscord, inter_id: str | None, ref: str) -> list[str]:
    """Every final answer shown for one request (the text of error replies and results)."""
    found: list[str] = []
    if inter_id is not None:
        for callback in server.callbacks:
            if callback.interaction_id == inter_id and callback.type == 4:
                found.append(callback.data.get("content", ""))
        sent = [s for s in server.sent if s.interaction_id == inter_id and s.kind != "callback"]
        found += [s.content or "" for s in sent if "(ref " in (s.content or "") or s.files]
    else:
        replies = [s for s in server.sent if s.kind == "channel"]
        found += [s.content or "" for s in replies if str(s.payload["message_reference"]["message_id"]) == ref]
    return found


@pytest.mark.parametrize("failure", FAILURES)
async def test_every_failure_is_acknowledged_and_answered_once(
    fake: FakeDiscord,  # noqa: F811
    tmp_path: Path,
    failure: str,
) -> None:
    async with FakeOpenAI() as openai:
        plain = openai_settings(fake, openai, tmp_path, limits={"per_user_jobs": 100})
        async with running(plain):
            stage = Stage(fake)
            await stage.prepare()
        overrides: dict[str, Any] = {"limits": {"per_user_jobs": 100}, "openai": {"max_retries": 1}}
        if failure == "refused":
            overrides["discord"] = {"allowed_roles": [ARTIST_ROLE_ID]}
        if failure == "budget":
            overrides["budgets"] = {"images_per_user_per_day": 1}
        settings = openai_settings(fake, openai, tmp_path, **overrides)
        async with running(settings) as adapter:
            if failure == "bad option":  # a button can't carry a bad option: its job's images have expired instead
                await adapter.core.jobs.store.update(stage.job, results_pruned=True)
            if failure == "bug":  # the result folder replaced by a file: saving any result fails unexpectedly
                shutil.rmtree(tmp_path / "results")
                (tmp_path / "results").write_bytes(b"not a folder")
            user = make_user("1185000000000000301", "cy") if failure == "refused" else fake.user
            for entry in ENTRY_POINTS:
                if entry == "reply" and failure in ("refused", "bad option"):
                    continue  # replies have no options, and are refused silently (the access table covers that)
                if failure == "upstream 400":
                    openai.script(moderation_blocked())
                if failure == "upstream 500":
                    openai.script(server_error(), server_error())
                inter_id, ref, callback = await stage.request(entry, failure, user)
                if inter_id is not None:
                    callback = callback or await fake.next_callback(inter_id)
                    assert callback.latency < 3.0 and callback.status == 200, (entry, callback)

                def shown_now(inter_id: str | None = inter_id, ref: str = ref) -> list[str] | None:
                    return answers(fake, inter_id, ref) or None

                await fake.wait_for(shown_now, timeout=10, what=entry)
                await adapter.core.jobs.history(limit=1)  # a round trip to the core: late duplicates show up
                shown = answers(fake, inter_id, ref)
                assert len(shown) == 1, (entry, failure, shown)
                assert_friendly(shown[0], entry, failure)
    fake.assert_no_errors()


def assert_friendly(text: str, entry: str, failure: str) -> None:
    if failure == "refused":
        assert "roles" in text, (entry, text)
        return
    assert "(ref " in text, (entry, failure, text)
    for raw in ("Traceback", "Errno", "NotADirectoryError", "FileExistsError", "HTTP 500", "req_", DEFAULT_KEY):
        assert raw not in text, (entry, failure, text)


# --- discord.py internals we depend on ------------------------------------------------------------------------------


def test_the_endpoint_internals_are_where_apply_endpoints_expects_them(tmp_path: Path) -> None:
    """discord.py 2.7 has no public setting for the REST base or the gateway URL: if these move, this fails."""
    rest, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        settings = load_settings(
            data_dir=tmp_path,
            DISCORD_API_BASE_URL="http://127.0.0.1:9/api/v10/",
            DISCORD_GATEWAY_URL="ws://127.0.0.1:9/",
        )
        apply_endpoints(settings)
        assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
        assert yarl.URL("ws://127.0.0.1:9/") == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        assert "DEFAULT_GATEWAY" in discord.gateway.DiscordWebSocket.from_client.__code__.co_names
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = rest, gateway
