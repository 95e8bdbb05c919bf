"""Buttons and modals. Buttons are ``DynamicItem``s whose state lives in the custom_id, so they keep working
for messages sent before a restart; every callback hands over to the adapter's ``Handlers``."""

from __future__ import annotations

import re
from typing import Any, Protocol, cast

import discord

from adapters.common.i18n import _
from bot.text import N_, Text

RESULT_TEMPLATE = r"img:(?P<action>v|u|r|x|vs|vt|z15|z2|pl|pr|pu|pd):(?P<job>[a-z0-9]+):(?P<index>\d+)"
CONFIRM_TEMPLATE = r"img:(?P<action>ok|no):(?P<job>[a-z0-9]+)"
JOB_TEMPLATE = r"img:(?P<action>pub|open):(?P<job>[a-z0-9]+)"
_LABELS: dict[str, tuple[str | None, Text | None]] = {"r": ("🔄", None), "x": ("✏️", None)}
# the tools under an upscaled image (one image of a result, posted on its own)
UPSCALE_LABELS: dict[str, tuple[str | None, Text | None]] = {
    "vs": (None, N_("Vary (Subtle)")),
    "vt": (None, N_("Vary (Strong)")),
    "z15": (None, N_("Zoom out 1.5x")),
    "z2": (None, N_("Zoom out 2x")),
    "pl": ("⬅️", None),
    "pr": ("➡️", None),
    "pu": ("⬆️", None),
    "pd": ("⬇️", None),
}
PROMPT_LIMIT = 4000  # a text input holds at most 4000 characters
MODAL_TIMEOUT = 15 * 60.0  # forget modals never submitted (discord.py keeps open ones in memory)


class Handlers(Protocol):
    """What the adapter does when a button is pressed or a modal submitted."""

    async def result_button(self, interaction: discord.Interaction, action: str, job_id: str, index: int) -> None: ...

    async def confirm_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...

    async def job_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...

    async def remix_submit(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None: ...

    async def edit_submit(
        self,
        interaction: discord.Interaction,
        target: discord.Message,
        prompt: str,
        region: str | None,
        masks: list[discord.Attachment],
    ) -> None: ...


class HasHandlers(Protocol):
    handlers: Handlers


def handlers_of(interaction: discord.Interaction) -> Handlers:
    return cast(HasHandlers, interaction.client).handlers


class ResultButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=RESULT_TEMPLATE):
    """V<i> (variations), U<i> (that image alone), 🔄 (reroll) and ✏️ (remix) under a result; under an upscaled
    image: Vary (Subtle)/(Strong), Zoom out 1.5x/2x, Pan ⬅️➡️⬆️⬇️ and ✏️ (remix)."""

    def __init__(self, action: str, job_id: str, index: int, *, row: int | None = None) -> None:
        emoji, text = _LABELS.get(action) or UPSCALE_LABELS.get(action) or (None, None)
        label = _(text) if text is not None else None if emoji else f"{action.upper()}{index}"
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label, emoji=emoji, custom_id=f"img:{action}:{job_id}:{index}", style=discord.ButtonStyle.secondary
        )
        super().__init__(button, row=row)
        self.action, self.job_id, self.index = action, job_id, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ResultButton:
        return cls(match["action"], match["job"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await handlers_of(interaction).result_button(interaction, self.action, self.job_id, self.index)


class ConfirmButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CONFIRM_TEMPLATE):
    """Confirm or Cancel a job that waits for the user's go-ahead (an expensive request)."""

    def __init__(self, action: str, job_id: str) -> None:
        confirm = action == "ok"
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=_("Confirm") if confirm else _("Cancel"),
            style=discord.ButtonStyle.success if confirm else discord.ButtonStyle.secondary,
            custom_id=f"img:{action}:{job_id}",
        )
        super().__init__(button)
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ConfirmButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await handlers_of(interaction).confirm_button(interaction, self.action, self.job_id)


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=JOB_TEMPLATE):
    """Publish (a private result, to the channel) and Open (a result listed by /history, again)."""

    def __init__(self, action: str, job_id: str, *, label: str | None = None, row: int | None = None) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label or ("Publish" if action == "pub" else "Open"),
            style=discord.ButtonStyle.primary if action == "pub" else discord.ButtonStyle.secondary,
            custom_id=f"img:{action}:{job_id}",
        )
        super().__init__(button, row=row)
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await handlers_of(interaction).job_button(interaction, self.action, self.job_id)


def _text_input(custom_id: str, **options: Any) -> discord.ui.TextInput[Any]:
    return discord.ui.TextInput(custom_id=custom_id, **options)


class RemixModal(discord.ui.Modal):
    """✏️ Remix: the job's prompt, pre-filled, to change before running it again."""

    def __init__(self, job_id: str, prompt: str) -> None:
        super().__init__(title=_("Remix"), custom_id=f"remix:{job_id}", timeout=MODAL_TIMEOUT)
        self.job_id = job_id
        self.prompt = _text_input(
            "prompt", style=discord.TextStyle.paragraph, default=prompt[:PROMPT_LIMIT], max_length=PROMPT_LIMIT
        )
        self.add_item(discord.ui.Label(text=_("Prompt"), component=self.prompt))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await handlers_of(interaction).remix_submit(interaction, self.job_id, self.prompt.value)


class EditModal(discord.ui.Modal):
    """ "Edit image" on a message: what to change, optionally where (a region) or a mask upload."""

    def __init__(self, target: discord.Message) -> None:
        super().__init__(title=_("Edit image"), custom_id=f"edit:{target.id}", timeout=MODAL_TIMEOUT)
        self.target = target
        self.prompt = _text_input("prompt", style=discord.TextStyle.paragraph, max_length=PROMPT_LIMIT)
        self.region = _text_input(
            "region", required=False, max_length=40, placeholder=_("top-half, center, border… or grid cells like A1:B2")
        )
        self.mask: discord.ui.FileUpload[Any] = discord.ui.FileUpload(
            custom_id="mask", required=False, min_values=0, max_values=1
        )
        self.add_item(discord.ui.Label(text=_("What should change?"), component=self.prompt))
        self.add_item(discord.ui.Label(text=_("Where (optional)"), component=self.region))
        self.add_item(
            discord.ui.Label(
                text=_("Mask (optional)"),
                description=_("Transparent or white = the area to change"),
                component=self.mask,
            )
        )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        region = self.region.value.strip() or None
        await handlers_of(interaction).edit_submit(
            interaction, self.target, self.prompt.value, region, self.mask.values
        )
