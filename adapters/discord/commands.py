"""The application commands: /imagine, /vary, /edit, /history and the "Vary image" / "Edit image" message menus.

Choices come from the model capability table; model, size and region use autocomplete (they accept more
than 25 values, or free text such as ``1536x1024`` and grid cells like ``A1:B2``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import discord
from discord import app_commands
from discord.app_commands import locale_str

from adapters.common import i18n
from adapters.common.words import region_label, size_label
from bot import imaging
from bot.errors import ImageBotError
from bot.settings import Settings

MAX_COUNT = 4  # the count options' descriptions say 1-4 (catalogue msgids are literal text)
_MAX_CHOICES = 25
_SIZE = re.compile(r"^\d{2,5}x\d{2,5}$")
_CELLS = re.compile(r"^[A-Da-d][1-4](:[A-Da-d][1-4])?$")
Count = app_commands.Range[int, 1, MAX_COUNT]


class CommandHandlers(Protocol):
    """What the adapter does for each command (it has already been checked against the allow-lists)."""

    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        count: int | None,
        size: str | None,
        quality: str | None,
        model: str | None,
        private: bool | None,
    ) -> None: ...

    async def history(self, interaction: discord.Interaction) -> None: ...

    async def vary(
        self, interaction: discord.Interaction, image: discord.Attachment, count: int | None, prompt: str | None
    ) -> None: ...

    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None,
        region: str | None,
    ) -> None: ...

    async def vary_message(self, interaction: discord.Interaction, message: discord.Message) -> None: ...

    async def edit_message(self, interaction: discord.Interaction, message: discord.Message) -> None: ...


def _matching(values: list[str], current: str, label: Callable[[str], str] = str) -> list[app_commands.Choice[str]]:
    """Choices whose value or label (in the reader's language) holds what was typed so far."""
    current = current.strip().lower()
    labelled = [(v, label(v)) for v in dict.fromkeys(values)]
    found = [(v, shown) for v, shown in labelled if current in v.lower() or current in shown.lower()]
    return [app_commands.Choice(name=shown, value=v) for v, shown in found[:_MAX_CHOICES]]


def _live(catalog_names: list[str], settings: Settings) -> list[str]:
    catalog = settings.catalog()
    live: list[str] = []
    for name in catalog_names:
        try:
            catalog.resolve(name)
        except ImageBotError:  # retired
            continue
        live.append(name)
    return live


def install_commands(
    tree: app_commands.CommandTree[discord.Client], handlers: CommandHandlers, settings: Settings
) -> None:
    """Add the bot's commands to ``tree`` (nothing is sent to Discord here)."""
    catalog = settings.catalog()
    models = _live([*settings.aliases, *settings.models], settings)
    qualities = list(dict.fromkeys(q for name in models for q in catalog.resolve(name)[1].qualities))

    async def model_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return _matching(models, current)

    async def sizes(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        chosen = getattr(interaction.namespace, "model", None)
        try:
            _, spec = catalog.resolve(chosen)
        except ImageBotError:  # an unknown model: offer the default's sizes, the command will explain
            _, spec = catalog.resolve(None)
        offered = list(spec.sizes)
        typed = current.strip().lower().replace(" ", "")
        if _SIZE.match(typed) and spec.size_rule is not None:
            offered.insert(0, typed)
        with i18n.speaking(interaction.locale.value):  # labels in the typer's language
            return _matching(offered, current if not _SIZE.match(typed) else "", size_label)

    async def regions(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        typed = current.strip().upper()
        if _CELLS.match(typed):
            return [app_commands.Choice(name=typed, value=typed)]
        with i18n.speaking(interaction.locale.value):
            return _matching(list(imaging.REGION_NAMES), current, region_label)

    @tree.command(name="imagine", description=locale_str("Make images from a text prompt"))
    @app_commands.describe(
        prompt=locale_str("What to draw"),
        count=locale_str("How many images (1-4)"),
        size=locale_str("Image size, e.g. 1024x1024"),
        quality=locale_str("Image quality"),
        model=locale_str("Image model"),
        private=locale_str("Only you see the result until you publish it"),
    )
    @app_commands.autocomplete(size=sizes, model=model_names)
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        count: Count | None = None,
        size: str | None = None,
        quality: str | None = None,
        model: str | None = None,
        private: bool | None = None,
    ) -> None:
        await handlers.imagine(interaction, prompt, count, size, quality, model, private)

    if qualities:
        choices = [app_commands.Choice(name=locale_str(q), value=q) for q in qualities[:_MAX_CHOICES]]
        imagine = app_commands.choices(quality=choices)(imagine)

    @tree.command(name="vary", description=locale_str("Make variations of an image"))
    @app_commands.describe(
        image=locale_str("The image to vary"),
        count=locale_str("How many variations (1-4)"),
        prompt=locale_str("Direction"),
    )
    async def vary(
        interaction: discord.Interaction,
        image: discord.Attachment,
        count: Count | None = None,
        prompt: str | None = None,
    ) -> None:
        await handlers.vary(interaction, image, count, prompt)

    @tree.command(name="edit", description=locale_str("Change part of an image with a prompt"))
    @app_commands.describe(
        image=locale_str("The image to edit"),
        prompt=locale_str("What should change"),
        mask=locale_str("Transparent or white = the area to change"),
        region=locale_str("Where to change: top-half, center, border… or grid cells like A1:B2"),
    )
    @app_commands.autocomplete(region=regions)
    async def edit(
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None = None,
        region: str | None = None,
    ) -> None:
        await handlers.edit(interaction, image, prompt, mask, region)

    @tree.command(name="history", description="Your last 10 image requests, only for you")
    async def history(interaction: discord.Interaction) -> None:
        await handlers.history(interaction)

    async def vary_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await handlers.vary_message(interaction, message)

    async def edit_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await handlers.edit_message(interaction, message)

    tree.add_command(app_commands.ContextMenu(name="Vary image", callback=vary_message))
    tree.add_command(app_commands.ContextMenu(name="Edit image", callback=edit_message))
