"""The model capability table: what each model accepts, how sizes are checked, what images cost.

The rows come from configuration (``[models.*]`` in the packaged defaults, bot/defaults/settings.toml, and
the operator's override file); nothing here names a model.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.errors import InvalidRequestError, ModelUnavailableError
from bot.models import Usage
from bot.text import N_, Text

_SEARCH = 8  # multiples either way a free size may move from the exact one to obey its rule
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class SizeRule(BaseModel):
    """Free-form sizes a model accepts besides its fixed list (e.g. gpt-image-2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    multiple: int = 16
    max_edge: int = 3840
    min_pixels: int = 0
    max_pixels: int = 8_294_400
    max_ratio: float = 3.0

    def problem(self, width: int, height: int) -> Text | None:
        """Why ``width x height`` breaks the rule (a phrase for a sentence), or None when it is fine."""
        if width % self.multiple or height % self.multiple:
            return N_("both sides must be multiples of {multiple}", multiple=self.multiple)
        if max(width, height) > self.max_edge:
            return N_("the longest side can be at most {limit}", limit=self.max_edge)
        pixels = width * height
        if pixels < self.min_pixels:
            return N_("it must have at least {pixels} pixels", pixels=f"{self.min_pixels:,}")
        if pixels > self.max_pixels:
            return N_("it can have at most {pixels} pixels", pixels=f"{self.max_pixels:,}")
        if max(width, height) / min(width, height) > self.max_ratio:
            return N_("the aspect ratio can be at most {ratio}:1", ratio=f"{self.max_ratio:g}")
        return None


class Pricing(BaseModel):
    """USD per 1M tokens, and a per-image table {quality: [square, rectangular]} for estimates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_input: float | None = None
    image_input: float | None = None
    image_output: float | None = None
    output_tokens: str | None = None  # name of an output-token formula for estimates ("gpt-image-2")
    per_image: dict[str, tuple[float, float]] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    """One row of the capability table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[str, ...] = ("auto", "1024x1024")
    size_rule: SizeRule | None = None
    max_n: int = Field(1, ge=1, le=10)
    qualities: tuple[str, ...] = ()
    edits: bool = False
    masks: bool = False
    max_input_images: int = Field(0, ge=0)
    variations_endpoint: bool = False
    streaming: bool = False
    response_format: bool = False
    backgrounds: tuple[str, ...] = ()
    output_formats: tuple[str, ...] = ()
    max_prompt_chars: int = Field(1000, ge=1)
    input_formats: tuple[str, ...] = ()
    max_input_bytes: int = Field(0, ge=0)
    square_png_input: bool = False
    shutdown: dt.date | None = None
    replacement: str | None = None
    served_by_compatible_server: bool = False  # a compatible server still serves it after ``shutdown``
    pricing: Pricing = Field(default_factory=Pricing)


def resolve_inheritance(rows: Mapping[str, Any]) -> dict[str, Any]:
    """Expand ``like = "other"`` rows into full rows (an empty ``size_rule = {}`` removes the rule)."""
    resolved: dict[str, dict[str, Any]] = {}

    def expand(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        if name in seen:
            raise ValueError(f"models: 'like' loop through {' -> '.join((*seen, name))}")
        raw = rows.get(name)
        if not isinstance(raw, Mapping):
            raise ValueError(f"models: '{seen[-1] if seen else name}' is like unknown model '{name}'")
        row = dict(raw)
        parent = row.pop("like", None)
        base = dict(expand(str(parent), (*seen, name))) if parent else {}
        base.update(row)
        if base.get("size_rule") == {}:
            base["size_rule"] = None
        resolved[name] = base
        return base

    for model_name in rows:
        expand(model_name, ())
    return dict(resolved)


def _retired_error(model: str, spec: ModelSpec, *, chosen_by_operator: bool) -> ModelUnavailableError:
    values = {
        "model": model,
        "date": spec.shutdown.isoformat() if spec.shutdown else "-",
        "replacement": spec.replacement,
    }
    if chosen_by_operator and spec.replacement:  # the user asked for nothing in particular: the bot's default is stale
        text = N_(
            "The image model '{model}' was retired on {date}. The bot's operator needs to switch the default model "
            "(IMAGEBOT_DEFAULT_MODEL) to {replacement}.",
            **values,
        )
    elif chosen_by_operator:
        text = N_(
            "The image model '{model}' was retired on {date}. The bot's operator needs to switch the default model "
            "(IMAGEBOT_DEFAULT_MODEL).",
            **values,
        )
    elif spec.replacement:
        text = N_("The image model '{model}' was retired on {date}. Please use {replacement} instead.", **values)
    else:
        text = N_("The image model '{model}' was retired on {date}. Please pick another model.", **values)
    return ModelUnavailableError(text, detail=f"model {model!r} shut down on {spec.shutdown}; refused before any call")


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1536x1024"`` -> (1536, 1024); None for "auto" or anything else."""
    match = _SIZE.match(size)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def _gpt_image_2_output_tokens(width: int, height: int, quality: str) -> int:
    # Community-derived formula that reproduces OpenAI's published per-image prices for gpt-image-2.
    factor = {"low": 16, "medium": 48, "high": 96, "xhigh": 128, "max": 160}.get(quality, 96)
    short, long = sorted((width, height))
    short_axis = (2 * factor * short + long) // (2 * long)
    return math.ceil(factor * short_axis * (2_000_000 + width * height) / 4_000_000)


_OUTPUT_TOKEN_FORMULAS = {"gpt-image-2": _gpt_image_2_output_tokens}


def is_openai_api(base_url: str) -> bool:
    """True when ``base_url`` is OpenAI's own API (api.openai.com or a regional *.openai.com host)."""
    host = (urllib.parse.urlsplit(base_url.strip()).hostname or "").rstrip(".").lower()
    return host == "openai.com" or host.endswith(".openai.com")


class Catalog:
    """Looks models up (with aliases) and checks requests against their rows."""

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        aliases: Mapping[str, str],
        default_model: str,
        *,
        openai_api: bool = True,
    ):
        """``openai_api``: requests go to OpenAI itself, where a model past its shutdown date is always gone."""
        self._models = dict(models)
        self._aliases = dict(aliases)
        self.default_model = default_model
        self.openai_api = openai_api

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def resolve(self, name: str | None, *, today: dt.date | None = None) -> tuple[str, ModelSpec]:
        """Map a user's model name (or None for the default, or an alias) to a known, live model."""
        requested = (name or "").strip() or self.default_model
        real = self._aliases.get(requested, requested)
        spec = self._models.get(real)
        if spec is None:
            known = ", ".join(sorted(self._models))
            raise ModelUnavailableError(
                N_(
                    "I don't know the image model '{model}'. Models I can use: {known}.",
                    model=requested[:60],
                    known=known,
                ),
                detail=f"model {requested!r} is not in the capability table",
            )
        if self.retired(spec, today=today):
            raise _retired_error(real, spec, chosen_by_operator=not (name or "").strip())
        return real, spec

    def retired(self, spec: ModelSpec, *, today: dt.date | None = None) -> bool:
        """Past its shutdown date, and not kept alive by a compatible server that says it still serves it."""
        if spec.shutdown is None or spec.shutdown > (today or dt.date.today()):
            return False
        return self.openai_api or not spec.served_by_compatible_server

    @staticmethod
    def check_size(model: str, spec: ModelSpec, size: str | None) -> str | None:
        """Return the size to send (normalised ``WxH``, "auto" or None) or raise with what is allowed."""
        if size is None or not size.strip():
            return None
        cleaned = size.strip().lower().replace("×", "x").replace(" ", "")
        if cleaned in spec.sizes:
            return cleaned
        dims = parse_size(cleaned)
        allowed = ", ".join(spec.sizes)
        if dims is None:
            raise InvalidRequestError(
                N_("'{size}' isn't a size. Use WIDTHxHEIGHT, e.g. {allowed}.", size=size[:40], allowed=allowed)
            )
        if spec.size_rule is None:
            raise InvalidRequestError(N_("{model} can make these sizes: {allowed}.", model=model, allowed=allowed))
        problem = spec.size_rule.problem(*dims)
        if problem:
            raise InvalidRequestError(
                N_(
                    "{size} doesn't work for {model}: {problem}.",
                    size=f"{dims[0]}x{dims[1]}",
                    model=model,
                    problem=problem,
                )
            )
        return f"{dims[0]}x{dims[1]}"

    @staticmethod
    def estimate_cost(spec: ModelSpec, size: str | None, quality: str | None, n: int) -> float | None:
        """A pre-flight estimate in USD (worst case for "auto"), or None when the row has no prices."""
        dims = parse_size(size or "") or (1024, 1024)
        quality = quality if quality and quality != "auto" else "high"
        pricing = spec.pricing
        formula = _OUTPUT_TOKEN_FORMULAS.get(pricing.output_tokens or "")
        if formula and pricing.image_output is not None:
            return n * formula(*dims, quality) * pricing.image_output / 1_000_000
        if pricing.per_image:
            prices = pricing.per_image.get(quality) or max(pricing.per_image.values(), key=lambda p: p[1])
            return n * (prices[0] if dims[0] == dims[1] else prices[1])
        return None

    @staticmethod
    def actual_cost(spec: ModelSpec, usage: Usage | None) -> float | None:
        """USD from the provider's reported token usage, or None if usage or token prices are missing."""
        pricing = spec.pricing
        if usage is None or pricing.image_output is None:
            return None
        text_price = pricing.text_input or 0.0
        image_in_price = pricing.image_input or 0.0
        text_in = usage.text_input_tokens
        image_in = usage.image_input_tokens
        if not text_in and not image_in:
            text_in = usage.input_tokens
        cost = text_in * text_price + image_in * image_in_price + usage.output_tokens * pricing.image_output
        return cost / 1_000_000


def nearest_size(spec: ModelSpec, width: float, height: float, *, max_edge: int | None = None) -> tuple[int, int]:
    """The size the model accepts that is nearest to ``width`` x ``height``: the same aspect (as close as the
    rule allows) at the same area or below the limits where the row has a size rule, else the fixed size whose
    aspect is closest (the larger one on a tie). ``max_edge`` caps the longest side further (input limits), except
    where the rule's minimum area can't be had under it (the rule wins: the size must be one the model accepts)."""
    aspect = width / height
    rule = spec.size_rule
    if rule is not None:
        return _free_size(rule, aspect, width * height, max_edge or rule.max_edge)
    fixed = [dims for dims in (parse_size(size) for size in spec.sizes) if dims is not None]
    if max_edge is not None:
        fixed = [dims for dims in fixed if max(dims) <= max_edge] or fixed
    if not fixed:
        raise InvalidRequestError(N_("I don't know which sizes this model makes, so I can't extend the image."))
    return min(fixed, key=lambda dims: (abs(math.log(dims[0] / dims[1] / aspect)), -dims[0] * dims[1]))


def _free_size(rule: SizeRule, aspect: float, area: float, max_edge: int) -> tuple[int, int]:
    """The rule's size nearest to ``aspect`` at ``area`` (both clamped to the rule), under ``max_edge`` if it can be."""
    aspect = min(max(aspect, 1 / rule.max_ratio), rule.max_ratio)
    area = min(max(area, rule.min_pixels), rule.max_pixels)
    width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)
    shrink = min(1.0, min(max_edge, rule.max_edge) / max(width, height))
    width, height = width * shrink, height * shrink
    step = rule.multiple
    columns, rows = round(width / step), round(height / step)
    near = [
        ((columns + dx) * step, (rows + dy) * step)
        for dx in range(-_SEARCH, _SEARCH + 1)
        for dy in range(-_SEARCH, _SEARCH + 1)
        if columns + dx > 0 and rows + dy > 0
    ]
    allowed = [dims for dims in near if rule.problem(*dims) is None]
    capped = [dims for dims in allowed if max(dims) <= max_edge] or allowed
    if not capped:  # the cap and the rule's minimum area can't both hold: the rule wins
        if max_edge >= rule.max_edge:
            raise InvalidRequestError(N_("I can't find a size this model accepts for that image."))
        return _free_size(rule, aspect, area, rule.max_edge)

    def distance(dims: tuple[int, int]) -> float:
        return abs(math.log(dims[0] / dims[1] / aspect)) + abs(math.log(dims[0] * dims[1] / (width * height))) / 4

    return min(capped, key=distance)
