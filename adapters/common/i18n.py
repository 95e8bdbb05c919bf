"""The one translation function for every user-facing string, and the catalogues it reads.

Catalogues are gettext ``.po`` files under ``adapters/locales/<locale>/LC_MESSAGES/imagebot.po`` (the template is
``adapters/locales/imagebot.pot``), shipped as package data and compiled in memory when this module is imported:
no build step, so an editable checkout, ``pip install .`` and the Docker image all read the same files, and a
``.po`` edited in place takes effect on the next start. English is the source language (the msgids).

The reader's language is a context variable: each entry point sets it from the platform (Discord's
``interaction.locale``, Slack's user locale, the playground's ``Accept-Language``) with ``use``, and ``_``
renders in it. asyncio copies context into tasks started from there, so progress and replies follow.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from bot.text import Text

log = logging.getLogger(__name__)

DOMAIN = "imagebot"
SOURCE = "en"  # the msgids' language: no catalogue
LOCALES = resources.files("adapters") / "locales"

_current: ContextVar[str] = ContextVar("imagebot_locale", default=SOURCE)


def _load() -> dict[str, Translations]:
    catalogues: dict[str, Translations] = {}
    for folder in sorted(LOCALES.iterdir(), key=lambda f: f.name):
        po = folder / "LC_MESSAGES" / f"{DOMAIN}.po"
        if not po.is_file():
            continue
        with po.open("rb") as source:
            catalog = read_po(source, locale=folder.name, domain=DOMAIN)
        compiled = io.BytesIO()
        write_mo(compiled, catalog)  # fuzzy entries are left out, as msgfmt does
        compiled.seek(0)
        catalogues[folder.name] = Translations(compiled, domain=DOMAIN)
    return catalogues


CATALOGUES = _load()
SHIPPED: tuple[str, ...] = tuple(CATALOGUES)


def negotiate(tag: str | None) -> str:
    """The shipped locale for a language tag (``de``, ``de-DE``, ``es-419``, ``pt_BR``, ``ja-JP``), else English.

    Exact language and region first, then the language alone, then the one shipped region of that language
    (``pt-PT`` reads ``pt_BR`` rather than English)."""
    if not tag:
        return SOURCE
    language, _, region = tag.strip().replace("-", "_").partition("_")
    language = language.lower()
    if region and f"{language}_{region.upper()}" in CATALOGUES:
        return f"{language}_{region.upper()}"
    if language in CATALOGUES:
        return language
    return next((name for name in SHIPPED if name.startswith(f"{language}_")), SOURCE)


def from_accept_language(header: str | None) -> str:
    """The best shipped locale for an HTTP ``Accept-Language`` header (q-values honoured), else English."""
    ranked: list[tuple[float, int, str]] = []
    for order, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, order, tag))
    for _, _, tag in sorted(ranked):
        if tag.lower().startswith(SOURCE):
            return SOURCE
        found = negotiate(tag)
        if found != SOURCE:
            return found
    return SOURCE


def use(tag: str | None) -> str:
    """Answer in the language of ``tag`` from here on (this task and the tasks it starts); returns the locale."""
    locale = negotiate(tag)
    _current.set(locale)
    return locale


@contextlib.contextmanager
def speaking(tag: str | None) -> Iterator[str]:
    """Answer in the language of ``tag`` inside the block only; ``use`` calls inside it end with it too (work
    that serves several people in turn, e.g. a restart telling each requester in their own language)."""
    token = _current.set(negotiate(tag))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def _(message: Text | str, locale: str | None = None) -> str:
    """``message`` in the reader's language (``locale``, else the current one); English when not translated."""
    catalogue = CATALOGUES.get(locale or _current.get())
    if isinstance(message, str):
        return catalogue.gettext(message) if catalogue is not None else message
    if catalogue is None:
        return message.render()
    return message.render(catalogue.gettext, catalogue.ngettext)


def pgettext(context: str, message: str, locale: str) -> str:
    """``message`` in ``context`` (e.g. a command name) in ``locale``; itself when not translated."""
    catalogue = CATALOGUES.get(locale)
    return message if catalogue is None else str(catalogue.pgettext(context, message))


def NC_(context: str, message: str) -> str:
    """Mark ``message`` for the catalogue under ``context`` (extraction keyword ``NC_:1c,2``); returns it as is."""
    return message
