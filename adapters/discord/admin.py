"""``/imagebot-admin usage``: this month's spend on this server per channel and per user, for members with Manage
Server, shown only to them.

Discord hides the command from everyone else (``default_member_permissions``), but a server's admins can grant it
to anyone in their Integrations settings, so the permission is checked again when the command is used.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.app_commands import locale_str

from adapters.common import i18n
from adapters.common.admin import month_usage, usage_text
from adapters.common.i18n import _
from adapters.common.lifecycle import friendly
from bot.ports import JobStore
from bot.text import N_

log = logging.getLogger(__name__)

GROUP_NAME = "imagebot-admin"
ADMIN_PERMISSIONS = discord.Permissions(manage_guild=True)  # "Manage Server", 0x20
NOT_AN_ADMIN = N_("Only members with the Manage Server permission can see the bot's usage.")
ONLY_IN_A_SERVER = N_("The bot's usage is shown per server: use this command in a server.")


def is_admin(interaction: discord.Interaction) -> bool:
    """Manage Server (or Administrator) in the member's permissions, as Discord resolved them for this interaction."""
    permissions = interaction.permissions
    return interaction.guild_id is not None and (permissions.manage_guild or permissions.administrator)


async def show_usage(interaction: discord.Interaction, store: JobStore) -> None:
    """Refuse non-admins at once; else acknowledge (privately), read the ledger and answer privately."""
    i18n.use(interaction.locale.value)  # in the admin's language
    if interaction.guild_id is None:
        await interaction.response.send_message(_(ONLY_IN_A_SERVER), ephemeral=True)
        return
    if not is_admin(interaction):
        log.info("refused /%s usage to user %s in %s", GROUP_NAME, interaction.user.id, interaction.guild_id)
        await interaction.response.send_message(_(NOT_AN_ADMIN), ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        text = usage_text(await month_usage(store, "discord", str(interaction.guild_id)))
    except Exception as exc:  # one friendly, redacted line with a reference id
        text = friendly(exc)
    await interaction.edit_original_response(content=text, allowed_mentions=discord.AllowedMentions.none())


def install_admin(tree: app_commands.CommandTree[discord.Client], store: JobStore) -> None:
    """Add ``/imagebot-admin usage`` to ``tree`` (a group: more admin subcommands can join it)."""
    group = app_commands.Group(
        name=GROUP_NAME,
        description=locale_str("Admin tools for imagebot"),
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )

    @group.command(
        name="usage", description=locale_str("This month's spend per channel and per user (only you see it)")
    )
    async def usage(interaction: discord.Interaction) -> None:
        await show_usage(interaction, store)

    tree.add_command(group)
