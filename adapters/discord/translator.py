"""Localised command names, descriptions and choices for Discord, from the same catalogues as the replies.

discord.py asks the tree's ``Translator`` for every string of every command when it builds the registration
payload, once per Discord locale; the answers become ``name_localizations`` and ``description_localizations``.
Names live in the catalogue under a context (``command name``, ``option name``, ``choice``) because they follow
Discord's rules (lowercase, no spaces for slash commands and options) and must not collide with a button label.
"""

from __future__ import annotations

from discord import Locale, app_commands
from discord.app_commands import TranslationContextLocation as Where

from adapters.common import i18n
from adapters.common.i18n import NC_

NAME_CONTEXTS = {
    Where.command_name: "command name",
    Where.group_name: "command name",
    Where.parameter_name: "option name",
    Where.choice_name: "choice",
}

# Names that appear only as Python identifiers or settings in the code, marked here for the catalogue.
NAMES = (
    NC_("command name", "imagine"),
    NC_("command name", "vary"),
    NC_("command name", "edit"),
    NC_("command name", "Vary image"),
    NC_("command name", "Edit image"),
    NC_("command name", "history"),
    NC_("command name", "usage"),
    NC_("option name", "prompt"),
    NC_("option name", "count"),
    NC_("option name", "size"),
    NC_("option name", "quality"),
    NC_("option name", "model"),
    NC_("option name", "image"),
    NC_("option name", "mask"),
    NC_("option name", "region"),
    NC_("option name", "private"),
    NC_("choice", "auto"),
    NC_("choice", "low"),
    NC_("choice", "medium"),
    NC_("choice", "high"),
    NC_("choice", "standard"),
    NC_("choice", "hd"),
)


class CatalogueTranslator(app_commands.Translator):
    """Answers discord.py from the gettext catalogues; None (Discord shows the English) for other languages."""

    async def translate(
        self, string: app_commands.locale_str, locale: Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        shipped = i18n.negotiate(locale.value)
        if shipped == i18n.SOURCE:
            return None
        name_context = NAME_CONTEXTS.get(context.location)
        if name_context is not None:
            return i18n.pgettext(name_context, string.message, shipped)
        return i18n._(string.message, shipped)  # the same word as in English is a translation too ("auto")
