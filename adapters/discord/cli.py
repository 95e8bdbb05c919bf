"""`imagebot discord sync` (log in, register the commands, exit) and `imagebot discord invite`."""

from __future__ import annotations

import asyncio
import logging
import sys

import discord

from adapters.discord.adapter import DiscordAdapter, apply_endpoints
from adapters.discord.registration import application_id_from_token, ensure_commands, invite_url
from bot.bootstrap import new_http_session, open_core
from bot.errors import ConfigurationError, ImageBotError
from bot.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


async def sync(settings: Settings) -> int:
    """Force a sync of the global commands, whatever Discord has now."""
    async with new_http_session() as session, open_core(settings, session, exclusive=False) as core:  # runs no job
        adapter = DiscordAdapter(core, settings)
        apply_endpoints(settings)
        try:
            await adapter.login()
            await ensure_commands(adapter.tree, force=True)
            names = ", ".join(sorted(c.name for c in adapter.tree.get_commands()))
        finally:
            await adapter.client.close()
    print(f"synced the Discord commands: {names}")
    return EXIT_OK


async def application_id(settings: Settings) -> int:
    """From the token itself when possible, else by logging in."""
    token = settings.discord_token
    if token is None:
        raise ConfigurationError("setting DISCORD_TOKEN: the Discord bot token is not set")
    found = application_id_from_token(token.get_secret_value())
    if found is not None:
        return found
    apply_endpoints(settings)
    client = discord.Client(intents=discord.Intents.none())
    try:
        await client.login(token.get_secret_value())
        if client.application_id is None:
            raise ConfigurationError("Discord did not say which application this token belongs to")
        return client.application_id
    except discord.LoginFailure:
        raise ConfigurationError("Discord rejected DISCORD_TOKEN. Copy the bot token again.") from None
    finally:
        await client.close()


async def invite(settings: Settings) -> int:
    print(invite_url(await application_id(settings)))
    return EXIT_OK


def main(settings: Settings, action: str) -> int:
    """Run one `imagebot discord ACTION`; failures are one friendly line on stderr."""
    if settings.discord_token is None:
        print("imagebot: setting DISCORD_TOKEN: the Discord bot token is not set", file=sys.stderr)
        return EXIT_CONFIG
    command = sync if action == "sync" else invite
    try:
        return asyncio.run(command(settings))
    except ConfigurationError as exc:
        print(f"imagebot: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    except ImageBotError as exc:
        print(f"imagebot: {exc.friendly()}", file=sys.stderr)
        return EXIT_FAILED
    except (discord.HTTPException, OSError) as exc:
        log.debug("discord %s failed: %r", action, exc)
        print(f"imagebot: couldn't reach Discord ({type(exc).__name__}); try again later", file=sys.stderr)
        return EXIT_FAILED
