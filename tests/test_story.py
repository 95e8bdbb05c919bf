"""Titles that tell a result's story: built once from the job, formatted (and escaped) by each platform."""

from __future__ import annotations

import pytest

from adapters.common.story import Story, story, upscale_story
from adapters.discord import render as discord_render
from adapters.slack import render as slack_render
from bot.models import Job, JobContext, JobStatus, Origin

ALICE = JobContext("slack", "U0ALICE", "T1", "C1")


def job(
    kind: str, prompt: str | None = "a red fox in the snow", origin: Origin | None = None, **request: object
) -> Job:
    options: dict[str, object] = {"prompt": prompt, "n": 1, **request}
    if origin is not None:
        options["origin"] = origin.to_json()
    return Job("j1", kind, ALICE, options, "hash", JobStatus.DONE, 0.0, 0.0, 1)


@pytest.mark.parametrize(
    ("made", "title"),
    [
        (job("generate"), "a red fox in the snow"),
        (job("vary", None, Origin("j0", 2, "vary", "strong", about="a red fox")), "Variations (strong) of image 2 — a red fox"),  # noqa: E501
        (job("vary", None, Origin("j0", 1, "vary", about="a red fox")), "Variations of image 1 — a red fox"),
        (job("vary", None), "Variations"),
        (job("edit", "make it snowy", Origin("j0", 1, "edit", "top-half"), region="top-half"), "Edit of image 1 (top-half) — make it snowy"),  # noqa: E501
        (job("edit", "a hat", inputs=["input-1.png", "mask.png"]), "Edit (with a mask) — a hat"),
        (job("edit", "a hat"), "Edit — a hat"),
        (job("zoom", origin=Origin("j0", 1, "zoom", "2")), "Zoom out 2× of image 1 — a red fox in the snow"),
        (job("zoom", origin=Origin("j0", 3, "zoom", "1.5")), "Zoom out 1.5× of image 3 — a red fox in the snow"),
        (job("pan", origin=Origin("j0", 1, "pan", "left")), "Pan left of image 1 — a red fox in the snow"),
        (job("pan", origin=Origin("j0", 1, "pan", "left", reroll=True)), "Reroll of pan left of image 1 — a red fox in the snow"),  # noqa: E501
        (job("generate", origin=Origin("j0", reroll=True)), "Reroll — a red fox in the snow"),
        (job("generate", "at night", Origin("j0", 0, "remix", about="a fox")), "Remix — at night"),
    ],
)  # fmt: skip
def test_every_kind_of_job_tells_where_it_came_from(made: Job, title: str) -> None:
    assert story(made).plain() == title and story(made).requester == "U0ALICE"


def test_upscale_story_names_the_image() -> None:
    assert upscale_story(job("generate"), 3) == Story("Upscale of image 3", "a red fox in the snow", "U0ALICE")


def test_slack_escapes_the_title_and_mentions_the_requester() -> None:
    told = story(job("zoom", "<!channel> a fox & *hen*", Origin("j0", 1, "zoom", "2")))
    comment = slack_render.story_comment(told)
    assert comment == "<@U0ALICE> · *Zoom out 2× of image 1*\n> &lt;!channel&gt; a fox &amp; *hen*"


def test_discord_formats_the_title_in_markdown_with_the_prompt_escaped() -> None:
    told = story(job("pan", "a *bold* fox_", Origin("j0", 2, "pan", "up")))
    text = discord_render.story_text(told, "42")
    assert text == "**Pan up of image 2** — *a \\*bold\\* fox\\_* — <@42>"
    long = discord_render.story_text(story(job("pan", "word " * 1000, Origin("j0", 2, "pan", "up"))), "42")
    assert len(long) <= discord_render.MESSAGE_LIMIT and long.endswith("— <@42>")
