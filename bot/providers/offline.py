"""Procedural local images: the embedded default provider when no OpenAI API key is configured.

Every picture is painted with Pillow from a seed: the prompt decides the palette and the kind of scene
(hills, sea, city skyline or abstract shapes), the image index decides the layout. The same prompt, size
and index therefore always give the same bytes, and the n images of one request look like a set.
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import io
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

from bot.catalog import parse_size
from bot.errors import ImageBotError, InvalidImageError, InvalidRequestError, ProviderResponseError, UnexpectedError
from bot.models import ProviderEdit, ProviderGenerate, ProviderHealth, ProviderImages, ProviderVary, Usage
from bot.ports import OnPartial
from bot.text import N_

log = logging.getLogger(__name__)

HEALTH_DETAIL = "offline provider (no API key): images are made locally"
VARIATION_PROMPT = "variation"  # the fixed seed of vary(): the variations endpoint has no prompt
DEFAULT_SIZE = (1024, 1024)
MIN_SIDE, MAX_SIDE = 16, 4096
# Measured at 1024x1024: levels 1-4 take ~30-37 ms (210-170 KiB); 6 takes 55 ms for 150 KiB; 9 takes 300 ms.
PNG_COMPRESS_LEVEL = 4
JPEG_QUALITY = WEBP_QUALITY = 90

RGB = tuple[int, int, int]
Point = tuple[float, float]
BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST


# --- palettes and themes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Palette:
    """Colours of one picture, from the top of the sky to the nearest ground."""

    sky_top: RGB
    sky_mid: RGB
    horizon: RGB
    sun: RGB
    far: RGB
    near: RGB
    accent: RGB


def _palette(colours: str) -> Palette:
    """A palette from seven hex colours: sky top, sky middle, horizon, sun, far ground, near ground, accent."""
    rgb = [(int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)) for c in colours.split()]
    return Palette(*rgb)


_PALETTES: dict[str, Palette] = {
    "sunset": _palette("2c1a54 c4486e ffa454 ffe296 96466e 221230 ff785a"),
    "dawn": _palette("5a78be e6aab4 ffe1b4 fffae6 968caa 323250 ffb478"),
    "night": _palette("060a1e 121e46 344678 ebebd7 28345c 080c1c ffd678"),
    "snow": _palette("78a0cd b4cde6 ebf2fa fffaeb c4d2e8 5c7090 ffffff"),
    "forest": _palette("468296 96c3b4 e1ebc8 fff5c8 6e9678 10301e c85a32"),
    "ocean": _palette("14468c 4696c8 bee4f0 fffae1 3c82aa 082850 fafafa"),
    "red": _palette("3c0814 aa1e28 ff785a ffdcb4 8c1e28 28050c ffbe78"),
    "blue": _palette("0a1e5a 285ab4 96c8ff f0f8ff 325aa0 0a143c ffd278"),
    "green": _palette("144632 50a064 d2f0b4 fffad2 5a965a 0f3219 fadc5a"),
    "gold": _palette("5a320a c88c28 ffe18c fff8d2 aa6e28 3c2008 fff0b4"),
    "purple": _palette("1e0a3c 6e32a0 e6aae6 ffe6fa 643c8c 1e0c32 ffc878"),
    "pink": _palette("783c78 f08cb4 ffd7dc fffaf0 d278a0 6e2850 ffffff"),
    "desert": _palette("468cc8 aac8dc fadcaa fffadc dc965a 8c461e 5a8c3c"),
    "autumn": _palette("3c5a8c c8966e ffc882 fff0be be5a28 46190a e6a028"),
    "storm": _palette("1e232d 505a69 96a0aa dce1e6 46505f 14181e f0f0c8"),
    "fire": _palette("1e0505 961e0a ff8c14 fff0a0 781e0a 190500 ffc83c"),
}


def _by_word(groups: dict[str, str]) -> dict[str, str]:
    """``{"sunset": "dusk evening"}`` -> ``{"dusk": "sunset", "evening": "sunset"}``."""
    return {word: name for name, words in groups.items() for word in words.split()}


# Words that pick a palette: the first one in the prompt wins, a second one lends its accent colour.
_PALETTE_WORDS = _by_word(
    {
        "sunset": "sunset sunsets dusk evening twilight",
        "dawn": "dawn sunrise morning",
        "night": "night midnight moon moonlight moonlit stars starry dark",
        "snow": "snow snowy winter ice icy frozen frost white",
        "forest": "forest woods jungle tree trees pine pines",
        "ocean": "ocean sea beach wave waves water lake river coast teal",
        "red": "red crimson scarlet ruby",
        "blue": "blue azure navy sapphire cobalt",
        "green": "green emerald jade mint meadow",
        "gold": "gold golden yellow amber honey",
        "purple": "purple violet lavender magenta",
        "pink": "pink rose pastel cherry blossom",
        "desert": "desert sand sandy dune dunes",
        "autumn": "autumn fall orange brown",
        "storm": "storm stormy rain rainy grey gray fog foggy mist misty",
        "fire": "fire flame flames lava volcano burning dragon",
    }
)
# Words that pick the kind of scene; a prompt without one gets a scene chosen by its hash.
_SCENE_WORDS = _by_word(
    {
        "sea": "ocean sea beach wave waves water lake coast sail boat ship island harbor harbour surf",
        "city": "city town skyline street building buildings cyberpunk downtown tower skyscraper",
        "abstract": "abstract pattern geometric shape shapes circles bauhaus logo minimal icon poster",
        "hills": "mountain mountains hill hills valley landscape peak peaks forest woods jungle trees meadow field "
        "desert dunes canyon",
    }
)
# Words that add decorations: pine trees, falling snow, a moon and stars.
_DECORATION_WORDS = _by_word(
    {
        "trees": "forest woods jungle tree trees pine pines autumn fall park",
        "snow": "snow snowy winter snowfall blizzard snowing christmas",
        "night": "night midnight moon moonlight moonlit stars starry galaxy",
    }
)


@dataclass(frozen=True, slots=True)
class Theme:
    """What the prompt alone decides, so that all images of one request belong together."""

    palette: Palette
    scene: str  # "hills" | "sea" | "city" | "abstract"
    night: bool
    snow: bool
    trees: bool


@dataclass(frozen=True, slots=True)
class Detail:
    """How much work one picture gets: canvas scale (resized to the asked size at the end) and element counts.

    ``scale`` > 1 supersamples (smooth edges, since ImageDraw does not anti-alias); < 1 paints small and
    upscales. ``max_pixels`` bounds the canvas so that huge sizes stay fast.
    """

    scale: float
    layers: int
    amount: float
    max_pixels: int = 4_200_000


_DETAIL = {
    "low": Detail(scale=0.6, layers=3, amount=0.6),
    "medium": Detail(scale=1.25, layers=4, amount=1.0),
    "high": Detail(scale=1.5, layers=5, amount=1.4),
}
_QUALITY_TO_DETAIL = {"low": "low", "high": "high", "hd": "high"}


def normalise_prompt(prompt: str) -> str:
    """The form that seeds pictures: stripped, lower-cased, whitespace collapsed."""
    return " ".join(prompt.lower().split())


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    # Not for security: a reproducible stream for drawing, seeded from sha256 of the prompt.
    return random.Random(int.from_bytes(digest[:16], "big"))  # noqa: S311


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t)


def _rgba(colour: RGB, alpha: float) -> tuple[int, int, int, int]:
    return colour[0], colour[1], colour[2], max(0, min(255, round(alpha)))


def _hue_palette(hue: float) -> Palette:
    """An analogous palette around one hue, for prompts that name no colour."""
    return Palette(
        sky_top=_hsv(hue + 0.02, 0.6, 0.35),
        sky_mid=_hsv(hue + 0.06, 0.45, 0.72),
        horizon=_hsv(hue + 0.12, 0.3, 0.97),
        sun=_hsv(hue + 0.14, 0.18, 1.0),
        far=_hsv(hue - 0.04, 0.35, 0.62),
        near=_hsv(hue - 0.08, 0.55, 0.18),
        accent=_hsv(hue + 0.5, 0.6, 0.95),
    )


@functools.lru_cache(maxsize=256)
def theme_for(prompt: str) -> Theme:
    """Palette, scene and decorations for a prompt (its normalised form)."""
    words = re.findall(r"[a-z]+", normalise_prompt(prompt))
    rng = _rng("theme", normalise_prompt(prompt))
    named = [_PALETTE_WORDS[w] for w in words if w in _PALETTE_WORDS]
    palette = _PALETTES[named[0]] if named else _hue_palette(rng.random())
    others = [name for name in named if name != named[0]] if named else []
    if others:
        palette = replace(palette, accent=_PALETTES[others[0]].accent)
    scenes = [_SCENE_WORDS[w] for w in words if w in _SCENE_WORDS]
    scene = scenes[0] if scenes else rng.choices(("hills", "sea", "city", "abstract"), weights=(5, 2, 2, 2))[0]
    decorations = {_DECORATION_WORDS[w] for w in words if w in _DECORATION_WORDS}
    return Theme(
        palette=palette,
        scene=scene,
        night="night" in decorations or named[:1] == ["night"],
        snow="snow" in decorations,
        trees="trees" in decorations or (scene == "hills" and not named and rng.random() < 0.3),
    )


# --- painting ---------------------------------------------------------------------------------------------


def _ramp(width: int, height: int, top: float = 0.0, bottom: float = 1.0) -> Image.Image:
    """An L mask going linearly from ``top`` to ``bottom`` (fractions of 255) down its height."""
    lut = [round(255 * (top + (bottom - top) * v / 255)) for v in range(256)]
    # A one-pixel column widened with NEAREST: a tenth of the cost of resizing a full gradient.
    column = Image.linear_gradient("L").resize((1, max(1, height)), BILINEAR).point(lut)
    return column.resize((max(1, width), max(1, height)), NEAREST)


def _falloff(size: int, strength: float, power: float) -> Image.Image:
    """A round soft spot (255 * strength at the centre, 0 at the rim) as an L mask of ``size``."""
    # radial_gradient() is 0 at the centre and about 181 at the middle of each edge (255 in the corners).
    lut = [round(255 * strength * max(0.0, 1.0 - v / 181) ** power) for v in range(256)]
    return Image.radial_gradient("L").point(lut).resize((max(1, size), max(1, size)), BILINEAR)


class _Painter:
    """Paints one picture on a small canvas; ``subject`` records what is not sky (for transparency)."""

    def __init__(self, theme: Theme, rng: random.Random, size: tuple[int, int], detail: Detail):
        scale = min(detail.scale, math.sqrt(detail.max_pixels / (size[0] * size[1])))
        self.w, self.h = max(8, round(size[0] * scale)), max(8, round(size[1] * scale))
        self.theme, self.p, self.rng, self.detail = theme, theme.palette, rng, detail
        self.img = Image.new("RGB", (self.w, self.h), self.p.horizon)
        self.draw = ImageDraw.Draw(self.img, "RGBA")  # "RGBA" so translucent fills blend into the RGB canvas
        self.subject = Image.new("L", (self.w, self.h), 0)
        self.subject_draw = ImageDraw.Draw(self.subject)
        self.unit = min(self.w, self.h) / 100  # one percent of the short side: keeps shapes proportional

    def paint(self) -> tuple[Image.Image, Image.Image]:
        scene = self.theme.scene
        if scene == "abstract":
            self._sky(self.h)
            self._abstract()
        else:
            low, high = {"hills": (0.52, 0.66), "sea": (0.5, 0.62), "city": (0.6, 0.72)}[scene]
            horizon = round(self.h * self.rng.uniform(low, high))
            self._sky(horizon)
            if self.theme.night:
                self._stars(horizon)
            self._sun_or_moon(horizon)
            if not self.theme.night and self.rng.random() < 0.75:
                self._clouds(horizon)
            {"hills": self._hills, "sea": self._sea, "city": self._city}[scene](horizon)
            if not self.theme.night and scene != "city" and self.rng.random() < 0.5:
                self._birds(horizon)
        if self.theme.snow:
            self._snowfall()
        self._vignette()
        return self.img, self.subject

    def _polygon(self, points: Sequence[Point], fill: tuple[int, int, int, int]) -> None:
        self.draw.polygon(points, fill=fill)
        self.subject_draw.polygon(points, fill=255)

    def _ellipse(self, box: tuple[float, float, float, float], fill: tuple[int, int, int, int]) -> None:
        self.draw.ellipse(box, fill=fill)
        self.subject_draw.ellipse(box, fill=255)

    def _sky(self, horizon: int) -> None:
        column = ImageOps.colorize(_ramp(1, horizon), self.p.sky_top, self.p.horizon, self.p.sky_mid)
        self.img.paste(column.resize((self.w, max(1, horizon)), NEAREST), (0, 0))

    def _stars(self, horizon: int) -> None:
        for _ in range(round(self.rng.randint(90, 180) * self.detail.amount)):
            x, y = self.rng.uniform(0, self.w), self.rng.uniform(0, horizon) ** 1.15 * horizon**-0.15
            r = self.rng.choice((0.5, 0.5, 0.5, 0.9, 1.4)) * max(1.0, self.unit / 5)
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgba((255, 252, 235), self.rng.uniform(90, 255)))

    def _sun_or_moon(self, horizon: int) -> None:
        rng, p = self.rng, self.p
        r = self.unit * rng.uniform(6, 11)
        cx, cy = self.w * rng.uniform(0.18, 0.82), horizon * rng.uniform(0.3, 0.75)
        glow = round(r * rng.uniform(6, 9))
        self.img.paste(p.sun, (round(cx - glow / 2), round(cy - glow / 2)), _falloff(glow, 0.55, 2.2))
        box = (cx - r, cy - r, cx + r, cy + r)
        if not self.theme.night:
            self._ellipse(box, _rgba(p.sun, 255))
            return
        side = round(2 * r) + 1
        disk = Image.new("L", (side, side), 0)
        ImageDraw.Draw(disk).ellipse((0, 0, side - 1, side - 1), fill=255)
        bite = Image.new("L", (side, side), 0)
        shift = r * rng.uniform(0.45, 0.8) * rng.choice((-1, 1))
        ImageDraw.Draw(bite).ellipse((shift, -r * 0.15, side - 1 + shift, side - 1 - r * 0.15), fill=255)
        crescent = ImageChops.subtract(disk, bite)
        self.img.paste(p.sun, (round(cx - r), round(cy - r)), crescent)
        self.subject.paste(255, (round(cx - r), round(cy - r)), crescent)

    def _clouds(self, horizon: int) -> None:
        rng = self.rng
        band = Image.new("L", (self.w, max(1, horizon)), 0)
        band_draw = ImageDraw.Draw(band)
        for _ in range(rng.randint(1, 4)):
            cx, base = self.w * rng.uniform(0.05, 0.95), horizon * rng.uniform(0.15, 0.7)
            width = self.w * rng.uniform(0.12, 0.3)
            for _ in range(rng.randint(5, 9)):
                x = cx + rng.uniform(-0.5, 0.5) * width
                r = width * rng.uniform(0.1, 0.22) * (1.2 - abs(x - cx) / width)
                band_draw.ellipse((x - r * 1.4, base - r * 1.6, x + r * 1.4, base + r * 0.4), fill=255)
            band_draw.rectangle((cx - width, base, cx + width, base + width), fill=0)  # flat cloud bottoms
        band = band.filter(ImageFilter.GaussianBlur(self.unit * 0.8))
        opacity = rng.uniform(0.55, 0.8)
        band = band.point([round(v * opacity) for v in range(256)])
        self.img.paste(_mix(self.p.horizon, (255, 255, 255), 0.6), (0, 0), band)

    def _ridge(self, base: float, amplitude: float, jagged: bool) -> Callable[[float], float]:
        rng = self.rng
        bumps = rng.uniform(0.8, 2.2) * 2 * math.pi / self.w
        waves = [(bumps * 2.1**j * rng.uniform(0.8, 1.25), rng.uniform(0, 2 * math.pi), 0.55**j) for j in range(4)]
        total = sum(a for _, _, a in waves)

        def height(x: float) -> float:
            if jagged:  # 1 - |sin| has sharp crests: mountain peaks rather than rolling hills
                s = sum(a * (1 - abs(math.sin(f * x + ph))) for f, ph, a in waves) / total
            else:
                s = 0.5 + 0.5 * sum(a * math.sin(f * x + ph) for f, ph, a in waves) / total
            return base - amplitude * s

        return height

    def _ridge_points(self, height: Callable[[float], float], x0: float = 0.0, x1: float | None = None) -> list[Point]:
        x1 = self.w if x1 is None else x1
        step = max(2.0, self.w / 180)
        count = max(2, math.ceil((x1 - x0) / step))
        return [(x0 + (x1 - x0) * i / count, height(x0 + (x1 - x0) * i / count)) for i in range(count + 1)]

    def _hills(self, horizon: int) -> None:
        rng, p = self.rng, self.p
        layers = self.detail.layers
        mountains = rng.random() < 0.6
        for k in range(layers):
            t = k / max(1, layers - 1)
            base = horizon + (self.h - horizon) * (0.1 + 0.75 * t**1.3)
            amplitude = self.h * (0.32 - 0.24 * t) * rng.uniform(0.7, 1.1)
            height = self._ridge(base, amplitude, jagged=mountains and k < layers // 2)
            colour = _mix(_mix(p.far, p.near, t**0.9), p.horizon, 0.35 * (1 - t) ** 1.5)
            ridge = self._ridge_points(height)
            # A sunlit rim: the layer drawn in a lighter colour, then again a little lower in its own colour.
            rim, drop = _mix(colour, p.sun, 0.45 * (1 - t) + 0.1), max(1.0, self.unit * 0.3)
            self._polygon([(0, self.h), *ridge, (self.w, self.h)], _rgba(rim, 255))
            self.draw.polygon([(0, self.h), *((x, y + drop) for x, y in ridge), (self.w, self.h)], fill=colour)
            if self.theme.trees and k >= layers - 2:
                self._trees(height, t, _mix(colour, p.near, 0.45))
            if k < layers - 1:  # mist in the valley in front of this layer gives depth
                top = round(base - amplitude * 0.35)
                self.img.paste(p.horizon, (0, top), _ramp(self.w, self.h - top, 0.0, 0.45))

    def _trees(self, height: Callable[[float], float], t: float, colour: RGB) -> None:
        rng = self.rng
        for _ in range(round(rng.randint(8, 18) * self.detail.amount)):
            x = rng.uniform(0, self.w)
            foot = height(x) + self.unit * rng.uniform(0.5, 3)
            tall = self.unit * rng.uniform(4, 9) * (0.6 + 0.6 * t)
            half = tall * rng.uniform(0.22, 0.3)
            for tier in range(3):  # three stacked triangles make a pine
                top = foot - tall * (1 - tier * 0.22)
                bottom = foot - tall * 0.35 * (2 - tier) + tall * 0.05
                widen = half * (0.55 + 0.3 * tier)
                self._polygon([(x, top), (x + widen, bottom), (x - widen, bottom)], _rgba(colour, 255))
            self._polygon(
                [
                    (x - half * 0.12, foot - tall * 0.1),
                    (x + half * 0.12, foot - tall * 0.1),
                    (x + half * 0.12, foot),
                    (x - half * 0.12, foot),
                ],
                _rgba(colour, 255),
            )

    def _sea(self, horizon: int) -> None:
        rng, p = self.rng, self.p
        if rng.random() < 0.6:  # a distant island or headland on the horizon
            x0 = self.w * rng.uniform(-0.2, 0.6)
            x1 = x0 + self.w * rng.uniform(0.25, 0.6)
            height = self._ridge(horizon, self.h * rng.uniform(0.04, 0.1), jagged=rng.random() < 0.5)

            def taper(x: float) -> float:
                edge = min(1.0, 4 * min(x - x0, x1 - x) / (x1 - x0))
                return horizon - (horizon - height(x)) * max(0.0, edge)

            colour = _mix(p.far, p.horizon, 0.3)
            self._polygon([(x0, horizon), *self._ridge_points(taper, x0, x1), (x1, horizon)], _rgba(colour, 255))
        far_water = _mix(p.horizon, p.far, 0.55)
        column = ImageOps.colorize(_ramp(1, self.h - horizon), far_water, p.near, _mix(p.far, p.near, 0.45))
        self.img.paste(column.resize((self.w, max(1, self.h - horizon)), NEAREST), (0, horizon))
        self.subject_draw.rectangle((0, horizon, self.w, self.h), fill=255)
        self._glitter(horizon)
        rows = round(26 * self.detail.amount)
        for i in range(1, rows):
            depth = (i / rows) ** 1.8  # perspective: rows spread out towards the viewer
            y = horizon + (self.h - horizon) * depth
            for _ in range(rng.randint(3, 7)):
                x, length = rng.uniform(0, self.w), self.w * rng.uniform(0.02, 0.07) * (0.5 + 2 * depth)
                bow = self.unit * (0.2 + 1.2 * depth)
                self.draw.arc(
                    (x, y - bow, x + length, y + bow),
                    200,
                    340,
                    fill=_rgba(p.horizon, 60 + 90 * depth),
                    width=max(1, round(self.unit * (0.15 + 0.4 * depth))),
                )
        for k in range(2):  # two foreground swells with bright crests
            base = self.h * (0.9 + 0.06 * k)
            height = self._ridge(base, self.h * rng.uniform(0.04, 0.08), jagged=False)
            ridge = self._ridge_points(height)
            colour, crest = _mix(p.near, p.far, 0.25 - 0.2 * k), _mix(p.horizon, (255, 255, 255), 0.35)
            self._polygon([(0, self.h), *ridge, (self.w, self.h)], _rgba(crest, 255))
            drop = max(1.0, self.unit * 0.45)
            self.draw.polygon([(0, self.h), *((x, y + drop) for x, y in ridge), (self.w, self.h)], fill=colour)

    def _glitter(self, horizon: int) -> None:
        """The sun's reflection on water: short bright strokes under the brightest part of the sky."""
        rng, p = self.rng, self.p
        centre = self.w * rng.uniform(0.3, 0.7)
        y = float(horizon) + 1
        while y < self.h:
            depth = (y - horizon) / (self.h - horizon)
            spread = self.w * (0.02 + 0.12 * depth)
            for _ in range(2):
                x = centre + rng.uniform(-1, 1) * spread
                length = spread * rng.uniform(0.2, 0.6)
                self.draw.line(
                    [(x - length / 2, y), (x + length / 2, y)],
                    fill=_rgba(p.sun, 200 - 140 * depth),
                    width=max(1, round(self.unit * (0.2 + 0.5 * depth))),
                )
            y += self.unit * (0.5 + 2.5 * depth)

    def _city(self, horizon: int) -> None:
        rng, p = self.rng, self.p
        waterfront = rng.random() < 0.5
        for layer in range(2):
            near = layer == 1
            colour = p.near if near else _mix(p.far, p.horizon, 0.3)
            x = -rng.uniform(0, self.w * 0.05)
            while x < self.w:
                width = self.w * rng.uniform(0.035, 0.09)
                tall = self.h * (rng.uniform(0.06, 0.26) if near else rng.uniform(0.12, 0.36))
                top = horizon - tall
                self._polygon([(x, top), (x + width, top), (x + width, horizon), (x, horizon)], _rgba(colour, 255))
                if rng.random() < 0.2:  # spire or antenna
                    mid = x + width / 2
                    self._polygon(
                        [(mid - width * 0.2, top), (mid, top - tall * 0.25), (mid + width * 0.2, top)],
                        _rgba(colour, 255),
                    )
                if near:
                    self._windows(x, top, width, horizon)
                x += width * rng.uniform(0.75, 1.05)
        if waterfront:  # the skyline mirrored in dark, rippled water
            mirror = self.img.crop((0, max(0, 2 * horizon - self.h), self.w, horizon)).transpose(
                Image.Transpose.FLIP_TOP_BOTTOM
            )
            mirror = Image.blend(mirror, Image.new("RGB", mirror.size, p.near), 0.55)
            self.img.paste(mirror, (0, horizon))
            for _ in range(round(40 * self.detail.amount)):
                y = rng.uniform(horizon, self.h)
                x, length = rng.uniform(0, self.w), self.w * rng.uniform(0.03, 0.12)
                self.draw.line(
                    [(x, y), (x + length, y)], fill=_rgba(p.horizon, 50), width=max(1, round(self.unit * 0.3))
                )
        else:
            self.draw.rectangle((0, horizon, self.w, self.h), fill=_rgba(_mix(p.near, (0, 0, 0), 0.3), 255))
        self.subject_draw.rectangle((0, horizon, self.w, self.h), fill=255)

    def _windows(self, x: float, top: float, width: float, bottom: float) -> None:
        rng = self.rng
        lit = 0.4 if self.theme.night else 0.12
        size = max(1.0, self.unit * 0.9)
        gap = size * 1.9
        yy = top + gap
        while yy < bottom - gap:
            xx = x + gap * 0.7
            while xx < x + width - gap * 0.7:
                if rng.random() < lit:
                    self.draw.rectangle((xx, yy, xx + size, yy + size), fill=_rgba(self.p.accent, 220))
                xx += gap
            yy += gap

    def _abstract(self) -> None:
        rng, p = self.rng, self.p
        colours = (p.sky_mid, p.horizon, p.sun, p.far, p.near, p.accent)
        r = min(self.w, self.h) * rng.uniform(0.18, 0.3)
        cx, cy = self.w * rng.uniform(0.3, 0.7), self.h * rng.uniform(0.3, 0.6)
        self._ellipse((cx - r, cy - r, cx + r, cy + r), _rgba(p.sun, 235))
        for _ in range(round(rng.randint(7, 12) * self.detail.amount)):
            kind = rng.choice(("circle", "ring", "triangle", "bar", "half", "stripes"))
            colour = _rgba(rng.choice(colours), rng.uniform(120, 230))
            x, y = self.w * rng.uniform(0.05, 0.95), self.h * rng.uniform(0.05, 0.95)
            s = min(self.w, self.h) * rng.uniform(0.05, 0.22)
            if kind == "circle":
                self._ellipse((x - s, y - s, x + s, y + s), colour)
            elif kind == "ring":
                self.draw.ellipse((x - s, y - s, x + s, y + s), outline=colour, width=max(1, round(s * 0.12)))
                self.subject_draw.ellipse((x - s, y - s, x + s, y + s), outline=255, width=max(1, round(s * 0.12)))
            elif kind == "triangle":
                a = rng.uniform(0, 2 * math.pi)
                corners = [(x + s * math.cos(a + i * 2.094), y + s * math.sin(a + i * 2.094)) for i in range(3)]
                self._polygon(corners, colour)
            elif kind == "bar":
                a, long, thin = rng.uniform(0, math.pi), s * 2.2, s * 0.25
                dx, dy, nx, ny = math.cos(a) * long, math.sin(a) * long, -math.sin(a) * thin, math.cos(a) * thin
                self._polygon(
                    [
                        (x - dx + nx, y - dy + ny),
                        (x + dx + nx, y + dy + ny),
                        (x + dx - nx, y + dy - ny),
                        (x - dx - nx, y - dy - ny),
                    ],
                    colour,
                )
            elif kind == "half":
                start = rng.choice((0, 90, 180, 270))
                self.draw.pieslice((x - s, y - s, x + s, y + s), start, start + 180, fill=colour)
                self.subject_draw.pieslice((x - s, y - s, x + s, y + s), start, start + 180, fill=255)
            else:
                for i in range(rng.randint(4, 7)):
                    yy = y + i * s * 0.3
                    self.draw.line([(x - s * 1.5, yy), (x + s * 1.5, yy)], fill=colour, width=max(1, round(s * 0.08)))

    def _birds(self, horizon: int) -> None:
        rng = self.rng
        cx, cy = self.w * rng.uniform(0.2, 0.8), horizon * rng.uniform(0.2, 0.55)
        colour = _rgba(_mix(self.p.near, self.p.sky_top, 0.3), 210)
        for _ in range(rng.randint(3, 7)):
            x, y = cx + self.unit * rng.uniform(-12, 12), cy + self.unit * rng.uniform(-6, 6)
            s = self.unit * rng.uniform(0.9, 1.8)
            wing = rng.uniform(0.25, 0.55)
            self.draw.line(
                [
                    (x - s, y - s * wing),
                    (x - s * 0.4, y - s * 0.15),
                    (x, y),
                    (x + s * 0.4, y - s * 0.15),
                    (x + s, y - s * wing),
                ],
                fill=colour,
                width=max(1, round(self.unit * 0.25)),
            )

    def _snowfall(self) -> None:
        rng = self.rng
        for _ in range(round(self.w * self.h / 1400 * self.detail.amount)):
            x, y, r = rng.uniform(0, self.w), rng.uniform(0, self.h), self.unit * rng.uniform(0.12, 0.45)
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgba((255, 255, 255), rng.uniform(110, 230)))

    def _vignette(self) -> None:
        lut = [round(255 * 0.38 * max(0.0, (v / 255 - 0.5) / 0.5) ** 1.6) for v in range(256)]
        shade = Image.radial_gradient("L").point(lut).resize((self.w, self.h), BILINEAR)
        self.img.paste((0, 0, 0), (0, 0), shade)


def _caption(img: Image.Image, prompt: str) -> None:
    """The prompt in small type on a soft dark band at the bottom, like a print's title."""
    text = "".join(ch for ch in " ".join(prompt.split()) if ch.isprintable() and ord(ch) < 0x250)
    w, h = img.size
    if not text or min(w, h) < 96:
        return
    font = ImageFont.load_default(size=max(10, round(min(w, h) / 56)))
    pad = round(min(w, h) / 40)
    room = w - 2 * pad
    if font.getlength(text) > room:
        # Binary search for the longest prefix that fits: long prompts (up to 32,000 characters) stay cheap.
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if font.getlength(text[:middle] + "…") <= room:
                low = middle
            else:
                high = middle - 1
        text = text[:low].rstrip() + "…"
    left, top, _, bottom = font.getbbox(text)
    band = round((bottom - top) * 3)
    img.paste((0, 0, 0), (0, h - band), _ramp(w, band, 0.0, 0.5))
    draw = ImageDraw.Draw(img, "RGBA")
    draw.text((pad - left, h - band + (band - (bottom - top)) * 0.62 - top), text, font=font, fill=(255, 255, 255, 215))


def _paint(
    prompt: str, index: int, size: tuple[int, int], detail: Detail, *, transparent: bool, caption: bool
) -> Image.Image:
    """The picture for ``prompt`` and image ``index`` at ``size``: RGB, or RGBA with a clear sky."""
    theme = theme_for(normalise_prompt(prompt))
    img, subject = _Painter(theme, _rng(normalise_prompt(prompt), index), size, detail).paint()
    if img.size != size:  # supersampled canvases smooth ImageDraw's jagged edges; small ones are just faster
        img = img.resize(size, BICUBIC)
    if transparent:
        img.putalpha(subject.resize(size, BICUBIC))
    elif caption:
        _caption(img, prompt)
    return img


# --- edits and variations ---------------------------------------------------------------------------------


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            img = opened.copy()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise InvalidImageError(detail=f"offline provider could not decode the {what}: {exc!r}") from exc
    return img


def _editable_area(mask_bytes: bytes, size: tuple[int, int]) -> Image.Image:
    """L mask, 255 where the picture may change: transparent mask pixels (or white ones if it has no alpha)."""
    mask = _decode(mask_bytes, "mask")
    if mask.size != size:
        raise InvalidImageError(
            N_("The mask must be the same size as the image."), detail=f"mask {mask.size} vs image {size}"
        )
    if "A" in mask.getbands() or mask.has_transparency_data:
        return ImageChops.invert(mask.convert("RGBA").getchannel("A"))
    return mask.convert("L")


def _soft_inside(editable: Image.Image) -> Image.Image:
    """Feather the edge of the editable area inwards only, so kept pixels stay exactly as they were."""
    radius = max(1.0, min(editable.size) / 150)
    blurred = editable.filter(ImageFilter.GaussianBlur(radius))
    # 2v - 255 makes the ramp start at the border (blur = 128 there) and reach full strength inside.
    inner = blurred.point([max(0, 2 * v - 255) for v in range(256)])
    return ImageChops.darker(inner, editable)


def _warp(img: Image.Image, rng: random.Random) -> Image.Image:
    """A gentle seeded wobble: a mesh of up to 4x4 cells whose inner grid points move by up to ~2% of the short side.

    An edge shorter than 4 px gets as many cells as it has pixels: a cell of zero width or height would make
    Pillow's mesh transform divide by zero.
    """
    w, h = img.size
    columns, rows, amp = min(4, w), min(4, h), min(w, h) * 0.02
    xs = [round(w * i / columns) for i in range(columns + 1)]
    ys = [round(h * j / rows) for j in range(rows + 1)]
    moved = {
        (i, j): (
            xs[i] + (rng.uniform(-amp, amp) if 0 < i < columns else 0.0),
            ys[j] + (rng.uniform(-amp, amp) if 0 < j < rows else 0.0),
        )
        for i in range(columns + 1)
        for j in range(rows + 1)
    }
    mesh = [
        (
            (xs[i], ys[j], xs[i + 1], ys[j + 1]),
            (*moved[i, j], *moved[i, j + 1], *moved[i + 1, j + 1], *moved[i + 1, j]),
        )
        for i in range(columns)
        for j in range(rows)
    ]
    return img.transform((w, h), Image.Transform.MESH, mesh, resample=BILINEAR)


def _shift_hue(img: Image.Image, shift: int) -> Image.Image:
    hue, sat, val = img.convert("HSV").split()
    hue = hue.point([(v + shift) % 256 for v in range(256)])
    return Image.merge("HSV", (hue, sat, val)).convert("RGB")


def _restyle(base: Image.Image, render: Image.Image, rng: random.Random) -> Image.Image:
    """A variation: the input wobbled, hue-shifted and lightly textured with the procedural render."""
    warped = _warp(base, rng)
    shifted = _shift_hue(warped, rng.choice((-1, 1)) * rng.randint(6, 16))
    textured = Image.blend(shifted, ImageChops.soft_light(shifted, render), 0.5)
    out = Image.blend(textured, render, 0.12)
    if base.mode == "RGBA":
        out.putalpha(warped.getchannel("A"))
    return out


def _edit_one(images: tuple[bytes, ...], mask: bytes | None, prompt: str, index: int, detail: Detail) -> Image.Image:
    """Image ``index`` of an edit: the prompt's picture inside the editable area, or a variation."""
    source = _decode(images[0], "image")
    base = source.convert("RGBA" if source.has_transparency_data else "RGB")
    render = _paint(prompt, index, base.size, detail, transparent=False, caption=False)
    for extra in images[1:4]:  # reference images only tint the render; the first image stays the subject
        render = Image.blend(render, _decode(extra, "image").convert("RGB").resize(base.size, BILINEAR), 0.2)
    if mask is None:
        return _restyle(base, render, _rng("vary", normalise_prompt(prompt), index))
    editable = _editable_area(mask, base.size)
    return Image.composite(render.convert(base.mode), base, _soft_inside(editable))


# --- encoding and the provider ----------------------------------------------------------------------------


def _encode(img: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    if output_format == "jpeg":
        if img.mode == "RGBA":  # JPEG has no alpha: flatten onto white like most viewers show it
            flat = Image.new("RGB", img.size, (255, 255, 255))
            flat.paste(img, (0, 0), img)
            img = flat
        img.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    elif output_format == "webp":
        img.save(buffer, "WEBP", quality=WEBP_QUALITY)
    else:
        img.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _size(size: str | None) -> tuple[int, int]:
    if size is None or size.strip().lower() in {"", "auto"}:
        return DEFAULT_SIZE
    parsed = parse_size(size)
    if parsed is None or not all(MIN_SIDE <= side <= MAX_SIDE for side in parsed):
        raise InvalidRequestError(
            N_(
                "Image sizes look like 1024x1024, each side between {low} and {high} pixels.",
                low=MIN_SIDE,
                high=MAX_SIDE,
            ),
            detail=f"offline provider got size {size!r}",
        )
    return parsed


def _format(output_format: str | None) -> str:
    name = (output_format or "png").strip().lower()
    return "jpeg" if name in {"jpg", "jpeg"} else name if name == "webp" else "png"


def _detail(quality: str | None) -> Detail:
    return _DETAIL[_QUALITY_TO_DETAIL.get((quality or "").strip().lower(), "medium")]


def _guarded(work: Callable[[], bytes]) -> bytes:
    """Run Pillow work (in a worker thread) and let only ImageBotError out, as the port promises."""
    try:
        return work()
    except ImageBotError:
        raise
    except Exception as exc:
        raise UnexpectedError(detail=f"offline provider failed: {exc!r}") from exc


def _generate_one(prompt: str, index: int, size: tuple[int, int], detail: Detail, transparent: bool, fmt: str) -> bytes:
    return _encode(_paint(prompt, index, size, detail, transparent=transparent, caption=not transparent), fmt)


def _edit_encoded(images: tuple[bytes, ...], mask: bytes | None, prompt: str, index: int, detail: Detail) -> bytes:
    return _encode(_edit_one(images, mask, prompt, index, detail), "png")


def _quarter(size: tuple[int, int]) -> tuple[int, int]:
    return max(16, size[0] // 4), max(16, size[1] // 4)


def _blurred(img: Image.Image) -> bytes:
    """A blurred PNG: what a streaming service's first partial image looks like."""
    return _encode(img.convert("RGB").filter(ImageFilter.GaussianBlur(3)), "png")


def _generate_preview(prompt: str, size: tuple[int, int], detail: Detail) -> bytes:
    return _blurred(_paint(prompt, 0, _quarter(size), detail, transparent=False, caption=False))


def _edit_preview(image: bytes) -> bytes:
    source = _decode(image, "image")
    return _blurred(source.resize(_quarter(source.size), BILINEAR))


class OfflineImages:
    """An ``ImageProvider`` that paints procedural pictures locally: no network, no key, no cost.

    ``delay`` adds a pause per call, to try the bot's progress messages as if a real service were slow.
    """

    def __init__(self, *, delay: float = 0.0):
        self._delay = delay

    @property
    def name(self) -> str:
        return "offline"

    @property
    def offline(self) -> bool:
        return True

    async def generate(self, call: ProviderGenerate, *, on_partial: OnPartial | None = None) -> ProviderImages:
        size, detail, fmt = _size(call.size), _detail(call.quality), _format(call.output_format)
        transparent = (call.background or "").strip().lower() == "transparent"
        if call.partial_images > 0 and on_partial is not None:
            await self._preview(on_partial, functools.partial(_generate_preview, call.prompt, size, detail))
        jobs = [functools.partial(_generate_one, call.prompt, i, size, detail, transparent, fmt) for i in range(call.n)]
        return await self._run("generate", jobs)

    async def edit(self, call: ProviderEdit, *, on_partial: OnPartial | None = None) -> ProviderImages:
        if not call.images:
            raise InvalidImageError(detail="offline provider: edit without an image")
        detail = _detail(call.quality)
        if call.partial_images > 0 and on_partial is not None:
            await self._preview(on_partial, functools.partial(_edit_preview, call.images[0]))
        jobs = [functools.partial(_edit_encoded, call.images, call.mask, call.prompt, i, detail) for i in range(call.n)]
        return await self._run("edit", jobs)

    async def vary(self, call: ProviderVary) -> ProviderImages:
        detail = _DETAIL["medium"]
        jobs = [
            functools.partial(_edit_encoded, (call.image,), None, VARIATION_PROMPT, i, detail) for i in range(call.n)
        ]
        return await self._run("vary", jobs)

    async def check(self, model: str) -> ProviderHealth:
        return ProviderHealth(reachable=True, model_known=True, detail=HEALTH_DETAIL)

    async def recover(self, spool: Path) -> ProviderImages:
        """Offline images cost nothing and are never spooled: a cut-off job is simply interrupted."""
        raise ProviderResponseError(detail=f"the offline provider keeps no spool ({spool.name})")

    @staticmethod
    async def _preview(on_partial: OnPartial, make: Callable[[], bytes]) -> None:
        """One cheap preview before the real work; a failing receiver does not stop the job."""
        preview = await asyncio.to_thread(_guarded, make)
        try:
            await on_partial(preview)
        except Exception:
            log.exception("offline: a preview handler failed (the job goes on)")

    async def _run(self, operation: str, jobs: list[functools.partial[bytes]]) -> ProviderImages:
        if not jobs:
            raise InvalidRequestError(N_("Ask for at least one image."), detail=f"offline {operation} with n < 1")
        started = time.perf_counter()
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        # One worker thread per image: Pillow releases the GIL in its C code, so images paint in parallel.
        images = await asyncio.gather(*(asyncio.to_thread(_guarded, job) for job in jobs))
        log.debug("offline %s: %d image(s) in %.2f s", operation, len(images), time.perf_counter() - started)
        return ProviderImages(images=tuple(images), usage=Usage(), revised_prompts=(None,) * len(images))
