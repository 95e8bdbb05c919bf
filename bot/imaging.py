"""Pillow-only image work: read untrusted uploads, prepare them for the API, check and shrink results.

Everything here is synchronous and pure (bytes in, bytes out); the service calls it through
``asyncio.to_thread``. Bad uploads raise ``InvalidImageError`` with a message that says what is accepted;
bad provider output raises ``ProviderResponseError``. No raw Pillow exception leaves this module.
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageFile, ImageFont, ImageOps, UnidentifiedImageError

from bot.errors import InvalidImageError, ProviderResponseError
from bot.text import N_

FORMATS = ("png", "jpeg", "webp", "gif")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif"}
REGION_NAMES = ("top-half", "bottom-half", "left-half", "right-half", "center", "border")

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
_ACCEPTED = N_("PNG, JPEG, WebP or GIF")  # a phrase inside sentences: its "or" is translated too

# Provider output and our own PNGs have no configured pixel limit; this still stops a hostile header.
_TRUSTED_MAX_PIXELS = 64_000_000

# Everything Pillow's decoders are known to raise on hostile or damaged input.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)

# warnings.catch_warnings swaps a process-wide filter list; without the lock two worker threads could
# restore each other's filters out of order and leave "error" switched on for the whole process.
_WARNINGS_LOCK = threading.Lock()

_RESAMPLE = Image.Resampling.LANCZOS
# With a gap of 3, Pillow first shrinks by an integer factor with reduce() (cheap box filter) and then
# resamples; its docs call the result indistinguishable from a full LANCZOS pass.
_REDUCING_GAP = 3.0
_SHRINK_STEP = 0.75
_DRAFT_SLACK = 0.15  # accept a JPEG decoded at 1/2 (1/4, 1/8) scale when that is within 15% of the target
_MIN_UPLOAD_EDGE = 256
_MIN_OUTPUT_EDGE = 16

_MASK_KEEP = (0, 0, 0, 255)
_MASK_EDIT = (0, 0, 0, 0)
# Lookup tables for Image.point on "L" images.
_LUT_OPAQUE_ONLY = [0] * 255 + [255]  # alpha == 255 -> 255 (keep), anything else -> 0 (editable)
_LUT_AT_LEAST_HALF = [0] * 128 + [255] * 128  # value >= 128 -> 255
_LUT_BELOW_HALF = [255] * 128 + [0] * 128  # value < 128 -> 255
_LUT_INVERT = list(range(255, -1, -1))

_GRID = re.compile(r"([A-D])([1-4])(?::([A-D])([1-4]))?")
_REGION_FRACTIONS: dict[str, tuple[float, float, float, float]] = {
    "top-half": (0.0, 0.0, 1.0, 0.5),
    "bottom-half": (0.0, 0.5, 1.0, 1.0),
    "left-half": (0.0, 0.0, 0.5, 1.0),
    "right-half": (0.5, 0.0, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "border": (0.0, 0.0, 1.0, 1.0),  # the frame; region_mask keeps the inside
}
_BORDER_FRACTION = 1 / 8

_SHEET_BACKGROUND = (24, 24, 27)
_LABEL_BACKGROUND = (0, 0, 0)
_LABEL_TEXT = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An upload normalised for the API: encoded bytes (PNG, or JPEG where allowed) and what to know of them."""

    data: bytes
    width: int
    height: int
    has_transparency: bool  # True if any pixel has alpha < 255
    mime_type: str = "image/png"
    extension: str = "png"


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """What a verified result is: format, MIME type, file extension and size in pixels."""

    format: str
    mime_type: str
    extension: str
    width: int
    height: int


class _BadImageError(Exception):
    """Internal: why bytes could not become pixels. Public functions decide whom to blame."""

    def __init__(
        self,
        reason: Literal["format", "pixels", "corrupt"],
        detail: str,
        *,
        size: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.size = size
        self.limit = limit


# --- reading ---------------------------------------------------------------------------------------------


def sniff_format(data: bytes) -> str | None:
    """The format named by the magic bytes ("png", "jpeg", "webp", "gif"), or None. Names don't count."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an untrusted upload into a single-frame, upright "RGB" or "RGBA" image.

    Refuses empty, oversized, unknown, too-many-pixel (checked from the header, before decoding) and
    damaged files with ``InvalidImageError``.
    """
    _check_upload_bytes(data, max_bytes)
    try:
        img, fmt = _open_header(data, max_pixels)
        return _normalise_mode(_decode(img, fmt)[0])
    except _BadImageError as exc:
        raise _upload_error(exc) from exc


def inspect_output(data: bytes) -> OutputInfo:
    """Verify a provider's image (known format, fully decodable) and describe it.

    Raises ``ProviderResponseError``: a broken result is the provider's fault, not the user's.
    """
    info = quick_output_info(data, max_chunks=None)
    if info is not None:
        return info
    try:
        img, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        _load(img)
    except _BadImageError as exc:
        raise _output_error(exc) from exc
    return _output_info(fmt, img.size)


QUICK_PNG_CHUNKS = 2048  # a 4 MB PNG in 8 KiB chunks (libpng's default) has ~500


def quick_output_info(data: bytes, *, max_chunks: int | None = QUICK_PNG_CHUNKS) -> OutputInfo | None:
    """``inspect_output`` for a PNG of at most ``max_chunks`` chunks, checked by its chunk frames without a decode
    (well under a millisecond: fit for the event loop); None for anything that needs more (other formats are
    decoded to be checked; a PNG cut into more chunks is walked in a worker thread)."""
    if sniff_format(data) != "png":
        return None
    try:
        img, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        if not _walk_png(data, max_chunks):
            return None
    except _BadImageError as exc:
        raise _output_error(exc) from exc
    return _output_info(fmt, img.size)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DATA = b"IDAT"


def _walk_png(data: bytes, max_chunks: int | None = None) -> bool:
    """Follow a PNG's chunks from the signature to an IEND that ends the file; check every chunk's CRC except
    those of the image data (IDAT) before the last one.

    A provider's PNG comes over TLS, base64-checked: what goes wrong is a cut-off, padded or spliced answer,
    which the chunk frames show. The megabytes of IDAT are not CRC-summed (zlib's CRC costs ~0.4 ms per MB, more
    than everything else done with a result on its way to the chat); the last IDAT is, where a cut-off shows.
    False: it has more than ``max_chunks`` chunks (nothing said yet about the rest).
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise _BadImageError("corrupt", "no PNG signature")
    view = memoryview(data)
    size, pos, first = len(data), len(_PNG_SIGNATURE), True
    unchecked: tuple[int, int] | None = None  # the IDAT just passed: checked if it turns out to be the last
    chunks = 0
    try:
        while pos + 12 <= size:
            chunks += 1
            if max_chunks is not None and chunks > max_chunks:
                return False
            (length,) = struct.unpack_from(">I", data, pos)
            kind = bytes(view[pos + 4 : pos + 8])
            end = pos + 8 + length
            if length > 0x7FFFFFFF or end + 4 > size:
                raise _BadImageError("corrupt", f"chunk {kind!r} at {pos} runs past the end ({size} bytes)")
            if first and kind != b"IHDR":
                raise _BadImageError("corrupt", f"first chunk is {kind!r}, not IHDR")
            first = False
            if kind == _PNG_DATA:
                unchecked = (pos, end)
            else:
                if unchecked is not None:
                    _check_crc(data, view, *unchecked)
                    unchecked = None
                _check_crc(data, view, pos, end)
            pos = end + 4
            if kind == b"IEND":
                if pos != size:
                    raise _BadImageError("corrupt", f"{size - pos} bytes after IEND")
                return True
    finally:
        view.release()
    raise _BadImageError("corrupt", f"no IEND chunk in {size} bytes")


def _check_crc(data: bytes, view: memoryview, pos: int, end: int) -> None:
    (expected,) = struct.unpack_from(">I", data, end)
    if zlib.crc32(view[pos + 4 : end]) != expected:
        raise _BadImageError("corrupt", f"chunk {bytes(view[pos + 4 : pos + 8])!r} at {pos} fails its CRC")


def _check_upload_bytes(data: bytes, max_bytes: int) -> None:
    if not data:
        raise InvalidImageError(N_("That file is empty. Send a {formats} image.", formats=_ACCEPTED), detail="0 bytes")
    if len(data) > max_bytes:
        raise InvalidImageError(
            N_(
                "That image is {size}; the limit is {limit}. Send a smaller {formats}.",
                size=_byte_size(len(data)),
                limit=_byte_size(max_bytes),
                formats=_ACCEPTED,
            ),
            detail=f"{len(data)} bytes > max_bytes={max_bytes}",
        )


def _open_header(data: bytes, max_pixels: int) -> tuple[ImageFile.ImageFile, str]:
    """Identify by magic bytes and read only the header; refuse too many pixels before any decoding."""
    fmt = sniff_format(data)
    if fmt is None:
        raise _BadImageError("format", f"no accepted magic bytes in {len(data)} bytes")
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that; a warning is no guard, so make it fail.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        limit = max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)
        raise _BadImageError("pixels", f"{fmt}: {type(exc).__name__}: {exc}", limit=limit) from exc
    except _DECODE_ERRORS as exc:
        raise _BadImageError("corrupt", f"{fmt} header: {type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width < 1 or height < 1:
        raise _BadImageError("corrupt", f"{fmt} header says {width}x{height}")
    if width * height > max_pixels:
        raise _BadImageError(
            "pixels", f"{fmt} {width}x{height} > max_pixels={max_pixels}", size=(width, height), limit=max_pixels
        )
    return img, fmt


def _load(img: ImageFile.ImageFile) -> None:
    """Decode every pixel of the current frame, so truncation and corruption show up here."""
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise _BadImageError("corrupt", f"decoding failed: {type(exc).__name__}: {exc}") from exc


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF must not cost the user their picture
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode(img: ImageFile.ImageFile, fmt: str, *, scale: float = 1.0, slack: float = 0.0) -> tuple[Image.Image, bool]:
    """Load the first frame and turn it upright; also say whether EXIF turned it by 90 degrees.

    ``scale`` < 1 lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 size. The draft size is only ever rounded
    up, so the result is at least ``scale * (1 - slack)`` times the original on both edges.
    """
    wanted = scale * (1 - slack)
    if fmt == "jpeg" and wanted <= 0.5:
        width, height = img.size  # a 90-degree EXIF turn doesn't matter: both edges get the same factor
        img.draft(img.mode, (max(1, math.ceil(width * wanted)), max(1, math.ceil(height * wanted))))
    _load(img)
    orientation = _orientation(img)  # after load: a PNG may keep its eXIf chunk after the pixels
    if orientation == 1:
        return img, False
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except _DECODE_ERRORS:
        return img, False  # as above: keep the picture as stored
    return img, orientation in (5, 6, 7, 8)


def _has_transparency_info(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Convert to "RGBA" when the file has any transparency information, else "RGB"."""
    source_mode = img.mode
    try:
        if source_mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            out = _sixteen_bit_to_rgb(img)
        else:
            if source_mode == "1":
                img = img.convert("L")  # keeps "transparency"; "1" has no direct path to RGBA
            target = "RGBA" if _has_transparency_info(img) else "RGB"
            out = img if img.mode == target else img.convert(target)
    except _DECODE_ERRORS as exc:
        raise _BadImageError("corrupt", f"cannot convert {source_mode}: {type(exc).__name__}: {exc}") from exc
    if out is img and getattr(img, "is_animated", False):
        out = img.copy()  # a plain Image: later frames of an animation are no longer reachable
    # An ICC profile describes the source colour space; on converted CMYK or grey pixels it would lie.
    if source_mode not in ("RGB", "RGBA", "P", "PA"):
        out.info.pop("icc_profile", None)
    out.info.pop("transparency", None)
    return out


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit grey to 8 bits by scaling 0..65535 onto 0..255 (a plain convert would clip to white)."""
    grey = img.point(lambda value: value / 257 + 0.5).convert("L")
    key = img.info.get("transparency")
    if not isinstance(key, int):
        return grey.convert("RGB")
    # A tRNS key on 16-bit grey: exactly that value is transparent. |value - key| is 0 only there; the two
    # one-sided differences are each clipped at 0 by the conversion to "L".
    above = img.point(lambda value: value - key).convert("L")
    below = img.point(lambda value: key - value).convert("L")
    rgba = grey.convert("RGBA")
    rgba.putalpha(ImageChops.lighter(above, below).point([0] + [255] * 255))
    return rgba


# --- metadata ---------------------------------------------------------------------------------------------

# What a stored upload keeps: what its pixels and colours need. Everything else (EXIF with GPS position and
# camera serial, XMP, IPTC, comments, maker notes, thumbnails, appended images) is dropped.
_PNG_KEPT_ANCILLARY = frozenset(
    {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"cICP", b"mDCv", b"cLLi"}
    | {b"acTL", b"fcTL", b"fdAT"}  # APNG frames
)
_WEBP_KEPT = frozenset({b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"})
_WEBP_FLAG_EXIF, _WEBP_FLAG_XMP = 0x08, 0x04
_EXIF_HEADER = b"Exif\x00\x00"


class _MalformedError(Exception):
    """Internal: the container structure can't be walked; ``strip_metadata`` then re-encodes the pixels."""


def strip_metadata(data: bytes) -> bytes:
    """The same picture without metadata, for storing users' uploads.

    PNG, JPEG and WebP are rewritten losslessly at the container level (no pixel is re-encoded): only
    what the pixels and colours need is kept (an ICC profile stays), plus the EXIF orientation alone when it
    is not upright, so the stored file still shows the right way up. A file whose structure can't be walked
    is re-encoded as a PNG without metadata; anything Pillow can't read either comes back unchanged (it is
    not an image, and the job will refuse it).
    """
    fmt = sniff_format(data)
    strippers = {"png": _strip_png, "jpeg": _strip_jpeg, "webp": _strip_webp}
    if fmt not in strippers:
        return data
    try:
        orientation = _stored_orientation(data)
        return strippers[fmt](data, orientation)
    except (_MalformedError, IndexError, struct.error):
        return _reencoded_without_metadata(data)


def without_metadata(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """``strip_metadata`` of every file, by name (for a job's inputs before they are stored)."""
    return {name: strip_metadata(data) for name, data in files.items()}


def _stored_orientation(data: bytes) -> int:
    try:
        img, _ = _open_header(data, _TRUSTED_MAX_PIXELS)
    except _BadImageError:
        return 1
    return _orientation(img)


def _orientation_tiff(orientation: int) -> bytes:
    """A TIFF block (EXIF without the "Exif\\0\\0" header) holding nothing but the orientation."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()[len(_EXIF_HEADER) :]


def _reencoded_without_metadata(data: bytes) -> bytes:
    try:
        header, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        img = _normalise_mode(_decode(header, fmt)[0])  # turned upright: the orientation is applied, not kept
    except _BadImageError:
        return data
    return encode_png(img)


def _strip_png(data: bytes, orientation: int) -> bytes:
    out = [data[:8]]
    pos, end = 8, len(data)
    orientation_written = orientation == 1
    while pos < end:
        if pos + 12 > end:
            raise _MalformedError("PNG chunk header cut off")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk_end = pos + 12 + length
        if chunk_end > end:
            raise _MalformedError("PNG chunk cut off")
        if kind in (b"IDAT", b"IEND") and not orientation_written:
            out.append(_png_chunk(b"eXIf", _orientation_tiff(orientation)))
            orientation_written = True
        if kind[:1].isupper() or kind in _PNG_KEPT_ANCILLARY:  # critical chunks always: the image needs them
            out.append(data[pos:chunk_end])
        pos = chunk_end
        if kind == b"IEND":
            return b"".join(out)  # anything appended after the end goes too
    raise _MalformedError("PNG without IEND")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _strip_jpeg(data: bytes, orientation: int) -> bytes:
    out = [b"\xff\xd8"]
    pos, end = 2, len(data)
    orientation_written = orientation == 1
    while pos < end:
        if data[pos] != 0xFF:
            raise _MalformedError("JPEG marker expected")
        while pos < end and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: appended images (multi-picture thumbnails, depth maps) are dropped
            out.append(b"\xff\xd9")
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(bytes((0xFF, marker)))
            continue
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > end:
            raise _MalformedError("JPEG segment cut off")
        payload = data[pos + 2 : pos + length]
        pos += length
        if not orientation_written and marker != 0xE0:  # after JFIF's APP0, which should come first
            out.append(_jpeg_segment(0xE1, _EXIF_HEADER + _orientation_tiff(orientation)))
            orientation_written = True
        kept = _kept_jpeg_segment(marker, payload)
        if kept is not None:
            out.append(_jpeg_segment(marker, kept))
        if marker == 0xDA:  # start of scan: entropy-coded bytes up to the next real marker
            scan_end = _jpeg_scan_end(data, pos)
            out.append(data[pos:scan_end])
            pos = scan_end
    raise _MalformedError("JPEG without EOI")


def _kept_jpeg_segment(marker: int, payload: bytes) -> bytes | None:
    """The payload to keep for this segment, or None to drop it."""
    if marker == 0xE0:  # JFIF: keep version, units and density; drop its thumbnail
        return payload[:12] + b"\x00\x00" if payload.startswith(b"JFIF\x00") and len(payload) >= 12 else None
    if marker == 0xE2:
        return payload if payload.startswith(b"ICC_PROFILE\x00") else None  # not MPF or FlashPix
    if marker == 0xEE:
        return payload if payload.startswith(b"Adobe") else None  # its colour transform flag decides CMYK/YCCK
    if 0xE1 <= marker <= 0xEF or marker == 0xFE:  # EXIF, XMP, IPTC, maker notes, comments
        return None
    return payload


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise _MalformedError("JPEG segment too long")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    while True:
        found = data.find(b"\xff", pos)
        if found < 0 or found + 1 >= len(data):
            raise _MalformedError("JPEG scan without an end")
        following = data[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # a stuffed 0xFF byte, or a restart marker
            pos = found + 2
            continue
        return found


def _strip_webp(data: bytes, orientation: int) -> bytes:
    if len(data) < 12:
        raise _MalformedError("WebP header cut off")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = min(len(data), 8 + riff_size)
    chunks: list[bytearray] = []
    pos = 12
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        chunk_end = pos + 8 + length + (length & 1)
        if pos + 8 + length > end:
            raise _MalformedError("WebP chunk cut off")
        if kind in _WEBP_KEPT:
            chunks.append(bytearray(data[pos:chunk_end]))
        pos = chunk_end
    if not chunks:
        raise _MalformedError("WebP without image data")
    if chunks[0][:4] == b"VP8X":
        flags = chunks[0][8] & ~(_WEBP_FLAG_EXIF | _WEBP_FLAG_XMP)
        if orientation != 1:
            tiff = _orientation_tiff(orientation)
            chunks.append(bytearray(b"EXIF" + struct.pack("<I", len(tiff)) + tiff + b"\x00" * (len(tiff) & 1)))
            flags |= _WEBP_FLAG_EXIF
        chunks[0][8] = flags
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- preparing uploads ------------------------------------------------------------------------------------


def prepare_input(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_edge: int,
    square: Literal["pad", "crop"] | None = None,
    square_size: int | None = None,
    out_max_bytes: int | None = None,
    jpeg_ok: bool = False,
) -> PreparedImage:
    """Turn an upload into the bytes we send to the API.

    Decodes as ``open_image`` does, downscales so the longest edge is at most ``max_edge`` (never up; a
    JPEG may come out up to 15% smaller than that, because libjpeg's cheap 1/2, 1/4 and 1/8 scale decode
    is used when it lands that close), optionally makes it square (transparent padding or a centre crop)
    of ``square_size``, and encodes a fast PNG, or a JPEG (quality 95) when ``jpeg_ok`` and no pixel is
    transparent. With ``out_max_bytes``, steps the size down by 0.75 until the PNG fits (not below 256 px).
    """
    if max_edge < 1:
        raise ValueError("max_edge must be at least 1")
    if square_size is not None and (square is None or square_size < 1):
        raise ValueError("square_size needs square='pad' or 'crop' and must be at least 1")
    _check_upload_bytes(data, max_bytes)
    try:
        header, fmt = _open_header(data, max_pixels)
        # Every factor below depends only on the longest or shortest edge, so it holds whether or not
        # EXIF turns the picture by 90 degrees; the draft decode needs it before anything is loaded.
        longest, shortest = max(header.size), min(header.size)
        fit = min(1.0, max_edge / longest)
        if square == "pad":
            side = square_size or _scaled(longest, fit)
            scale = side / longest
        elif square == "crop":
            side = square_size or _scaled(shortest, fit)
            scale = side / shortest
        else:
            side = 0
            scale = fit
        stored_w, stored_h = header.size
        decoded, turned = _decode(header, fmt, scale=scale, slack=0.0 if square else _DRAFT_SLACK)
        img = _normalise_mode(decoded)
    except _BadImageError as exc:
        raise _upload_error(exc) from exc

    if square == "crop":
        img = _center_crop(img, side)
    elif square == "pad":
        img = _pad_square(img, side)
    else:
        width, height = (stored_h, stored_w) if turned else (stored_w, stored_h)
        target = (_scaled(width, fit), _scaled(height, fit))
        close_enough = (1 - _DRAFT_SLACK) * max(target) <= max(img.size) <= max_edge
        if not close_enough:
            # From the original size, not the draft-decoded one, so the result doesn't depend on libjpeg's rounding.
            img = _resize(img, target)

    has_transparency = _has_transparent_pixel(img)
    if img.mode == "RGBA" and not has_transparency:
        img = img.convert("RGB")  # an all-opaque alpha channel only makes the PNG bigger and slower
    if jpeg_ok and img.mode == "RGB" and out_max_bytes is None:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=95)  # ~10x faster to encode than PNG; no EXIF is written
        return PreparedImage(buffer.getvalue(), img.width, img.height, False, MIME["jpeg"], EXTENSIONS["jpeg"])
    png = encode_png(img)
    if out_max_bytes is not None and len(png) > out_max_bytes:
        img, png = _shrink_png(img, out_max_bytes)
    return PreparedImage(data=png, width=img.width, height=img.height, has_transparency=has_transparency)


def _scaled(length: int, factor: float) -> int:
    return max(1, round(length * factor))


def _resize(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
    if img.size == size and box is None:
        return img
    return img.resize(size, _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)


def _center_crop(img: Image.Image, side: int) -> Image.Image:
    edge = min(img.size)
    left, top = (img.width - edge) // 2, (img.height - edge) // 2
    box = (left, top, left + edge, top + edge)
    if img.size == (side, side):
        return img
    return _resize(img, (side, side), box=box)


def _pad_square(img: Image.Image, side: int) -> Image.Image:
    longest = max(img.size)
    content = _resize(img, (_scaled(img.width, side / longest), _scaled(img.height, side / longest)))
    if content.size == (side, side):
        return content
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(content.convert("RGBA"), ((side - content.width) // 2, (side - content.height) // 2))
    return canvas


def _has_transparent_pixel(img: Image.Image) -> bool:
    if img.mode != "RGBA":
        return False
    low = img.getchannel("A").getextrema()[0]
    return isinstance(low, int | float) and low < 255


def _shrink_png(img: Image.Image, limit: int) -> tuple[Image.Image, bytes]:
    longest = max(img.size)
    while longest > _MIN_UPLOAD_EDGE:
        longest = max(_MIN_UPLOAD_EDGE, int(longest * _SHRINK_STEP))
        factor = longest / max(img.size)
        smaller = _resize(img, (_scaled(img.width, factor), _scaled(img.height, factor)))
        png = encode_png(smaller)
        if len(png) <= limit:
            return smaller, png
    raise InvalidImageError(
        N_(
            "That image is too detailed to fit the image service's {limit} upload limit, even at {edge} px. "
            "Try a simpler {formats} image.",
            limit=_byte_size(limit),
            edge=_MIN_UPLOAD_EDGE,
            formats=_ACCEPTED,
        ),
        detail=f"PNG still > {limit} bytes at {img.width}x{img.height} scaled to {_MIN_UPLOAD_EDGE} px",
    )


def encode_png(img: Image.Image, *, fast: bool = True) -> bytes:
    """PNG bytes of ``img``. ``fast`` (for uploads) trades size for speed; otherwise optimise for size."""
    if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        img = img.convert("RGBA" if _has_transparency_info(img) else "RGB")
    buffer = io.BytesIO()
    # No pnginfo or exif argument: the upload's EXIF (GPS position, camera serial) is never written out.
    if fast:
        # Level 1 with zlib's RLE strategy (compress_type is passed through to zlib): on photos, where
        # encoding is slow, it is ~25% faster than plain level 1 and no bigger; flat graphics come out up
        # to twice as big, but those are small and quick to encode either way.
        img.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    else:
        img.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


# --- masks ------------------------------------------------------------------------------------------------


def mask_from_alpha(png: bytes) -> bytes | None:
    """A mask from an image's own transparency: editable (alpha 0) wherever alpha < 255; None if opaque."""
    try:
        header, fmt = _open_header(png, _TRUSTED_MAX_PIXELS)
        img = _normalise_mode(_decode(header, fmt)[0])
    except _BadImageError as exc:
        raise _upload_error(exc) from exc
    if not _has_transparent_pixel(img):
        return None
    return _mask_png(img.getchannel("A").point(_LUT_OPAQUE_ONLY))


def mask_from_upload(data: bytes, size: tuple[int, int], *, max_bytes: int, max_pixels: int) -> bytes:
    """A mask from a user's second image, as an RGBA PNG of exactly ``size`` (alpha 0 = editable).

    With any transparency its alpha decides (alpha < 128 = editable); otherwise it is read as grey,
    white (>= 128) = editable, black = keep. A mask of the same proportions (within 2%) is resized.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"mask size must be positive, got {width}x{height}")
    img = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if abs((img.width / img.height) / (width / height) - 1) > 0.02:
        raise InvalidImageError(
            N_(
                "The mask must have the same shape as the image ({expected}); this one is {actual}. "
                "Send a mask of the same size or proportions.",
                expected=f"{width}x{height}",
                actual=f"{img.width}x{img.height}",
            ),
            detail=f"mask {img.width}x{img.height} vs image {width}x{height}",
        )
    if _has_transparent_pixel(img):
        editable = img.getchannel("A").point(_LUT_BELOW_HALF)
    else:
        editable = img.convert("L").point(_LUT_AT_LEAST_HALF)
    if editable.size != size:
        editable = editable.resize(size, Image.Resampling.BILINEAR).point(_LUT_AT_LEAST_HALF)
    if editable.getextrema()[1] == 0:
        raise InvalidImageError(
            N_(
                "The mask doesn't mark any area to change. Make the part to edit transparent, "
                "or paint it white on a black image."
            ),
            detail=f"no editable pixel in a {img.width}x{img.height} mask",
        )
    return _mask_png(editable.point(_LUT_INVERT))


def parse_region(region: str) -> tuple[float, float, float, float]:
    """A named region or 4x4 grid cells as (left, top, right, bottom) fractions of the image.

    Names are ``REGION_NAMES`` ("border" gives the whole frame; ``region_mask`` keeps its inside). Grid
    columns A-D run left to right, rows 1-4 top to bottom: "B2" is one cell, "A1:C2" a rectangle.
    """
    name = _region_name(region)
    if name in _REGION_FRACTIONS:
        return _REGION_FRACTIONS[name]
    cells = _GRID.fullmatch(re.sub(r"\s+", "", region).upper())
    if cells is None:
        if not name:
            text = N_(
                "The region is empty. Use one of {names}, or cells of a 4x4 grid: columns A-D from left to right, "
                "rows 1-4 from top to bottom, like B2 or A1:B2.",
                names=", ".join(REGION_NAMES),
            )
        else:
            text = N_(
                "I don't know that region. Use one of {names}, or cells of a 4x4 grid: columns A-D from left to "
                "right, rows 1-4 from top to bottom, like B2 or A1:B2.",
                names=", ".join(REGION_NAMES),
            )
        raise InvalidImageError(
            text,
            detail=f"unknown region of {len(region)} characters",
        )
    col1, row1, col2, row2 = cells.groups()
    col2, row2 = col2 or col1, row2 or row1
    columns = sorted("ABCD".index(c) for c in (col1, col2))
    rows = sorted(int(r) - 1 for r in (row1, row2))
    return columns[0] / 4, rows[0] / 4, (columns[1] + 1) / 4, (rows[1] + 1) / 4


def region_mask(region: str, size: tuple[int, int]) -> bytes:
    """An RGBA PNG of ``size``: alpha 0 (editable) inside the region, opaque black elsewhere.

    For "border" the editable part is a ring 1/8 of the width and height thick on every side.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"mask size must be positive, got {width}x{height}")
    left, top, right, bottom = parse_region(region)
    if _region_name(region) == "border":
        mask = Image.new("RGBA", size, _MASK_EDIT)
        ring_x, ring_y = max(1, _round(width * _BORDER_FRACTION)), max(1, _round(height * _BORDER_FRACTION))
        mask.paste(_MASK_KEEP, (ring_x, ring_y, max(ring_x, width - ring_x), max(ring_y, height - ring_y)))
    else:
        mask = Image.new("RGBA", size, _MASK_KEEP)
        box = (_round(left * width), _round(top * height), _round(right * width), _round(bottom * height))
        mask.paste(_MASK_EDIT, box)
    return encode_png(mask)


def _region_name(region: str) -> str:
    """Names are forgiving: any case, surrounding spaces, and "_" or " " for "-"."""
    return re.sub(r"[\s_]+", "-", region.strip().lower())


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # round half up, so neighbouring grid cells tile without gaps


def _mask_png(alpha: Image.Image) -> bytes:
    """Black RGBA with the given alpha (0 = editable, 255 = keep)."""
    mask = Image.new("RGBA", alpha.size, _MASK_KEEP)
    mask.putalpha(alpha)
    return encode_png(mask)


# --- results ----------------------------------------------------------------------------------------------


def fit_under(data: bytes, limit: int) -> tuple[bytes, OutputInfo]:
    """Make a result at most ``limit`` bytes for a platform's upload cap.

    Returns the provider's bytes untouched when they fit (only the header is read: call
    ``inspect_output`` first to verify them). Otherwise tries an optimised PNG (PNG sources close to the
    limit only), WebP q90, JPEG q90 and q80 (opaque images only), then 0.75 downscale steps.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1 byte")
    if len(data) <= limit:
        try:
            header, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        except _BadImageError as exc:
            raise _output_error(exc) from exc
        return data, _output_info(fmt, header.size)

    try:
        header, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        img = _normalise_mode(_decode(header, fmt)[0])
    except _BadImageError as exc:
        raise _output_error(exc) from exc
    opaque = not _has_transparent_pixel(img)
    if opaque and img.mode != "RGB":
        img = img.convert("RGB")

    # A lossless re-encode rarely saves more than a fifth, and on big noisy PNGs it costs seconds.
    attempts: list[tuple[str, Callable[[Image.Image], bytes]]] = []
    if fmt == "png" and len(data) <= limit * 1.25:
        attempts.append(("png", partial(encode_png, fast=False)))
    attempts.append(("webp", partial(_encode, pil_format="WEBP", quality=90)))
    if opaque:
        attempts.append(("jpeg", partial(_encode, pil_format="JPEG", quality=90)))
        attempts.append(("jpeg", partial(_encode, pil_format="JPEG", quality=80)))
    for out_fmt, encode in attempts:
        encoded = _try(encode, img)
        if encoded is not None and len(encoded) <= limit:
            return encoded, _output_info(out_fmt, img.size)

    # Still too big: fewer pixels. JPEG where nothing is transparent (it plays everywhere), else WebP.
    out_fmt, pil_format = ("jpeg", "JPEG") if opaque else ("webp", "WEBP")
    longest = max(img.size)
    while longest > _MIN_OUTPUT_EDGE:
        longest = max(_MIN_OUTPUT_EDGE, int(longest * _SHRINK_STEP))
        factor = longest / max(img.size)
        smaller = _resize(img, (_scaled(img.width, factor), _scaled(img.height, factor)))
        encoded = _try(partial(_encode, pil_format=pil_format, quality=80), smaller)
        if encoded is not None and len(encoded) <= limit:
            return encoded, _output_info(out_fmt, smaller.size)
    raise InvalidImageError(
        N_("I couldn't make the picture small enough to upload here (the limit is {limit}).", limit=_byte_size(limit)),
        detail=f"{len(data)}-byte {fmt} {img.width}x{img.height} does not fit in {limit} bytes",
    )


def _encode(img: Image.Image, pil_format: str, *, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, pil_format, quality=quality)
    return buffer.getvalue()


def _try(encode: Callable[[Image.Image], bytes], img: Image.Image) -> bytes | None:
    try:
        return encode(img)
    except (OSError, ValueError):
        return None  # e.g. WebP refuses edges over 16383 px; the next attempt may work


def contact_sheet(images: Sequence[bytes], *, tile: int = 512, columns: int | None = None) -> bytes:
    """A PNG grid of ``images``, each fitted into a ``tile`` square on a dark background and numbered from 1.

    Columns default to 2 for 2-4 images, else ceil(sqrt(n)). The images are results, so unreadable ones
    raise ``ProviderResponseError``.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if tile < 16:
        raise ValueError("tile must be at least 16 px")
    count = len(images)
    if columns is None:
        columns = 2 if 2 <= count <= 4 else math.ceil(math.sqrt(count))
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), _SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, tile // 16))
    gap = max(2, tile // 64)
    inner = tile - 2 * gap
    for index, data in enumerate(images):
        try:
            header, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
            scale = min(1.0, inner / max(header.size))
            img = _normalise_mode(_decode(header, fmt, scale=scale)[0])
        except _BadImageError as exc:
            raise _output_error(exc) from exc
        factor = inner / max(img.size)
        fitted = _resize(img, (_scaled(img.width, factor), _scaled(img.height, factor)))
        cell_x, cell_y = (index % columns) * tile, (index // columns) * tile
        position = (cell_x + (tile - fitted.width) // 2, cell_y + (tile - fitted.height) // 2)
        sheet.paste(fitted, position, fitted if fitted.mode == "RGBA" else None)
        _label(draw, font, str(index + 1), (cell_x + gap, cell_y + gap))
    return encode_png(sheet)


def _label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    corner: tuple[int, int],
) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 3)
    x, y = corner
    box = (x, y, x + right - left + 2 * pad, y + bottom - top + 2 * pad)
    draw.rounded_rectangle(box, radius=pad, fill=_LABEL_BACKGROUND)
    draw.text((x + pad - left, y + pad - top), text, font=font, fill=_LABEL_TEXT)


# --- errors and small helpers -----------------------------------------------------------------------------


def _upload_error(exc: _BadImageError) -> InvalidImageError:
    if exc.reason == "format":
        message = N_("That file isn't an image I can read. Send a {formats}.", formats=_ACCEPTED)
    elif exc.reason == "pixels" and exc.size:
        message = N_(
            "That image is too large ({width}x{height}). Send one of at most {megapixels} megapixels as a {formats}.",
            width=exc.size[0],
            height=exc.size[1],
            megapixels=_megapixels(exc.limit or _TRUSTED_MAX_PIXELS),
            formats=_ACCEPTED,
        )
    elif exc.reason == "pixels":
        message = N_(
            "That image is too large. Send one of at most {megapixels} megapixels as a {formats}.",
            megapixels=_megapixels(exc.limit or _TRUSTED_MAX_PIXELS),
            formats=_ACCEPTED,
        )
    else:
        message = N_(
            "That image is damaged or incomplete, so I can't read it. Try sending it again as a {formats}.",
            formats=_ACCEPTED,
        )
    return InvalidImageError(message, detail=exc.detail)


def _output_error(exc: _BadImageError) -> ProviderResponseError:
    return ProviderResponseError(detail=f"unusable image from the provider ({exc.reason}): {exc.detail}")


def _output_info(fmt: str, size: tuple[int, int]) -> OutputInfo:
    return OutputInfo(format=fmt, mime_type=MIME[fmt], extension=EXTENSIONS[fmt], width=size[0], height=size[1])


def _byte_size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{round(count / (1024 * 1024), 1):g} MB"
    return f"{max(1, round(count / 1024))} KB"


def _megapixels(count: int) -> str:
    return f"{round(count / 1_000_000, 1):g}"


# --- outpainting canvases (Zoom out, Pan) -------------------------------------------------------------------

PAN_DIRECTIONS = ("left", "right", "up", "down")
ZOOM_FACTORS = (1.5, 2.0)
_PAN_EXTENSION = 0.5  # a pan extends the canvas by half the image on one side


@dataclass(frozen=True, slots=True)
class Extension:
    """Where a source image sits on a larger canvas, in the source's own pixels: the canvas is
    ``width`` x ``height`` and the image's top-left corner is at (``left``, ``top``)."""

    width: float
    height: float
    left: float
    top: float


def zoom_extension(width: int, height: int, factor: float) -> Extension:
    """The image centred on a canvas ``factor`` times as large (Zoom out)."""
    if factor <= 1:
        raise ValueError("a zoom out factor must be above 1")
    big_w, big_h = width * factor, height * factor
    return Extension(big_w, big_h, (big_w - width) / 2, (big_h - height) / 2)


def pan_extension(width: int, height: int, direction: str) -> Extension:
    """The canvas extended by half the image on one side (Pan); the image keeps to the other side."""
    grow_w, grow_h = width * _PAN_EXTENSION, height * _PAN_EXTENSION
    if direction == "left":
        return Extension(width + grow_w, height, grow_w, 0)
    if direction == "right":
        return Extension(width + grow_w, height, 0, 0)
    if direction == "up":
        return Extension(width, height + grow_h, 0, grow_h)
    if direction == "down":
        return Extension(width, height + grow_h, 0, 0)
    raise ValueError(f"unknown pan direction {direction!r}")


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of a trusted image (one of our results) without decoding its pixels."""
    try:
        header, _ = _open_header(data, _TRUSTED_MAX_PIXELS)
    except _BadImageError as exc:
        raise _output_error(exc) from exc
    return header.size


def _share(margin_before: float, margins: float, slack: float) -> float:
    """The part of ``slack`` (room left over along one axis) that goes before the image: in proportion to the
    extension's own margins there, half of it when the axis was not extended."""
    return slack * margin_before / margins if margins > 0 else slack / 2


def outpaint_canvas(data: bytes, extension: Extension, size: tuple[int, int]) -> bytes:
    """A ``size`` RGBA PNG: the image scaled into ``extension``'s place, everything else fully transparent.

    ``size`` may have another aspect than the extension (a model with fixed sizes, or rounding to a multiple of
    16): the extended area is then scaled to fit inside, and the room left over goes to the new side(s) (centred
    along an axis that was not extended), so the image keeps to its edge and the rest gets painted.
    """
    try:
        header, fmt = _open_header(data, _TRUSTED_MAX_PIXELS)
        img = _normalise_mode(_decode(header, fmt)[0]).convert("RGBA")
    except _BadImageError as exc:
        raise _output_error(exc) from exc
    canvas_w, canvas_h = size
    scale = min(canvas_w / extension.width, canvas_h / extension.height)
    shown = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    x = round(
        scale * extension.left + _share(extension.left, extension.width - img.width, canvas_w - extension.width * scale)
    )
    y = round(
        scale * extension.top
        + _share(extension.top, extension.height - img.height, canvas_h - extension.height * scale)
    )
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(_resize(img, shown), (x, y))  # alpha is copied too: the source's own transparency stays
    return encode_png(canvas)
