"""adapters/common: the flag grammar, the access policy, the capped download and the answer() runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.common.access import (
    NEEDS_ROLE,
    NOT_IN_DMS,
    NOT_ON_THE_LIST,
    NOT_THIS_CHANNEL,
    NOT_THIS_SERVER,
    AccessPolicy,
    Requester,
)
from adapters.common.download import (
    CappedDownload,
    DownloadRefusedError,
    LoginPageError,
    origins,
)
from adapters.common.flags import ImagineCommand, parse_imagine
from adapters.common.lifecycle import answer
from bot.errors import InvalidImageError, InvalidRequestError, ProviderOutageError
from bot.jobs import JobOutcome
from bot.models import Job, JobContext, JobStatus, Progress
from bot.settings import DiscordSettings, SlackSettings
from tests.fakes.loopback import LoopbackServer
from tests.images import png

# --- the flag grammar -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a fox", ImagineCommand("a fox")),
        ("/imagine a fox --n=3 in snow --size 1024x1536", ImagineCommand("a fox in snow", n=3, size="1024x1536")),
        ("a red fox —n 2 --quality high", ImagineCommand("a red fox", n=2, quality="high")),  # Slack's em dash
        ("a red fox –n 2 --model fast", ImagineCommand("a red fox", n=2, model="fast")),  # an en dash
        ("--n 2", ImagineCommand("", n=2)),  # with an attached image: two variations
        ("a fox --size 1536×1024", ImagineCommand("a fox", size="1536x1024")),
        ("a fox --size AUTO", ImagineCommand("a fox", size="auto")),
        ("a fox — in snow", ImagineCommand("a fox — in snow")),  # a lone dash is punctuation
    ],
)
def test_the_grammar_reads_prompt_and_options(text: str, expected: ImagineCommand) -> None:
    assert parse_imagine(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a --weird fox", "don't know the option --weird"),
        ("a fox --n", "needs a value"),
        ("a fox --n --size 1024x1024", "needs a value"),
        ("a fox --n 0", "from 1 to 10"),
        ("a fox --n 11", "from 1 to 10"),
        ("a fox --n two", "from 1 to 10"),
        ("a fox --size big", "WIDTHxHEIGHT"),
        ("a fox --n 2 --n 3", "given twice"),
        ("/draw a fox", "don't know the command /draw"),
    ],
)
def test_the_grammar_refuses_what_it_cannot_read(text: str, says: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_imagine(text)
    assert says in caught.value.user_message


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_any_text_parses_or_gets_a_friendly_refusal(text: str) -> None:
    try:
        command = parse_imagine(text)
    except InvalidRequestError as exc:
        assert exc.user_message and "Traceback" not in exc.user_message
        return
    assert command.n is None or 1 <= command.n <= 10
    assert not any(word.startswith("--") and word[2:3].isalpha() for word in command.prompt.split())


# --- the access policy ------------------------------------------------------------------------------------------

MEMBER = Requester("discord", "u1", workspace="g1", channel="c1", roles=frozenset({"r1"}))
DM = Requester("discord", "u1", direct=True)


@pytest.mark.parametrize(
    ("rules", "who", "refusal"),
    [
        ({}, MEMBER, None),
        ({}, DM, None),  # no list set: DMs are fine
        ({"allowed_guilds": ["g1"]}, DM, NOT_IN_DMS),  # a list set: a DM can't be vouched for
        ({"allowed_roles": ["r1"]}, DM, NOT_IN_DMS),
        ({"allowed_channels": ["c1"]}, DM, NOT_IN_DMS),
        ({"allowed_guilds": ["g1"], "allow_dms": True}, DM, None),  # the operator opened DMs on purpose
        ({"allow_dms": False}, DM, NOT_IN_DMS),
        ({"allowed_guilds": ["g2"]}, MEMBER, NOT_THIS_SERVER),
        ({"allowed_channels": ["c2"]}, MEMBER, NOT_THIS_CHANNEL),
        ({"allowed_channels": ["c2"]}, Requester("discord", "u1", "g1", "t9", parent_channel="c2"), None),
        ({"allowed_roles": ["r2"]}, MEMBER, NEEDS_ROLE),
        ({"allowed_roles": ["r1"]}, MEMBER, None),
    ],
)
def test_discord_access(rules: dict[str, object], who: Requester, refusal: str | None) -> None:
    policy = AccessPolicy(DiscordSettings.model_validate(rules), SlackSettings())
    assert policy.refusal(who) == refusal


def test_slack_access() -> None:
    policy = AccessPolicy(DiscordSettings(), SlackSettings(allowed_users=["U1"]))
    assert policy.refusal(Requester("slack", "U1", "T1", "C1")) is None
    assert policy.refusal(Requester("slack", "U2", "T1", "C1")) == NOT_ON_THE_LIST


def job_of(platform: str, user: str) -> Job:
    now = time.time()
    return Job("job1234567", "generate", JobContext(platform, user), {}, "h", JobStatus.DONE, now, now, 1)


@pytest.mark.parametrize("platform", ["discord", "slack", "web"])
def test_only_the_requester_may_press_unless_others_may(platform: str) -> None:
    strict = AccessPolicy(DiscordSettings(), SlackSettings())
    job = job_of(platform, "owner")
    assert strict.may_press(job, Requester(platform, "owner")) is None
    assert strict.may_press(job, Requester(platform, "someone")) is not None
    assert strict.may_press(job, Requester("other" if platform != "web" else "slack", "owner")) is not None
    relaxed = AccessPolicy(DiscordSettings(others_may_press=True), SlackSettings(others_may_press=True))
    expected = None if platform != "web" else relaxed.may_press(job, Requester(platform, "someone"))
    assert relaxed.may_press(job, Requester(platform, "someone")) == expected
    if platform == "web":  # playground sessions are private whatever the chat platforms allow
        assert expected is not None


# --- the capped download ------------------------------------------------------------------------------------------


class Files(LoopbackServer):
    """A file host on 127.0.0.1: images, a login page, redirects, and a body longer than it declares."""

    def __init__(self) -> None:
        self.image = png(32, 32)
        self.app = web.Application()
        self.app.router.add_get("/image.png", self._image)
        self.app.router.add_get("/login", self._login)
        self.app.router.add_get("/hop", self._redirect("/image.png"))
        self.app.router.add_get("/away", self._redirect("http://localhost:1/image.png"))
        self.app.router.add_get("/big", self._big)

    async def _image(self, request: web.Request) -> web.Response:
        return web.Response(body=self.image, content_type="image/png")

    async def _login(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html")

    @staticmethod
    def _redirect(location: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(location)

        return redirect

    async def _big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})  # chunked: no declared size
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\x89PNG" + bytes(16 * 1024))
        return response


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    async with Files() as server:
        yield server


def downloader(http: aiohttp.ClientSession, files: Files, max_bytes: int = 100_000) -> CappedDownload:
    return CappedDownload(http, origins(["files.example"], configured=files.url), max_bytes=max_bytes)


async def test_a_download_from_an_allowed_origin(http: aiohttp.ClientSession, files: Files) -> None:
    assert await downloader(http, files).fetch(f"{files.url}/image.png") == files.image
    assert await downloader(http, files).fetch(f"{files.url}/hop") == files.image  # a redirect, checked again


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/image.png",  # another host name
        "https://127.0.0.1:{port}/image.png",  # another scheme
        "http://127.0.0.1:1/image.png",  # another port
        "file:///etc/passwd",
        "http://127.0.0.1:{port}/away",  # a redirect elsewhere
    ],
)
async def test_downloads_from_anywhere_else_are_refused(http: aiohttp.ClientSession, files: Files, url: str) -> None:
    with pytest.raises(DownloadRefusedError):
        await downloader(http, files).fetch(url.format(port=files.port))


async def test_declared_and_actual_sizes_are_both_capped(http: aiohttp.ClientSession, files: Files) -> None:
    with pytest.raises(InvalidImageError, match="too large"):
        await downloader(http, files).fetch(f"{files.url}/image.png", declared_size=10**9)
    with pytest.raises(InvalidImageError, match="too large"):
        await downloader(http, files).fetch(f"{files.url}/big")  # declared nothing, sends 1 MB


async def test_a_login_page_is_not_an_image(http: aiohttp.ClientSession, files: Files) -> None:
    with pytest.raises(LoginPageError):
        await downloader(http, files).fetch(f"{files.url}/login")


# --- answer(): exactly one final answer -----------------------------------------------------------------------------


class Recorded:
    """A Reply that records what it was asked to show."""

    def __init__(self, *, broken_progress: bool = False) -> None:
        self.updates: list[Progress] = []
        self.finished: list[JobOutcome] = []
        self.failed: list[str] = []
        self.broken_progress = broken_progress

    async def progress(self, update: Progress) -> None:
        if self.broken_progress:
            raise aiohttp.ClientConnectionError("edit failed")
        self.updates.append(update)

    async def finish(self, outcome: JobOutcome) -> None:
        self.finished.append(outcome)

    async def fail(self, text: str) -> None:
        self.failed.append(text)


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequestError("That size isn't accepted."),
        ProviderOutageError(),
        KeyError("sk-proj-abcdefghijklmnopqrstuvwxyz123456"),  # a bug whose text holds something secret
    ],
)
async def test_every_failure_becomes_one_friendly_answer(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    reply = Recorded()

    async def work(progress: object) -> JobOutcome:
        raise error

    with caplog.at_level(logging.INFO):
        await answer(reply, work)  # never raises
    (text,) = reply.failed
    assert reply.finished == [] and "(ref " in text and "sk-proj" not in text and "KeyError" not in text


async def test_a_failing_progress_edit_does_not_cost_the_job() -> None:
    reply = Recorded(broken_progress=True)
    outcome = JobOutcome(job_of("slack", "u1"), None)

    async def work(progress: object) -> JobOutcome:
        assert callable(progress)
        await progress(Progress(JobStatus.QUEUED, position=2))
        return outcome

    await answer(reply, work)
    assert reply.finished == [outcome] and reply.failed == []


async def test_cancellation_is_not_swallowed() -> None:
    reply = Recorded()

    async def work(progress: object) -> JobOutcome:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    task = asyncio.create_task(answer(reply, work))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reply.failed == [] and reply.finished == []
