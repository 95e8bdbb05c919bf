"""Discord: U posts one image as its own message with the upscale tools; the tools make stories with titles."""
# ruff: noqa: F811  (the fixtures fake and bot are imported from tests.test_discord)

from __future__ import annotations

from pathlib import Path

from adapters.discord import DiscordAdapter
from tests.fakes.discord_server import FakeDiscord, make_user
from tests.fakes.openai_server import FakeOpenAI
from tests.test_discord import (  # noqa: F401 (the fixtures fake and bot)
    bot,
    custom_ids,
    decode,
    fake,
    openai_settings,
    result_of,
    running,
    sent_image,
)


async def test_u_posts_one_image_with_vary_zoom_pan_and_remix(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a red fox in the snow", "count": 2})
        grid = await result_of(fake, inter.id)
        job = custom_ids(grid)[0].split(":")[2]

        press = await fake.dispatch_component(f"img:u:{job}:2", message=grid.message)
        upscaled = await result_of(fake, press.id)

        assert len(upscaled.files) == 1 and decode(upscaled.files[0].data).size == (1024, 1024)
        tools = ["vs", "vt", "z15", "z2", "pl", "pr", "pu", "pd", "x"]
        assert custom_ids(upscaled) == [f"img:{tool}:{job}:2" for tool in tools]
        labels = [
            c.get("label") or c.get("emoji", {}).get("name") for row in upscaled.components for c in row["components"]
        ]
        assert labels == ["Vary (Subtle)", "Vary (Strong)", "Zoom out 1.5x", "Zoom out 2x", "⬅️", "➡️", "⬆️", "⬇️", "✏️"]
        assert (upscaled.content or "").startswith("**Upscale of image 2** — *a red fox in the snow* — <@")
        assert len(openai.image_requests) == 1  # U makes nothing new

        zoom = await fake.dispatch_component(f"img:z2:{job}:2", message=upscaled.message)
        zoomed = await result_of(fake, zoom.id)
        sent = openai.last
        assert sent.path.endswith("/images/edits") and sent.param("size") == "2048x2048"
        canvas = decode(sent_image(openai)).convert("RGBA")
        assert canvas.size == (2048, 2048)
        assert canvas.getchannel("A").getpixel((0, 0)) == 0 and canvas.getchannel("A").getpixel((1024, 1024)) == 255
        assert (zoomed.content or "").startswith("**Zoom out 2× of image 2** — *a red fox in the snow* — <@")
        zoomed_job = custom_ids(zoomed)[0].split(":")[2]

        pan = await fake.dispatch_component(f"img:u:{zoomed_job}:1", message=zoomed.message)
        again = await result_of(fake, pan.id)
        left = await fake.dispatch_component(f"img:pl:{zoomed_job}:1", message=again.message)
        panned = await result_of(fake, left.id)
        assert openai.last.param("size") == "2048x1360"  # 3072x2048 on the model's 2048 px input edge
        alpha = decode(sent_image(openai)).convert("RGBA").getchannel("A")
        assert alpha.getpixel((0, 680)) == 0 and alpha.getpixel((2047, 680)) == 255
        assert (panned.content or "").startswith("**Pan left of image 1** — *a red fox in the snow*")

        strong = await fake.dispatch_component(f"img:vt:{job}:2", message=upscaled.message)
        varied = await result_of(fake, strong.id)
        assert (varied.content or "").startswith("**Variations (strong) of image 2** — *a red fox in the snow*")
        assert "bold variation" in (openai.last.param("prompt") or "")
    fake.assert_no_errors()


async def test_an_edit_of_a_result_and_its_reroll_say_which_image_and_region(fake: FakeDiscord, tmp_path: Path) -> None:
    async with FakeOpenAI() as openai, running(openai_settings(fake, openai, tmp_path)):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a red fox", "count": 2})
        grid = await result_of(fake, inter.id)
        menu = await fake.dispatch_message_command("Edit image", grid.message)
        modal = await fake.next_callback(menu.id)
        submit = await fake.dispatch_modal_submit(
            modal.data["custom_id"], {"prompt": "make it snowy", "region": "top-half"}
        )
        edited = await result_of(fake, submit.id)
        assert (edited.content or "").startswith("**Edit of image 1 (top-half)** — *make it snowy* — <@")
        edited_job = custom_ids(edited)[0].split(":")[2]

        press = await fake.dispatch_component(f"img:r:{edited_job}:0", message=edited.message)
        rerolled = await result_of(fake, press.id)
        assert (rerolled.content or "").startswith("**Reroll of edit of image 1 (top-half)** — *make it snowy*")
        assert openai.last.files["mask"] and openai.last.param("prompt") == "make it snowy"
    fake.assert_no_errors()


async def test_no_blocking_calls_on_the_loop_during_upscale_zoom_and_pan(
    fake: FakeDiscord, bot: DiscordAdapter
) -> None:
    """blockbuster raises on blocking calls (file I/O, sleep, sockets...) made on the loop by the adapter or core:
    the canvas is built, and the image read back, in worker threads."""
    from tests.blocking import no_blocking_calls

    with no_blocking_calls(["adapters.discord", "adapters.common", "bot"]):
        inter = await fake.dispatch_slash_command("imagine", {"prompt": "a harbour", "count": 2})
        grid = await result_of(fake, inter.id)
        job = custom_ids(grid)[0].split(":")[2]
        upscaled = await result_of(fake, (await fake.dispatch_component(f"img:u:{job}:1", message=grid.message)).id)
        for tool in ("z15", "pu"):
            press = await fake.dispatch_component(f"img:{tool}:{job}:1", message=upscaled.message)
            assert (await result_of(fake, press.id)).files
    fake.assert_no_errors()


async def test_others_may_not_zoom_or_pan_someone_elses_image(fake: FakeDiscord, bot: DiscordAdapter) -> None:
    inter = await fake.dispatch_slash_command("imagine", {"prompt": "a harbour"})
    grid = await result_of(fake, inter.id)
    job = custom_ids(grid)[0].split(":")[2]
    upscaled = await result_of(fake, (await fake.dispatch_component(f"img:u:{job}:1", message=grid.message)).id)
    stranger = make_user("1185000000000000999", "bob")
    for tool, message in [("u", grid), ("z2", upscaled), ("pl", upscaled), ("vt", upscaled)]:
        press = await fake.dispatch_component(f"img:{tool}:{job}:1", message=message.message, user=stranger)
        callback = await fake.next_callback(press.id)
        assert (callback.type, callback.data["flags"]) == (4, 64) and "Only <@" in callback.data["content"]
    assert len(await bot.core.jobs.store.history(limit=10)) == 1
    fake.assert_no_errors()
