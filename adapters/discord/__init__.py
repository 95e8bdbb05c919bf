"""The Discord adapter (discord.py): slash commands, message menus, replies and persistent buttons."""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
