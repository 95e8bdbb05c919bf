"""The playground's chat text: ``/imagine PROMPT --n 4 --size 1536x1024`` (or plain text) -> a request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.errors import InvalidRequestError

FLAGS = ("n", "size", "quality", "model")
_COMMANDS = ("/imagine",)
_FLAG = re.compile(r"^(?:--|—)([a-z]+)(?:=(.*))?$", re.IGNORECASE)  # phones turn "--" into an em dash


@dataclass(frozen=True, slots=True)
class ImagineCommand:
    """A parsed chat line: the prompt without its flags, and the flags' values (None = not given)."""

    prompt: str
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    model: str | None = None


def parse_imagine(text: str) -> ImagineCommand:
    """Split a chat line into prompt and flags; unknown ``--words`` stay in the prompt."""
    words = text.split()
    if words and words[0].startswith("/"):
        if words[0].lower() not in _COMMANDS:
            raise InvalidRequestError(
                f"I don't know the command {words[0][:30]}. Type /imagine followed by a description, "
                "or just the description; attach an image to edit it or to get variations."
            )
        words = words[1:]
    values: dict[str, str] = {}
    kept: list[str] = []
    i = 0
    while i < len(words):
        match = _FLAG.match(words[i])
        name = match.group(1).lower() if match else ""
        if match is None or name not in FLAGS:
            kept.append(words[i])
            i += 1
            continue
        value = match.group(2)
        if value is None:
            if i + 1 >= len(words):
                raise InvalidRequestError(f"--{name} needs a value, e.g. {_EXAMPLES[name]}.")
            value = words[i + 1]
            i += 1
        values[name] = value
        i += 1
    count: int | None = None
    if "n" in values:
        try:
            count = int(values["n"])
        except ValueError:
            raise InvalidRequestError(f"--n needs a whole number, e.g. {_EXAMPLES['n']}.") from None
    return ImagineCommand(
        prompt=" ".join(kept),
        n=count,
        size=values.get("size"),
        quality=values.get("quality"),
        model=values.get("model"),
    )


_EXAMPLES = {"n": "--n 4", "size": "--size 1536x1024", "quality": "--quality high", "model": "--model gpt-image-2"}
