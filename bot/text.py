"""User-facing text as data: an English template (the gettext msgid) and the values of its placeholders.

The core never translates: it has no idea who reads its messages. It builds ``Text`` with ``N_`` (or ``NP_``
for a count), keeps ``str(text)`` English for logs and the CLI, and an adapter renders the same ``Text`` in the
reader's language with a catalogue's ``gettext``. Templates use ``str.format`` fields (``{limit}``); a value may
itself be a ``Text``, rendered in the same language (a phrase inside a sentence).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Gettext = Callable[[str], str]
Ngettext = Callable[[str, str, int], str]


def _same(message: str) -> str:
    return message


def _english_plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


@dataclass(frozen=True, slots=True)
class Text:
    """A message to translate: ``template`` (and ``plural`` with ``count``) plus the placeholders' values."""

    template: str
    values: Mapping[str, object] = field(default_factory=dict)
    plural: str | None = None
    count: int = 1

    def render(self, gettext: Gettext = _same, ngettext: Ngettext = _english_plural) -> str:
        """The message in the catalogue's language (English with the defaults). A translation whose placeholders
        do not fit (a broken catalogue) falls back to the English template rather than failing the reply."""
        values = {
            name: value.render(gettext, ngettext) if isinstance(value, Text) else value
            for name, value in self.values.items()
        }
        if self.plural is None:
            translated, english = gettext(self.template), self.template
        else:
            translated = ngettext(self.template, self.plural, self.count)
            english = _english_plural(self.template, self.plural, self.count)
        try:
            return translated.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError):
            return english.format(**values)

    def __str__(self) -> str:
        return self.render()


def N_(template: str, /, **values: object) -> Text:
    """Mark ``template`` for the catalogue; its ``{fields}`` are filled from ``values``."""
    return Text(template, values)


def NP_(singular: str, plural: str, count: int, /, **values: object) -> Text:
    """Mark a message whose wording depends on ``count`` (also available as the ``{count}`` field)."""
    return Text(singular, {"count": count, **values}, plural, count)


def placeholders(template: str) -> set[str]:
    """The ``{fields}`` of a template (what a translation must keep, no more and no less)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
