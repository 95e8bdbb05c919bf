"""Parsing ``/imagine <prompt> [--n N] [--size WxH] [--quality Q] [--model M]`` into a GenerateRequest."""

from __future__ import annotations

import re

from bot.errors import InvalidRequestError
from bot.models import GenerateRequest

FLAGS = ("n", "size", "quality", "model")
USAGE = "Usage: /imagine <prompt> [--n 2] [--size 1536x1024] [--quality high] [--model gpt-image-2]"
# Slack clients turn "--" into an em or en dash; accept those too.
_FLAG = re.compile(r"(?:(?<=\s)|^)(?:--|—|–)([A-Za-z][\w-]*)(?:=|\s+|$)(\S*)")


def parse_imagine(text: str) -> GenerateRequest:
    """The request a command's text describes; flags are removed from the prompt. Bad flags -> InvalidRequestError."""
    options: dict[str, str] = {}
    for match in _FLAG.finditer(text):
        name, value = match.group(1).lower(), match.group(2)
        if name not in FLAGS:
            raise InvalidRequestError(f"I don't know the option --{name}. {USAGE}")
        if not value or value.startswith(("--", "—", "–")):
            raise InvalidRequestError(f"The option --{name} needs a value. {USAGE}")
        if name in options:
            raise InvalidRequestError(f"The option --{name} is given twice. {USAGE}")
        options[name] = value
    prompt = " ".join(_FLAG.sub(" ", text).split())
    if not prompt:
        raise InvalidRequestError(f"Tell me what to draw. {USAGE}")
    n = 1
    if "n" in options:
        if not options["n"].isdigit() or not 1 <= int(options["n"]) <= 10:
            raise InvalidRequestError(f"--n takes a number of images from 1 to 10 (got {options['n'][:10]}).")
        n = int(options["n"])
    size = options.get("size")
    if size is not None and size != "auto" and not re.fullmatch(r"\d{2,5}x\d{2,5}", size):
        raise InvalidRequestError(f"--size takes WIDTHxHEIGHT, e.g. 1536x1024 (got {size[:20]}).")
    return GenerateRequest(prompt=prompt, n=n, size=size, quality=options.get("quality"), model=options.get("model"))
