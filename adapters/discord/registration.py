"""Command registration (sync only when Discord's copy differs) and the OAuth2 invite URL."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import discord
from discord import app_commands

from adapters.discord.translator import CatalogueTranslator

log = logging.getLogger(__name__)

SCOPES = ("bot", "applications.commands")
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, attach_files=True, read_message_history=True, embed_links=True
)
_OPTION_KEYS = ("type", "name", "description", "min_value", "max_value", "min_length", "max_length")


def _localized(raw: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    """A localisation map in one comparable form (missing, null and empty are the same: none)."""
    return sorted((str(k), str(v)) for k, v in (raw.get(key) or {}).items())


def _option(raw: Mapping[str, Any]) -> dict[str, Any]:
    option = {key: raw.get(key) for key in _OPTION_KEYS}
    option["name_localizations"] = _localized(raw, "name_localizations")
    option["description_localizations"] = _localized(raw, "description_localizations")
    option["required"] = bool(raw.get("required", False))
    option["autocomplete"] = bool(raw.get("autocomplete", False))
    option["choices"] = [(c["name"], c["value"], _localized(c, "name_localizations")) for c in raw.get("choices") or []]
    option["channel_types"] = sorted(raw.get("channel_types") or [])
    option["options"] = [_option(o) for o in raw.get("options") or []]
    return option


def command_shape(raw: Mapping[str, Any]) -> tuple[int, str, str, str]:
    """What matters of one command (names, descriptions, their localisations, options, choices, types),
    comparable across sources."""
    kind = int(raw.get("type", 1))
    options = [_option(o) for o in raw.get("options") or []]
    description = str(raw.get("description") or "") if kind == 1 else ""
    names = _localized(raw, "name_localizations")
    descriptions = _localized(raw, "description_localizations") if kind == 1 else []
    permissions = raw.get("default_member_permissions")  # who sees it: a change must reach Discord
    return (
        kind,
        str(raw["name"]),
        description,
        repr((names, descriptions, options, str(permissions) if permissions else None)),
    )


def commands_differ(local: Iterable[Mapping[str, Any]], remote: Iterable[Mapping[str, Any]]) -> bool:
    return sorted(map(command_shape, local)) != sorted(map(command_shape, remote))


async def ensure_commands(tree: app_commands.CommandTree[Any], *, force: bool = False) -> bool:
    """Sync the global commands if Discord's set differs from ours (or ``force``); True if it synced.

    Comparing with what Discord has (not a local record) stays right when the application or token changes;
    syncing only on a difference keeps well under Discord's daily limit on command creations.
    """
    if tree.translator is None:
        await tree.set_translator(CatalogueTranslator())  # names and descriptions in every shipped language
    local = await local_commands(tree)
    if not force:
        remote = [_registered(command) for command in await tree.fetch_commands()]
        if not commands_differ(local, remote):
            log.info("discord: the %d registered commands are up to date", len(remote))
            return False
    synced = await tree.sync()
    log.info("discord: synced %d commands", len(synced))
    return True


def _registered(command: app_commands.AppCommand) -> dict[str, Any]:
    """A registered command as a dict, with who may see it (discord.py's ``to_dict`` leaves that out)."""
    permissions = command.default_member_permissions
    return {**command.to_dict(), "default_member_permissions": permissions.value if permissions is not None else None}


async def local_commands(tree: app_commands.CommandTree[Any]) -> list[dict[str, Any]]:
    """The payload a sync would send: with the tree's translator, the localised names and descriptions too."""
    translator = tree.translator
    if translator is None:
        return [command.to_dict(tree) for command in tree.get_commands()]
    return [await command.get_translated_payload(tree, translator) for command in tree.get_commands()]


def application_id_from_token(token: str) -> int | None:
    """A bot token's first segment is its user id in base64, and a bot user shares its application's id."""
    first = token.split(".", 1)[0]
    try:
        text = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot with slash commands and only the permissions it needs."""
    return discord.utils.oauth_url(application_id, permissions=INVITE_PERMISSIONS, scopes=SCOPES)
