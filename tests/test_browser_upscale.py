"""The playground's U → Zoom out → Pan in a real browser (Debian's Chromium through Playwright), at desktop and
phone widths, against `imagebot run` (the offline provider)."""
# ruff: noqa: F811  (the fixture bot is imported from tests.test_browser)

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, LOADED_IMAGES, bot  # noqa: F401
from tests.test_run import Running

NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


async def test_upscale_then_zoom_out_then_pan_in_the_browser(bot: Running, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            def console(message: Any) -> None:
                if message.type == "error":
                    problems.append(f"console: {message.text}")

            page.on("console", console)
            await page.goto(bot.base_url + "/")
            await expect(page.locator("#status")).to_have_attribute("data-state", "online")

            await page.locator("#input").fill("/imagine a red fox in the snow --n 2")
            await page.locator("#input").press("Enter")
            await page.wait_for_function(LOADED_IMAGES, arg=2)
            grid = page.locator("article.from-bot").filter(has=page.locator(".images")).first

            # U2: the second image on its own, with its tools
            await grid.get_by_role("button", name="U2").click()
            await page.wait_for_function(LOADED_IMAGES, arg=3)
            upscaled = page.locator("article.from-bot").last
            await expect(upscaled.locator(".story strong")).to_have_text("Upscale of image 2")
            await expect(upscaled.locator(".story em")).to_have_text("a red fox in the snow")
            names = ["Vary (Subtle)", "Vary (Strong)", "Zoom out 1.5x", "Zoom out 2x", "Pan left", "Pan right"]
            for name in [*names, "Pan up", "Pan down", "Remix"]:
                await expect(upscaled.get_by_role("button", name=name)).to_be_visible()

            # Zoom out 2x: a new result, titled with where it came from, twice the size
            await upscaled.get_by_role("button", name="Zoom out 2x").click()
            await page.wait_for_function(LOADED_IMAGES, arg=4)
            zoomed = page.locator("article.from-bot").last
            await expect(zoomed.locator(".story strong")).to_have_text("Zoom out 2× of image 2")
            size = await zoomed.locator(".images img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [2048, 2048]

            # U1 of the zoomed result, then Pan left
            await zoomed.get_by_role("button", name="U1").click()
            await page.wait_for_function(LOADED_IMAGES, arg=5)
            await page.locator("article.from-bot").last.get_by_role("button", name="Pan left").click()
            await page.wait_for_function(LOADED_IMAGES, arg=6)
            panned = page.locator("article.from-bot").last
            await expect(panned.locator(".story strong")).to_have_text("Pan left of image 1")
            size = await panned.locator(".images img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [2048, 1360]

            await page.screenshot(path=tmp_path / "upscale-1280.png")
            await page.set_viewport_size({"width": 390, "height": 844})
            await upscaled.scroll_into_view_if_needed()
            await page.screenshot(path=tmp_path / "upscale-390.png")
            assert await page.evaluate(NO_SIDEWAYS_SCROLL)
            assert (tmp_path / "upscale-1280.png").stat().st_size > 10_000
        finally:
            await browser.close()
    assert problems == []
