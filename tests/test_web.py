"""The playground's API through aiohttp's test client, on the real core with the offline provider."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import ExifTags, Image, ImageChops

from adapters.common.flags import ImagineCommand, parse_imagine
from adapters.runner import wire
from adapters.web.adapter import Playground
from adapters.web.server import is_loopback
from adapters.web.session import SESSION_COOKIE
from bot.bootstrap import Core, new_http_session, open_core
from bot.errors import ProviderOutageError
from bot.models import JobStatus
from bot.ports import ImageProvider
from bot.settings import load_settings
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, moderation_blocked, server_error
from tests.fakes.provider import FakeImages
from tests.images import decode, half_white_mask, png

HEADERS = {"X-Imagebot": "1"}
SOLID = (40, 90, 200)


@dataclass
class Harness:
    core: Core
    client: TestClient[web.Request, web.Application]
    playground: Playground

    async def post(self, path: str, body: Any = None, *, status: int = 200, **kwargs: Any) -> dict[str, Any]:
        if isinstance(body, aiohttp.FormData):
            response = await self.client.post(path, data=body, headers=HEADERS, **kwargs)
        else:
            response = await self.client.post(path, json=body or {}, headers=HEADERS, **kwargs)
        data: dict[str, Any] = await response.json()
        assert response.status == status, data
        return data

    async def imagine(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return await self.post("/api/imagine", {"text": text}, **kwargs)

    async def image(self, url: str) -> Image.Image:
        response = await self.client.get(url)
        assert response.status == 200
        return decode(await response.read())


async def _harness(
    tmp_path: Path, *, provider: ImageProvider | None = None, **overrides: Any
) -> AsyncIterator[Harness]:
    """The playground as `imagebot run` wires it (``open_core`` + ``wire``), served by aiohttp's test server."""
    settings = load_settings(data_dir=tmp_path / "data", **overrides)
    async with new_http_session() as session, open_core(settings, session, provider=provider) as core:
        wiring = wire(core, settings, session)
        assert wiring.playground is not None
        await wiring.playground.start()
        async with TestClient(TestServer(wiring.app)) as client:
            await client.get("/")  # the page gives the session, as in a browser (401 when a password is set)
            yield Harness(core, client, wiring.playground)
            await wiring.playground.stop()


@pytest.fixture
async def web_bot(tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in _harness(tmp_path):
        yield harness


def _cookie(bot: Harness) -> str:
    """The session cookie the page gave this client."""
    [cookie] = [c for c in bot.client.session.cookie_jar if c.key == SESSION_COOKIE]
    return cookie.value


def upload(image: bytes, **fields: str | bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", image, filename="upload.png", content_type="image/png")
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename=f"{name}.png", content_type="image/png")
        else:
            form.add_field(name, value)
    return form


def solid_png(width: int = 256, height: int = 256) -> bytes:
    return png(width, height, SOLID)


# --- imagine and its flags ----------------------------------------------------------------------------------


async def test_imagine_with_flags_makes_that_many_images_of_that_size(web_bot: Harness) -> None:
    result = await web_bot.imagine("/imagine a red fox --n 2 --size 1536x1024")
    assert result["status"] == "done"
    assert result["job"]["prompt"] == "a red fox"
    assert [i["index"] for i in result["images"]] == [1, 2]
    for info in result["images"]:
        picture = await web_bot.image(info["url"])
        assert picture.format == "PNG"
        assert picture.size == (1536, 1024) == (info["width"], info["height"])


async def test_plain_text_is_an_imagine_with_the_default_count(web_bot: Harness) -> None:
    result = await web_bot.imagine("a lighthouse at dusk")
    assert result["job"]["prompt"] == "a lighthouse at dusk"
    assert len(result["images"]) == 1


def test_flags_are_parsed_and_removed_from_the_prompt() -> None:
    assert parse_imagine("/imagine a fox --n=3 in snow --quality high --model fast --size 1024x1536") == (
        ImagineCommand(prompt="a fox in snow", n=3, size="1024x1536", quality="high", model="fast")
    )


# Changed in issue 9: the playground parses with Slack's grammar (adapters.common.flags), so an unknown
# ``--flag`` is now an error instead of staying in the prompt (where it would be paid for).
@pytest.mark.parametrize("text", ["/imagine a fox --n", "a fox --n many", "/draw a fox", "a --weird fox"])
async def test_bad_commands_are_friendly_errors_and_make_no_job(web_bot: Harness, text: str) -> None:
    result = await web_bot.imagine(text, status=400)
    error = result["error"]
    assert error["kind"] == "invalid_input"
    assert error["message"].endswith(f"(ref {error['ref']})")
    assert await web_bot.core.jobs.store.history(limit=5) == []


async def test_empty_prompt_is_a_friendly_error(web_bot: Harness) -> None:
    result = await web_bot.imagine("/imagine   --n 2", status=400)
    assert result["error"]["message"].startswith("Please describe the image you want")
    assert f"(ref {result['error']['ref']})" in result["error"]["message"]


# --- progress -------------------------------------------------------------------------------------------------


Event = dict[str, Any]


async def read_events(response: aiohttp.ClientResponse, until: Callable[[Event], bool]) -> list[Event]:
    """SSE ``data:`` lines as dicts, up to and including the first one ``until`` accepts."""
    seen: list[Event] = []
    async with asyncio.timeout(10):
        while True:
            line = (await response.content.readline()).decode()
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if until(seen[-1]):
                    return seen


async def test_progress_events_say_queued_with_position_then_running_then_done(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, limits={"max_concurrent": 1}):
        events = await bot.client.get("/api/events")
        assert events.headers["Content-Type"].startswith("text/event-stream")
        async with bot.core.admission.slot("test:someone-else", 1):  # the only slot is busy
            request = asyncio.create_task(bot.imagine("a queued fox", params={"task": "t1"}))
            seen = await read_events(events, lambda e: e["status"] == "queued")
        result = await request
        seen += await read_events(events, lambda e: e["status"] == "done")
        events.close()
        mine = [e for e in seen if e["task"] == "t1"]
        assert [e["status"] for e in mine] == ["accepted", "queued", "running", "done"]
        assert mine[1]["position"] == 1
        assert mine[-1]["job"] == result["job"]["id"]


async def test_a_preview_reaches_the_event_stream_before_the_result(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, openai={"partial_images": 1}):
        events = await bot.client.get("/api/events")
        request = asyncio.create_task(bot.imagine("a fox at dawn", params={"task": "t3"}))
        seen = await read_events(events, lambda e: e["task"] == "t3" and e["status"] == "done")
        await request
        events.close()
        mine = [e for e in seen if e["task"] == "t3"]
        assert [(e["status"], "preview" in e) for e in mine] == [
            ("accepted", False),
            ("running", False),
            ("running", True),
            ("done", False),
        ]
        header, _, data = mine[2]["preview"].partition(",")
        assert header == "data:image/png;base64"
        assert decode(base64.b64decode(data)).size == (256, 256)


async def test_shutdown_fails_queued_jobs_with_a_restarting_message(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, limits={"max_concurrent": 1}):
        events = await bot.client.get("/api/events")
        async with bot.core.admission.slot("test:someone-else", 1):
            request = asyncio.create_task(bot.imagine("a fox", params={"task": "t2"}, status=503))
            await read_events(events, lambda e: e["status"] == "queued")
            bot.core.admission.close()
            result = await request
        failed = await read_events(events, lambda e: e["status"] == "failed")
        events.close()
        assert "restarting" in result["error"]["message"]
        assert failed[-1]["message"] == result["error"]["message"]


# --- buttons --------------------------------------------------------------------------------------------------


async def test_v_button_makes_variations_of_that_image(web_bot: Harness) -> None:
    first = await web_bot.imagine("a castle --n 2")
    result = await web_bot.post(f"/api/jobs/{first['job']['id']}/vary/2")
    assert result["job"]["kind"] == "vary"
    assert result["job"]["id"] != first["job"]["id"]
    assert len(result["images"]) == 2
    assert (await web_bot.image(result["images"][0]["url"])).format == "PNG"


async def test_reroll_runs_the_same_request_as_a_new_job(web_bot: Harness) -> None:
    first = await web_bot.imagine("a boat --n 2 --size 1024x1536")
    result = await web_bot.post(f"/api/jobs/{first['job']['id']}/reroll")
    assert result["job"]["id"] != first["job"]["id"]
    assert result["job"]["prompt"] == "a boat"
    assert [(i["width"], i["height"]) for i in result["images"]] == [(1024, 1536)] * 2


async def test_remix_changes_the_prompt(web_bot: Harness) -> None:
    first = await web_bot.imagine("a boat")
    result = await web_bot.post(f"/api/jobs/{first['job']['id']}/remix", {"prompt": "a boat at night"})
    assert result["job"]["prompt"] == "a boat at night"
    assert result["job"]["id"] != first["job"]["id"]


async def test_u_button_serves_the_png_for_viewing_and_for_download(web_bot: Harness) -> None:
    result = await web_bot.imagine("a lighthouse --n 2")
    image = result["images"][1]
    shown = await web_bot.client.get(image["url"])
    assert shown.headers["Content-Type"] == "image/png"
    assert shown.headers["Content-Disposition"] == f'inline; filename="{image["filename"]}"'
    saved = await web_bot.client.get(image["download"])
    assert saved.headers["Content-Disposition"] == f'attachment; filename="{image["filename"]}"'
    assert await saved.read() == await shown.read()


async def test_serving_the_images_marks_the_job_delivered(web_bot: Harness) -> None:
    result = await web_bot.imagine("a hill")
    job_id = result["job"]["id"]
    assert (await web_bot.core.jobs.store.get(job_id)).status is JobStatus.DONE  # type: ignore[union-attr]
    await web_bot.image(result["images"][0]["url"])
    assert (await web_bot.core.jobs.store.get(job_id)).status is JobStatus.DELIVERED  # type: ignore[union-attr]


async def test_unknown_job_or_image_is_a_friendly_404(web_bot: Harness) -> None:
    result = await web_bot.post("/api/jobs/nosuchjob1/reroll", status=404)
    assert result["error"]["message"].startswith("I can't find that image")
    first = await web_bot.imagine("a hill")
    response = await web_bot.client.get(f"/api/jobs/{first['job']['id']}/images/9")
    assert response.status == 404


# --- uploads: edit and vary ---------------------------------------------------------------------------------


def changed(before: Image.Image, after: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """More than JPEG noise apart (opaque uploads reach the provider as quality-95 JPEG)."""
    difference = ImageChops.difference(before.convert("RGB").crop(box), after.convert("RGB").crop(box))
    return max(high for _, high in difference.getextrema()) > 4


async def test_edit_with_a_region_changes_only_that_region(web_bot: Harness) -> None:
    source = solid_png()
    result = await web_bot.post("/api/edit", upload(source, prompt="a dragon", region="A1:B2"))
    assert result["job"]["kind"] == "edit"
    after = await web_bot.image(result["images"][0]["url"])
    before = decode(source)
    assert after.size == before.size
    assert changed(before, after, (0, 0, 120, 120))  # inside A1:B2 (the top-left quarter)
    assert not changed(before, after, (140, 0, 256, 256))  # the right half, away from the soft edge
    assert not changed(before, after, (0, 140, 256, 256))  # the bottom half


async def test_edit_with_a_mask_upload_changes_only_the_masked_part(web_bot: Harness) -> None:
    source = solid_png()
    result = await web_bot.post("/api/edit", upload(source, prompt="a dragon", mask=half_white_mask(256, 256)))
    after = await web_bot.image(result["images"][0]["url"])
    before = decode(source)
    assert changed(before, after, (0, 0, 120, 256))  # white = may change
    assert not changed(before, after, (140, 0, 256, 256))  # black = keep


async def test_edit_with_an_unknown_region_is_a_friendly_error(web_bot: Harness) -> None:
    result = await web_bot.post("/api/edit", upload(solid_png(), prompt="x", region="E9"), status=400)
    assert result["error"]["message"].startswith("I don't know that region")


async def test_vary_of_an_upload(web_bot: Harness) -> None:
    result = await web_bot.post("/api/vary", upload(solid_png(), n="2"))
    assert result["job"]["kind"] == "vary"
    assert len(result["images"]) == 2
    assert (await web_bot.image(result["images"][1]["url"])).size == (256, 256)


async def test_a_text_file_is_refused_with_the_friendly_image_message(web_bot: Harness) -> None:
    form = aiohttp.FormData()
    form.add_field("image", b"just some notes\n", filename="notes.txt", content_type="text/plain")
    result = await web_bot.post("/api/vary", form, status=400)
    error = result["error"]
    assert error["kind"] == "invalid_input"
    assert "image" in error["message"]
    assert error["message"].endswith(f"(ref {error['ref']})")


async def test_an_empty_file_is_reported_as_empty_not_as_missing(web_bot: Harness) -> None:
    form = aiohttp.FormData()
    form.add_field("image", b"", filename="holiday.jpg", content_type="image/jpeg")
    result = await web_bot.post("/api/vary", form, status=400)
    assert result["error"]["message"].startswith("That image file is empty (0 bytes).")


async def test_an_empty_mask_is_reported_instead_of_editing_everything(web_bot: Harness) -> None:
    result = await web_bot.post("/api/edit", upload(solid_png(), prompt="a dragon", mask=b""), status=400)
    assert result["error"]["message"].startswith("That mask file is empty (0 bytes).")


async def test_a_form_without_the_image_asks_for_it(web_bot: Harness) -> None:
    form = aiohttp.FormData(default_to_multipart=True)  # as the page sends it, but with no file attached
    form.add_field("prompt", "a dragon")
    result = await web_bot.post("/api/edit", form, status=400)
    assert result["error"]["message"].startswith("Attach the image first")


async def test_a_stored_upload_keeps_no_gps_or_camera_serial(web_bot: Harness, tmp_path: Path) -> None:
    photo = Image.new("RGB", (320, 240), SOLID)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.BodySerialNumber] = "SN-0042-SECRET"
    exif[ExifTags.Base.Orientation] = 6  # taken sideways: the stored file must still say so
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", (51.0, 28.0, 38.0)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif.tobytes(), comment=b"at home", quality=92)
    sent = buffer.getvalue()
    form = aiohttp.FormData()
    form.add_field("image", sent, filename="IMG_0001.jpg", content_type="image/jpeg")
    result = await web_bot.post("/api/vary", form)

    stored_path = tmp_path / "data" / "results" / result["job"]["id"] / "input-1.jpg"
    stored = stored_path.read_bytes()
    for private in (b"PhoneMaker", b"SN-0042-SECRET", b"at home"):
        assert private in sent and private not in stored
    kept = decode(stored)
    assert dict(kept.getexif()) == {ExifTags.Base.Orientation: 6}
    assert not kept.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert ImageChops.difference(kept.convert("RGB"), decode(sent).convert("RGB")).getbbox() is None  # lossless


async def test_an_upload_over_the_limit_is_refused(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, imaging={"max_input_bytes": 2000}):
        result = await bot.post("/api/vary", upload(png(400, 400, (1, 2, 3), mode="RGB") + b"\0" * 4000), status=413)
        assert "too large" in result["error"]["message"]


async def test_an_unexpected_failure_shows_only_the_generic_apology(tmp_path: Path) -> None:
    provider = FakeImages()  # a bug below the playground, at the provider port (no patching of our own code)
    provider.fail_with = RuntimeError("database password is sk-secret123")
    async for bot in _harness(tmp_path, provider=provider):
        result = await bot.imagine("a fox", status=500)
        assert result["error"]["message"].startswith("Sorry, something went wrong on my side")
        assert "sk-secret" not in json.dumps(result)


async def test_no_blocking_calls_on_the_loop_while_serving_a_job(web_bot: Harness) -> None:
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["adapters", "bot"]):
        result = await web_bot.post("/api/edit", upload(solid_png(), prompt="a moon", region="top-half"))
        await web_bot.image(result["images"][0]["url"])


# --- the page, sessions, health and access ------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served_and_a_session_cookie_is_set(web_bot: Harness) -> None:
    web_bot.client.session.cookie_jar.clear()  # a new browser
    page = await web_bot.client.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert SESSION_COOKIE in page.cookies
    assert "/static/app.js" in await page.text()
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = await web_bot.client.get(f"/static/{name}")
        assert asset.headers["Content-Type"].startswith(kind)
    assert (await web_bot.client.get("/static/secret.py")).status == 404


async def test_healthz_reports_adapters_provider_and_queue(web_bot: Harness) -> None:
    response = await web_bot.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ok",
        "adapters": {"playground": "connected"},
        "down": [],
        "provider": "offline",
        "offline": True,
        "queue_length": 0,
        "running": 0,
    }


async def test_healthz_is_503_until_every_adapter_is_connected(web_bot: Harness) -> None:
    await web_bot.playground.stop()
    response = await web_bot.client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["adapters"] == {"playground": "stopped"}


async def test_a_password_is_required_when_configured(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, web_password="hunter2"):
        assert (await bot.client.get("/")).status == 401
        assert (await bot.client.get("/api/config")).status == 401
        wrong = {"Authorization": aiohttp.encode_basic_auth("anyone", "guess")}
        assert (await bot.client.get("/", headers=wrong)).status == 401
        right = {"Authorization": aiohttp.encode_basic_auth("anyone", "hunter2")}
        assert (await bot.client.get("/", headers=right)).status == 200
        assert (await bot.client.get("/healthz")).status == 200


async def test_posts_without_the_playground_header_are_refused(web_bot: Harness) -> None:
    response = await web_bot.client.post("/api/imagine", json={"text": "a fox"})
    assert response.status == 400
    assert await web_bot.core.jobs.store.history(limit=5) == []


async def test_other_host_names_are_refused_without_a_password(web_bot: Harness) -> None:
    response = await web_bot.client.get("/", headers={"Host": "attacker.example:8080"})
    assert response.status == 421


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),  # noqa: S104
        ("192.168.1.5", False),
    ],
)
def test_is_loopback(host: str, local: bool) -> None:
    assert is_loopback(host) is local


async def test_an_expensive_job_waits_for_confirm_and_can_be_cancelled(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, jobs={"confirm_above_usd": 0.000001}):
        held = await bot.imagine("a fox --quality high")
        assert held["status"] == "awaiting_confirmation"
        assert held["estimate_usd"] > 0
        done = await bot.post(f"/api/jobs/{held['job']['id']}/confirm")
        assert done["status"] == "done"
        assert len(done["images"]) == 1
        other = await bot.imagine("a cat --quality high")
        cancelled = await bot.post(f"/api/jobs/{other['job']['id']}/cancel")
        assert cancelled["status"] == "cancelled"


async def test_a_confirmation_under_a_cent_shows_the_digits(tmp_path: Path) -> None:
    async for bot in _harness(tmp_path, jobs={"confirm_above_usd": 0.000001}):
        held = await bot.imagine("a fox --quality low")
        assert held["status"] == "awaiting_confirmation"
        assert held["estimate_text"] == "about $0.0059"  # $0.00588, not "about $0.01" or "$0.00"


async def test_history_lists_this_sessions_finished_jobs_for_a_reloaded_page(web_bot: Harness) -> None:
    first = await web_bot.imagine("a fox --n 2")
    second = await web_bot.imagine("a cat")
    response = await web_bot.client.get("/api/history")
    jobs = (await response.json())["jobs"]
    assert [j["job"]["id"] for j in jobs] == [first["job"]["id"], second["job"]["id"]]  # oldest first
    assert jobs[0]["images"] == first["images"]
    web_bot.client.session.cookie_jar.clear()  # another browser
    await web_bot.client.get("/")
    assert (await (await web_bot.client.get("/api/history")).json())["jobs"] == []


# --- ownership: a session sees and presses only its own jobs ------------------------------------------------


async def test_job_routes_of_another_session_answer_like_an_unknown_job(web_bot: Harness) -> None:
    mine = await web_bot.imagine("a fox --n 2")
    job = mine["job"]["id"]
    unknown = await web_bot.post("/api/jobs/nosuchjob1/reroll", status=404)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger:  # another browser
        await stranger.get(web_bot.client.make_url("/"))  # with a session of its own

        async def attempt(method: str, path: str) -> tuple[int, Any]:
            async with stranger.request(
                method, web_bot.client.make_url(path), json={"prompt": "x"}, headers=HEADERS
            ) as r:
                return r.status, (await r.json() if r.content_type == "application/json" else None)

        for method, path in [
            ("GET", f"/api/jobs/{job}/images/1"),
            ("POST", f"/api/jobs/{job}/reroll"),
            ("POST", f"/api/jobs/{job}/remix"),
            ("POST", f"/api/jobs/{job}/vary/1"),
            ("POST", f"/api/jobs/{job}/confirm"),
            ("POST", f"/api/jobs/{job}/cancel"),
        ]:
            status, body = await attempt(method, path)
            assert status == 404, path
            assert body["error"]["kind"] == unknown["error"]["kind"]
            assert body["error"]["message"].rsplit(" (ref", 1)[0] == unknown["error"]["message"].rsplit(" (ref", 1)[0]
    assert len(await web_bot.core.jobs.store.history(limit=10)) == 1  # the stranger made nothing
    assert (await web_bot.client.get(mine["images"][0]["url"])).status == 200  # the owner still may


# --- one flag grammar -----------------------------------------------------------------------------------------


async def test_an_attachment_with_only_a_count_makes_that_many_variations(web_bot: Harness) -> None:
    result = await web_bot.post("/api/edit", upload(solid_png(), prompt="--n 2"))  # what the page sends
    assert result["job"]["kind"] == "vary"
    assert len(result["images"]) == 2


async def test_an_en_dash_flag_works_like_two_hyphens(web_bot: Harness) -> None:
    result = await web_bot.imagine("a fox –n 2")
    assert result["job"]["prompt"] == "a fox"
    assert len(result["images"]) == 2


# --- jobs a restart cut off ------------------------------------------------------------------------------------


async def test_history_shows_a_job_a_restart_cut_off_and_a_failed_one(tmp_path: Path) -> None:
    provider = FakeImages()
    async for bot in _harness(tmp_path, provider=provider):
        session = {SESSION_COOKIE: _cookie(bot)}  # alice's browser keeps its cookie across the restart
        running = await bot.imagine("a fox")
        # as a crash while the image service was still working leaves it: running, nothing paid
        await bot.core.jobs.store.update(running["job"]["id"], status=JobStatus.RUNNING, paid_at=None, actual_cost=None)
        provider.fail_with = ProviderOutageError("upstream down", detail="HTTP 503 from upstream")
        failed = await bot.imagine("a cat", status=502)
    async for bot in _harness(tmp_path):  # the restart, on the same data folder
        assert [job.id for job in await bot.core.jobs.cut_off("web")] == [running["job"]["id"]]
        bot.client.session.cookie_jar.clear()  # alice's browser, with the cookie it kept
        bot.client.session.cookie_jar.update_cookies(session)
        jobs = (await (await bot.client.get("/api/history")).json())["jobs"]
        assert [j["status"] for j in jobs] == ["interrupted", "failed"]
        assert jobs[0]["job"]["id"] == running["job"]["id"]
        assert jobs[1]["job"]["prompt"] == "a cat"
        assert (
            jobs[0]["message"]
            == "A restart interrupted your request for “a fox”; nothing was charged. Please ask again."
        )
        assert jobs[1]["message"] == failed["error"]["message"]
        assert await bot.core.jobs.cut_off("web") == []  # shown to its session: its requester has been told
        bot.client.session.cookie_jar.clear()
        await bot.client.get("/")
        assert (await (await bot.client.get("/api/history")).json())["jobs"] == []  # not another session's


# --- every entry point x every failure kind: exactly one answer ---------------------------------------------

ENTRY_POINTS = ("imagine", "edit", "vary", "reroll", "remix", "vary result", "confirm")
FAILURES = ("bad option", "budget exceeded", "upstream refusal", "upstream 5xx after retries", "a bug")
RAW = ("Traceback", "sk-", "RuntimeError", "invalid_request_error", "server_error", "moderation_blocked", "org-")


@dataclass
class Scenario:
    """One request of ``entry`` whose answer is a failure of ``failure``."""

    entry: str
    failure: str
    source: str = ""  # the job a button presses

    async def prepare(self, bot: Harness) -> None:
        if self.entry == "confirm":  # two held jobs (the confirmation threshold is tiny); the first confirmed
            first = await bot.imagine("a fox")
            self.source = (await bot.imagine("a fox at night"))["job"]["id"]
            await bot.post(f"/api/jobs/{first['job']['id']}/confirm")
        elif self.entry in ("reroll", "remix", "vary result"):
            self.source = (await bot.imagine("a fox"))["job"]["id"]

    def request(self) -> tuple[str, Any]:
        bad = self.failure == "bad option"
        if self.entry == "imagine":
            return "/api/imagine", {"text": "a fox --quality ultra" if bad else "a fox"}
        if self.entry == "edit":
            return "/api/edit", upload(solid_png(), prompt="a dragon --size 999x999" if bad else "a dragon")
        if self.entry == "vary":
            return "/api/vary", upload(solid_png(), prompt="--n 11" if bad else "")
        if self.entry == "reroll":  # a button has no options: a job that is not this session's
            return "/api/jobs/nosuchjob1/reroll" if bad else f"/api/jobs/{self.source}/reroll", {}
        if self.entry == "remix":
            return f"/api/jobs/{self.source}/remix", {"prompt": " " if bad else "a fox in the rain"}
        if self.entry == "vary result":
            return f"/api/jobs/{self.source}/vary/{9 if bad else 1}", {}
        return f"/api/jobs/{'nosuchjob1' if bad else self.source}/confirm", {}


def table_settings(entry: str, failure: str, fake: FakeOpenAI) -> dict[str, Any]:
    settings: dict[str, Any] = {"openai": {"max_retries": 1}}
    if entry == "confirm":
        settings["jobs"] = {"confirm_above_usd": 0.000001}
    if failure != "a bug":
        settings |= {"openai_api_key": DEFAULT_KEY, "openai_base_url": fake.base_url}
    if failure == "budget exceeded":
        settings["budgets"] = {"images_per_user_per_day": 1}
    return settings


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_every_entry_point_fails_with_exactly_one_friendly_answer(
    tmp_path: Path, entry: str, failure: str
) -> None:
    scenario = Scenario(entry, failure)
    provider = FakeImages() if failure == "a bug" else None
    async with FakeOpenAI(expect_violations=True) as fake:
        async for bot in _harness(tmp_path, provider=provider, **table_settings(entry, failure, fake)):
            await scenario.prepare(bot)
            if failure == "upstream refusal":
                fake.script(moderation_blocked())
            elif failure == "upstream 5xx after retries":
                fake.script(*[replace(server_error(), headers={"Retry-After": "0"})] * 2)
            elif provider is not None:
                provider.fail_with = RuntimeError("db password sk-secret123 leaked in a bug")
            if scenario.entry != "confirm" and failure == "budget exceeded" and not scenario.source:
                await bot.imagine("the one image of the day")

            events = await bot.client.get("/api/events")
            path, body = scenario.request()
            started = asyncio.get_running_loop().time()
            kwargs = {"data": body} if isinstance(body, aiohttp.FormData) else {"json": body}
            response = await bot.client.post(path, params={"task": "t"}, headers=HEADERS, **kwargs)
            answer = await response.json()
            assert asyncio.get_running_loop().time() - started < 3.0
            await bot.client.post("/api/jobs/nosuchjob1/cancel", params={"task": "end"}, headers=HEADERS)
            seen = await read_events(events, lambda e: e["task"] == "end")
            events.close()
            assert fake.pending == 0  # the scripted upstream failure was what the request met

    assert response.status >= 400, answer
    error = answer["error"]
    assert error["message"].endswith(f"(ref {error['ref']})")
    assert not any(raw in json.dumps(answer) for raw in RAW), answer
    finals = [e for e in seen if e["task"] == "t" and e["status"] not in ("accepted", "queued", "running")]
    assert finals == [{"task": "t", "status": "failed", "message": error["message"]}]
    if failure == "a bug":
        assert error["message"].startswith("Sorry, something went wrong on my side")
