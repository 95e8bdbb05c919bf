"""The one flag grammar of chat text: ``[/imagine] PROMPT [--n N] [--size WxH] [--quality Q] [--model M] [--private]``.

Slack's ``/imagine`` text and the playground's chat line are parsed here, the same way: ``--name value`` or
``--name=value``, with ``—``/``–`` accepted for ``--`` (phones and Slack turn two hyphens into a dash);
an unknown option, a missing value or an option given twice is a friendly error (a typo must not end up in
the prompt, where it would be paid for). What a model accepts (how many images, which sizes) is checked by
the core against the capability table; this grammar only checks the form. ``--private`` is a switch: alone it
means yes, ``--private=no`` overrides a workspace's private-by-default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.errors import InvalidRequestError
from bot.text import N_, Text

FLAGS = ("n", "size", "quality", "model", "private")
SWITCHES = ("private",)  # flags that take no value (``--private``; ``--private=no`` to say no)
_YES, _NO = ("yes", "true", "on", "1"), ("no", "false", "off", "0")
MAX_N = 10  # the Images API's own limit; each model's row may allow fewer
USAGE = N_("Usage: /imagine <prompt> [--n 2] [--size 1536x1024] [--quality high] [--model gpt-image-2] [--private]")
_DASHES = ("--", "—", "–")
_OPTION = re.compile(r"^(?:--|—|–)([A-Za-z][\w-]*)(?:=(.*))?$", re.DOTALL)
_SIZE = re.compile(r"^(\d{1,5})\s*[x×]\s*(\d{1,5})$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ImagineCommand:
    """A parsed line: the prompt without its options, and the options' values (None = not given)."""

    prompt: str
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    model: str | None = None
    private: bool | None = None  # only the requester sees the result until they share it (None: the default)


def parse_imagine(text: str, *, command: str = "/imagine") -> ImagineCommand:
    """Split chat text into prompt and options. A leading ``command`` is dropped; another ``/word`` is refused."""
    words = text.split()
    if words and words[0].startswith("/") and len(words[0]) > 1:
        if words[0].lower() != command:
            raise InvalidRequestError(
                N_(
                    "I don't know the command {given}. Type {command} followed by a description, "
                    "or just the description.",
                    given=words[0][:30],
                    command=command,
                )
            )
        words = words[1:]
    values: dict[str, str] = {}
    prompt: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        match = _OPTION.match(word)
        if match is None:
            prompt.append(word)
            continue
        name, value = match.group(1).lower(), match.group(2)
        if name not in FLAGS:
            raise InvalidRequestError(N_("I don't know the option --{name}. {usage}", name=name[:30], usage=USAGE))
        if value is None and name in SWITCHES:
            value = "yes"
        if value is None:
            if index >= len(words) or words[index].startswith(_DASHES):
                raise InvalidRequestError(_needs_value(name))
            value = words[index]
            index += 1
        if name in values:
            raise InvalidRequestError(N_("The option --{name} is given twice. {usage}", name=name, usage=USAGE))
        if not value:
            raise InvalidRequestError(_needs_value(name))
        values[name] = value
    return ImagineCommand(
        prompt=" ".join(prompt),
        n=_count(values.get("n")),
        size=_size(values.get("size")),
        quality=values.get("quality"),
        model=values.get("model"),
        private=_switch("private", values.get("private")),
    )


def _switch(name: str, text: str | None) -> bool | None:
    if text is None:
        return None
    if text.lower() in _YES:
        return True
    if text.lower() in _NO:
        return False
    raise InvalidRequestError(N_("--{name} needs no value (or --{name}=no), got {given}.", name=name, given=text[:10]))


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_N:
        raise InvalidRequestError(
            N_("--n takes a number of images from 1 to {limit} (got {given}).", limit=MAX_N, given=text[:10])
        )
    return int(text)


def _size(text: str | None) -> str | None:
    if text is None or text.lower() == "auto":
        return text.lower() if text else None
    match = _SIZE.match(text)
    if match is None:
        raise InvalidRequestError(
            N_("--size takes WIDTHxHEIGHT, e.g. 1536x1024, or auto (got {given}).", given=text[:20])
        )
    return f"{int(match.group(1))}x{int(match.group(2))}"


def _needs_value(name: str) -> Text:
    return N_("The option --{name} needs a value, e.g. {example}.", name=name, example=_EXAMPLES[name])


_EXAMPLES = {
    "n": "--n 4",
    "size": "--size 1536x1024",
    "quality": "--quality high",
    "model": "--model gpt-image-2",
    "private": "--private",
}
