"""The playground in a real browser (Debian's Chromium through Playwright) against `imagebot run`."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.web.session import SESSION_COOKIE
from bot.bootstrap import new_http_session, open_core
from bot.models import GenerateRequest, JobContext, JobStatus
from bot.settings import load_settings
from tests.fakes.provider import FakeImages
from tests.images import png
from tests.test_run import Running, run_env, start, wait_healthy

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOADED_IMAGES = (
    "n => [...document.querySelectorAll('.images img')].filter(i => i.complete && i.naturalWidth).length >= n"
)


def require_browser() -> None:
    """Skip without Playwright or Chromium, except in CI (CI=true), where .ci/run installs both: fail there."""
    missing = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Running]:
    require_browser()
    env = run_env(tmp_path)
    process = await start(env, tmp_path)
    running = Running(process, f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}")
    try:
        await wait_healthy(f"{running.base_url}/healthz", process)
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.communicate()


async def test_imagine_vary_and_upload_in_the_browser(bot: Running, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            def console(message: Any) -> None:
                if message.type == "error" and "status of 400" not in message.text:  # the friendly error below
                    problems.append(f"console: {message.text}")

            page.on("console", console)
            await page.goto(bot.base_url + "/")
            await expect(page.locator("#status")).to_have_attribute("data-state", "online")

            # imagine, with flags
            await page.locator("#input").fill("/imagine a red fox in the snow --n 2 --size 1536x1024")
            await page.locator("#input").press("Enter")
            await page.wait_for_function(LOADED_IMAGES, arg=2)
            first = page.locator("article.from-bot").filter(has=page.locator(".images")).first
            await expect(first.locator(".images img")).to_have_count(2)
            await expect(first.get_by_text("a red fox in the snow", exact=True)).to_be_visible()
            size = await first.locator(".images img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [1536, 1024]

            # V1: variations of the first image (as many as the job had)
            await first.get_by_role("button", name="V1").click()
            await page.wait_for_function(LOADED_IMAGES, arg=4)

            # upload a picture, pick cells on the grid, send without a prompt: variations
            await page.locator("#file-input").set_input_files(
                files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png(320, 240, (30, 160, 90))}]
            )
            await expect(page.locator("#attachment")).to_be_visible()
            await page.locator('.cell[data-cell="A1"]').click()
            await page.locator('.cell[data-cell="B2"]').click()
            await expect(page.locator("#region-value")).to_have_text("A1:B2")
            await page.screenshot(path=tmp_path / "composer.png")
            await page.locator("#region-clear").click()
            await page.locator("#send").click()
            await page.wait_for_function(LOADED_IMAGES, arg=5)
            last = page.locator("article.from-bot").last
            await expect(last.locator(".note").first).to_contain_text("variations")
            await expect(page.locator("#attachment")).to_be_hidden()

            # upload again and edit only the top half, picked with a named-region button
            await page.locator("#file-input").set_input_files(
                files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png(320, 240, (30, 160, 90))}]
            )
            await page.get_by_role("button", name="Top half").click()
            await expect(page.locator("#region-value")).to_have_text("Top half")
            await page.locator("#input").fill("a dragon in the sky")
            await page.locator("#input").press("Enter")
            await page.wait_for_function(LOADED_IMAGES, arg=6)
            await expect(page.locator("article.from-bot").last.locator(".note").first).to_contain_text("edit")

            # a friendly error with its reference id
            await page.locator("#input").fill("/imagine --n 2")
            await page.locator("#input").press("Enter")
            error = page.locator("article.from-bot .error").last
            await expect(error).to_contain_text("Please describe the image you want")
            await expect(error).to_contain_text("(ref ")

            await page.screenshot(path=tmp_path / "playground.png", full_page=False)
            assert (tmp_path / "playground.png").stat().st_size > 10_000

            # a Japanese browser (Accept-Language: ja-JP) reads the page in Japanese
            japanese = await browser.new_page(locale="ja-JP", viewport={"width": 1280, "height": 900})
            japanese.on("pageerror", lambda error: problems.append(f"page error (ja): {error}"))
            await japanese.goto(bot.base_url + "/")
            await expect(japanese.get_by_role("button", name="送信")).to_be_visible()
            await expect(japanese.locator("#status-text")).to_contain_text("オンライン")
            await expect(japanese.locator("#topic")).to_contain_text("/imagine と説明を入力")
            await expect(japanese.locator("html")).to_have_attribute("lang", "ja")
            await japanese.screenshot(path=tmp_path / "playground-ja.png")

            # a reload shows this session's results again
            await page.reload()
            await page.wait_for_function(LOADED_IMAGES, arg=6)
        finally:
            await browser.close()
    assert problems == []


async def test_a_job_a_restart_cut_off_shows_in_the_page_as_interrupted(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    require_browser()
    env = run_env(tmp_path)
    base_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
    process = await start(env, tmp_path)  # the first run: the page gives this browser its session
    try:
        await wait_healthy(f"{base_url}/healthz", process)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser, browser.get(base_url + "/") as page:
            session = page.cookies[SESSION_COOKIE].value
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    user = session.split(".")[0]
    settings = load_settings(data_dir=Path(env["IMAGEBOT_DATA_DIR"]))
    async with new_http_session() as http, open_core(settings, http, provider=FakeImages()) as core:
        outcome = await core.jobs.submit(JobContext(platform="web", user=user), GenerateRequest(prompt="a lost fox"))
        # as a crash while the image service was still working leaves it: running, nothing paid, no files
        await core.jobs.store.update(outcome.job.id, status=JobStatus.RUNNING, paid_at=None, actual_cost=None)
    process = await start(env, tmp_path)  # the restart
    try:
        await wait_healthy(f"{base_url}/healthz", process)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context()
                await context.add_cookies([{"name": SESSION_COOKIE, "value": session, "url": base_url}])
                page = await context.new_page()
                await page.goto(base_url + "/")
                past = page.locator("article.from-bot").filter(has_text="a lost fox")
                await expect(past).to_contain_text(
                    "A restart interrupted your request for “a lost fox”; nothing was charged."
                )
            finally:
                await browser.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()


SCREENSHOTS = Path(os.environ.get("IMAGEBOT_SCREENSHOTS", "")) if os.environ.get("IMAGEBOT_SCREENSHOTS") else None


async def test_cancel_help_and_the_small_screen_in_the_browser(tmp_path: Path) -> None:
    """Cancel while queued (no call reaches the image service), the empty-message hint, the flag help with its
    values, aria-pressed grid cells, download buttons on keyboard focus, and the page at 390 px wide."""
    from playwright.async_api import async_playwright, expect

    from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI

    require_browser()
    shots = SCREENSHOTS or tmp_path
    async with FakeOpenAI(latency=1.5) as openai:
        env = run_env(
            tmp_path,
            OPENAI_API_KEY=DEFAULT_KEY,
            OPENAI_BASE_URL=openai.base_url,
            IMAGEBOT_LIMITS__MAX_CONCURRENT="1",
        )
        base_url = f"http://127.0.0.1:{env['IMAGEBOT_WEB_PORT']}"
        process = await start(env, tmp_path)
        try:
            await wait_healthy(f"{base_url}/healthz", process)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    await page.goto(base_url + "/")
                    await expect(page.locator("#status")).to_have_attribute("data-state", "online")

                    # the help lists each flag with the values it takes, from the catalogue
                    help_list = page.get_by_role("list", name="Flags")
                    await expect(help_list.locator("li").filter(has_text="--size")).to_contain_text("1536x1024")
                    await expect(help_list.locator("li").filter(has_text="--quality")).to_contain_text("high")

                    # an empty message gets a friendly hint instead of nothing
                    await page.locator("#send").click()
                    await expect(page.locator("#composer-hint")).to_contain_text("Type what you'd like me to draw")

                    # one job runs, the next waits in line and is cancelled: it never reaches the image service
                    await page.locator("#input").fill("a running fox")
                    await page.locator("#input").press("Enter")
                    await page.locator("#input").fill("a waiting owl")
                    await page.locator("#input").press("Enter")
                    waiting = page.locator("article.from-bot").last
                    await expect(waiting.locator(".progress")).to_contain_text("Queued — #1 in line")
                    await page.screenshot(path=shots / "queued-1280.png")
                    await waiting.get_by_role("button", name="Cancel this request").click()
                    await expect(waiting.locator(".note.cancelled")).to_have_text(
                        "Cancelled — nothing was made or charged."
                    )
                    await page.wait_for_function(LOADED_IMAGES, arg=1)
                    assert len(openai.image_requests) == 1

                    # the download button shows when its image has keyboard focus, not only on hover
                    tile = page.locator(".tile").first
                    download = tile.locator("a.dl")
                    await page.mouse.move(1270, 10)  # not hovering the image
                    await expect(download).to_have_css("opacity", "0")
                    await tile.locator("a").first.focus()
                    await expect(download).to_have_css("opacity", "1")

                    # grid cells say whether they are picked
                    await page.locator("#file-input").set_input_files(
                        files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png(320, 240, (30, 160, 90))}]
                    )
                    cell = page.locator('.cell[data-cell="B2"]')
                    await expect(cell).to_have_attribute("aria-pressed", "false")
                    await cell.click()
                    await expect(cell).to_have_attribute("aria-pressed", "true")
                    await page.screenshot(path=shots / "playground-1280.png")

                    # at 390 px the flag chips stay whole ("--size" never breaks after its dashes)
                    await page.set_viewport_size({"width": 390, "height": 844})
                    await page.locator("#attach-remove").click()
                    size_chip = help_list.locator("code.flag").filter(has_text="--size")
                    height = await size_chip.evaluate("c => c.getBoundingClientRect().height")
                    line = await size_chip.evaluate("c => parseFloat(getComputedStyle(c).lineHeight) || 20")
                    assert height < 1.5 * line, f"--size wraps: {height}px for a {line}px line"
                    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 390 px"
                    placeholder = await page.locator("#input").evaluate(
                        "i => [i.placeholder, i.scrollHeight, i.clientHeight]"
                    )
                    assert "--size" in placeholder[0] and placeholder[1] <= placeholder[2], placeholder  # one line
                    await waiting.scroll_into_view_if_needed()
                    await page.screenshot(path=shots / "playground-390.png")
                finally:
                    await browser.close()
        finally:
            process.send_signal(signal.SIGTERM)
            await process.communicate()
