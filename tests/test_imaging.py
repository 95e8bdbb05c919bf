"""bot/imaging.py: reading hostile uploads, preparing them, masks, regions, and checking/shrinking results.

Every picture is drawn with Pillow here; the hostile samples (lying headers, truncations, flipped bytes)
are built by code below, never stored as binary fixtures.
"""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageChops, ImageFile, JpegImagePlugin, PngImagePlugin

from bot import imaging
from bot.errors import InvalidImageError, ProviderResponseError

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 50_000_000}
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Pillow's own wording, which must never reach a user.
PILLOW_TEXT = (
    "Traceback",
    "cannot identify image file",
    "image file is truncated",
    "broken PNG",
    "DecompressionBomb",
    "decompression bomb",
    "PIL",
    "OSError",
    "SyntaxError",
    "ValueError",
)


# --- helpers -------------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Incompressible pixels: the worst case for every encoder."""
    bands = [Image.effect_noise(size, 100) for _ in mode]
    return bands[0] if mode == "L" else Image.merge(mode, bands)


def gradient(size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L")
    return Image.merge("RGB", (ramp.resize(size), ramp.rotate(90).resize(size), ramp.resize(size).rotate(180)))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A 1-bit grey PNG whose IHDR says ``width`` x ``height``; the pixel data is whatever ``idat`` is."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def black_1bit_png(width: int, height: int) -> bytes:
    """A genuine, valid 1-bit PNG: zeros compress about 1000:1, so a huge one is a few tens of KB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_claiming(width, height, idat)


def alpha_of(png: bytes) -> Image.Image:
    mask = decode(png)
    assert mask.mode == "RGBA"
    return mask.getchannel("A")


def expected_alpha(size: tuple[int, int], editable: tuple[int, int, int, int], *, inverted: bool = False) -> bytes:
    """Alpha bytes with 0 inside ``editable`` and 255 elsewhere (swapped when ``inverted``)."""
    outside, inside = (0, 255) if inverted else (255, 0)
    alpha = Image.new("L", size, outside)
    alpha.paste(inside, editable)
    return alpha.tobytes()


def close(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 8) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def user_error(data: bytes, **limits: int) -> InvalidImageError:
    with pytest.raises(InvalidImageError) as caught:
        imaging.open_image(data, **{**LIMITS, **limits})
    return caught.value


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image decodes its pixels: a size guard must work from the header alone."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- sniffing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG_MAGIC + b"rest", "png"),
        (b"\xff\xd8\xff\xe0rest", "jpeg"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"GIF87a...", "gif"),
        (b"GIF89a...", "gif"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"BM6\x00\x00\x00", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_format_reads_magic_bytes_only(data: bytes, expected: str | None) -> None:
    assert imaging.sniff_format(data) == expected


# --- refusing bad uploads ------------------------------------------------------------------------------------


def test_zero_bytes_are_refused_as_empty() -> None:
    assert "empty" in str(user_error(b""))


def test_text_renamed_to_png_is_refused_with_the_accepted_formats() -> None:
    error = user_error(b"hello")
    assert "isn't an image" in str(error)
    assert "PNG, JPEG, WebP or GIF" in str(error)


def test_a_bmp_is_refused_even_though_pillow_could_read_it() -> None:
    assert "PNG, JPEG, WebP or GIF" in str(user_error(encode(gradient((8, 8)), "BMP")))


def test_too_many_bytes_are_refused_and_the_limit_is_stated_in_mb() -> None:
    data = encode(noise((1024, 512)), "PNG")
    assert len(data) > 1024 * 1024
    assert "the limit is 1 MB" in str(user_error(data, max_bytes=1024 * 1024))


def test_a_truncated_png_is_refused_as_damaged() -> None:
    data = encode(noise((64, 64)), "PNG")
    assert "damaged or incomplete" in str(user_error(data[: len(data) // 2]))


def test_a_truncated_jpeg_is_refused_as_damaged() -> None:
    data = encode(noise((64, 64)), "JPEG")
    assert "damaged or incomplete" in str(user_error(data[: len(data) // 2]))


def test_a_png_with_a_bad_header_checksum_is_refused_as_damaged() -> None:
    data = bytearray(encode(noise((32, 32)), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC (8 magic + 4 length + 4 type + 13 data)
    assert "damaged or incomplete" in str(user_error(bytes(data)))


@pytest.mark.usefixtures("no_pixel_decoding")
def test_a_header_claiming_100000_by_100000_is_refused_fast_without_decoding() -> None:
    started = time.perf_counter()
    error = user_error(png_claiming(100_000, 100_000))
    assert time.perf_counter() - started < 1.0
    assert "at most 50 megapixels" in str(error)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_a_valid_20000_by_20000_image_is_refused_by_max_pixels() -> None:
    data = black_1bit_png(20_000, 20_000)
    assert len(data) < 100_000  # a real bomb: tiny file, 400 megapixels
    assert "at most 50 megapixels" in str(user_error(data, max_pixels=50_000_000))


@pytest.mark.usefixtures("no_pixel_decoding")
def test_max_pixels_refuses_what_pillow_itself_would_still_allow() -> None:
    # 56 MP is under Pillow's own warning threshold (~89 MP): only our check can stop it.
    error = user_error(png_claiming(8_000, 7_000), max_pixels=50_000_000)
    assert "8000x7000" in str(error)
    assert "at most 50 megapixels" in str(error)


def test_pillows_bomb_warning_becomes_a_refusal_without_changing_global_warning_filters() -> None:
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        error = user_error(png_claiming(10_000, 10_000), max_pixels=200_000_000)
    assert "megapixels" in str(error)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before


def test_hostile_variants_of_valid_files_raise_only_invalid_image_error() -> None:
    rng = random.Random(1234)
    originals = [
        encode(noise((24, 16)), "PNG"),
        encode(noise((24, 16)), "JPEG"),
        encode(noise((24, 16)).convert("P"), "GIF"),
        encode(noise((24, 16)), "WEBP"),
    ]
    refused = 0
    for original in originals:
        for _ in range(60):
            data = bytearray(original)
            if rng.random() < 0.5:
                del data[rng.randrange(8, len(data)) :]
            else:
                for _flip in range(rng.randint(1, 4)):
                    data[rng.randrange(8, len(data))] = rng.randrange(256)
            try:
                imaging.open_image(bytes(data), max_bytes=1_000_000, max_pixels=1_000_000)
            except InvalidImageError:
                refused += 1  # any other exception type fails the test
    assert refused > 100


def test_refusal_messages_are_friendly_and_hold_no_pillow_text() -> None:
    png = encode(noise((64, 64)), "PNG")
    samples = {
        "empty": (b"", {}),
        "text": (b"hello", {}),
        "truncated": (png[: len(png) // 2], {}),
        "bomb": (png_claiming(100_000, 100_000), {}),
        "max_pixels": (png_claiming(8_000, 7_000), {}),
        "too_big": (png, {"max_bytes": 100}),
    }
    for name, (data, limits) in samples.items():
        error = user_error(data, **limits)
        message = str(error)
        assert message.strip(), name
        assert not [text for text in PILLOW_TEXT if text.lower() in message.lower()], (name, message)
        assert error.detail, name  # what really happened goes to the log instead


# --- decoding into RGB / RGBA --------------------------------------------------------------------------------


def test_animated_gif_yields_its_first_frame_only() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = imaging.open_image(data, **LIMITS)
    assert img.getpixel((8, 8)) == RED
    assert getattr(img, "n_frames", 1) == 1


def test_animated_webp_yields_its_first_frame_only() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    img = imaging.open_image(data, **LIMITS)
    assert img.getpixel((8, 8)) == RED
    assert getattr(img, "n_frames", 1) == 1


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours() -> None:
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 0, 0), (16, 0, 32, 16))  # cyan
    img = imaging.open_image(encode(cmyk, "JPEG", quality=95), **LIMITS)
    assert img.mode == "RGB"
    assert close(img.getpixel((4, 8)), RED)
    assert close(img.getpixel((28, 8)), (0, 255, 255))


def test_16_bit_png_is_scaled_to_8_bits_not_clipped() -> None:
    sixteen = Image.new("I;16", (8, 8), 32896)  # 50% grey (128 * 257)
    sixteen.paste(65535, (4, 0, 8, 8))
    data = encode(sixteen, "PNG")
    assert decode(data).mode == "I;16"
    img = imaging.open_image(data, **LIMITS)
    assert img.mode == "RGB"
    assert close(img.getpixel((1, 1)), (128, 128, 128), 1)
    assert img.getpixel((6, 1)) == (255, 255, 255)


def test_exif_orientation_6_turns_the_jpeg_upright() -> None:
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    img = imaging.open_image(encode(stored, "JPEG", quality=95, exif=exif), **LIMITS)
    assert img.size == (20, 40)
    assert close(img.getpixel((10, 5)), RED)  # the stored left half is now on top
    assert close(img.getpixel((10, 35)), BLUE)


def test_webp_with_alpha_opens_as_rgba() -> None:
    source = Image.new("RGBA", (16, 16), (*GREEN, 255))
    source.paste((0, 0, 0, 0), (0, 0, 8, 16))
    img = imaging.open_image(encode(source, "WEBP", lossless=True), **LIMITS)
    assert img.mode == "RGBA"
    assert img.getpixel((2, 2))[3] == 0
    assert img.getpixel((12, 2)) == (*GREEN, 255)


def test_palette_png_with_transparency_opens_as_rgba() -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([*RED, *GREEN])
    palette.putpixel((0, 0), 1)
    img = imaging.open_image(encode(palette, "PNG", transparency=1), **LIMITS)
    assert img.mode == "RGBA"
    assert img.getpixel((0, 0))[3] == 0
    assert img.getpixel((4, 4)) == (*RED, 255)


def test_grey_and_1_bit_images_open_as_rgb() -> None:
    for mode, value, expected in (("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))):
        img = imaging.open_image(encode(Image.new(mode, (4, 4), value), "PNG"), **LIMITS)
        assert (img.mode, img.getpixel((1, 1))) == ("RGB", expected), mode


# --- prepare_input --------------------------------------------------------------------------------------------


def test_prepare_downscales_a_4000x3000_png_to_exactly_max_edge_keeping_aspect() -> None:
    data = encode(gradient((4000, 3000)), "PNG")
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=2048)
    assert (prepared.width, prepared.height) == (2048, 1536)
    assert decode(prepared.data).size == (2048, 1536)
    assert decode(prepared.data).format == "PNG"
    assert prepared.has_transparency is False


def test_prepare_takes_libjpegs_half_scale_when_it_is_within_15_percent_of_max_edge() -> None:
    data = encode(gradient((4000, 3000)), "JPEG", quality=90)
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=2048)
    assert (prepared.width, prepared.height) == (2000, 1500)  # 1/2 scale decode, no resampling pass
    assert decode(prepared.data).size == (2000, 1500)


def test_prepare_sends_jpeg_when_allowed_and_nothing_is_transparent() -> None:
    data = encode(gradient((800, 600)), "JPEG", quality=90)
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=2048, jpeg_ok=True)
    assert (prepared.mime_type, prepared.extension) == ("image/jpeg", "jpg")
    assert decode(prepared.data).format == "JPEG"
    assert close(decode(prepared.data).getpixel((400, 300)), gradient((800, 600)).getpixel((400, 300)), 12)


def test_prepare_keeps_png_when_jpeg_is_allowed_but_pixels_are_transparent() -> None:
    image = Image.new("RGBA", (64, 64), (10, 200, 10, 255))
    image.paste((0, 0, 0, 0), (0, 0, 32, 32))
    prepared = imaging.prepare_input(encode(image, "PNG"), **LIMITS, max_edge=2048, jpeg_ok=True)
    assert prepared.mime_type == "image/png"
    assert decode(prepared.data).mode == "RGBA"


def test_prepare_lets_libjpeg_decode_at_reduced_scale_and_still_hits_the_exact_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = real_draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(gradient((4000, 3000)), "JPEG", quality=90)
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=500)
    assert drafts == [(500, 375)]  # 4000 -> 500 is exactly libjpeg's 1/8 scale
    assert (prepared.width, prepared.height) == (500, 375)
    assert close(decode(prepared.data).getpixel((250, 187)), gradient((500, 375)).getpixel((250, 187)), 12)


def test_prepare_never_upscales() -> None:
    prepared = imaging.prepare_input(encode(gradient((300, 200)), "PNG"), **LIMITS, max_edge=2048)
    assert (prepared.width, prepared.height) == (300, 200)


def test_prepare_applies_exif_rotation_before_sizing() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(gradient((400, 200)), "JPEG", exif=exif)
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=100)
    assert (prepared.width, prepared.height) == (50, 100)
    assert decode(prepared.data).size == (50, 100)


def test_prepare_pads_to_a_square_with_transparency() -> None:
    data = encode(Image.new("RGB", (200, 100), RED), "PNG")
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=2048, square="pad", square_size=64)
    img = decode(prepared.data)
    assert (prepared.width, prepared.height, img.size) == (64, 64, (64, 64))
    assert prepared.has_transparency is True
    assert img.getpixel((32, 2))[3] == 0  # padding above
    assert img.getpixel((32, 61))[3] == 0  # padding below
    assert img.getpixel((32, 32)) == (*RED, 255)


def test_prepare_crops_the_centre_to_a_square() -> None:
    stripes = Image.new("RGB", (300, 100), RED)
    stripes.paste(GREEN, (100, 0, 200, 100))
    stripes.paste(BLUE, (200, 0, 300, 100))
    prepared = imaging.prepare_input(encode(stripes, "PNG"), **LIMITS, max_edge=2048, square="crop", square_size=64)
    img = decode(prepared.data)
    assert img.size == (64, 64)
    assert prepared.has_transparency is False
    for x in (4, 32, 59):
        assert close(img.getpixel((x, 32)), GREEN, 16), x


def test_prepare_keeps_real_transparency_and_drops_an_all_opaque_alpha_channel() -> None:
    cut_out = Image.new("RGBA", (32, 32), (*RED, 255))
    cut_out.paste((0, 0, 0, 0), (0, 0, 16, 32))
    transparent = imaging.prepare_input(encode(cut_out, "PNG"), **LIMITS, max_edge=64)
    opaque = imaging.prepare_input(encode(Image.new("RGBA", (32, 32), (*RED, 255)), "PNG"), **LIMITS, max_edge=64)
    assert (transparent.has_transparency, decode(transparent.data).mode) == (True, "RGBA")
    assert (opaque.has_transparency, decode(opaque.data).mode) == (False, "RGB")


def test_prepare_shrinks_until_the_png_fits_out_max_bytes() -> None:
    data = encode(noise((1024, 1024)), "PNG", compress_level=1)
    prepared = imaging.prepare_input(data, **LIMITS, max_edge=1024, out_max_bytes=1_000_000)
    assert len(prepared.data) <= 1_000_000
    assert prepared.width == prepared.height < 1024
    assert decode(prepared.data).size == (prepared.width, prepared.height)


def test_prepare_refuses_when_even_256_px_does_not_fit() -> None:
    data = encode(noise((512, 512)), "PNG", compress_level=1)
    with pytest.raises(InvalidImageError, match="256 px"):
        imaging.prepare_input(data, **LIMITS, max_edge=1024, out_max_bytes=10_000)


def test_prepare_refuses_bad_input_like_open_image() -> None:
    with pytest.raises(InvalidImageError, match="isn't an image"):
        imaging.prepare_input(b"hello", **LIMITS, max_edge=1024)


# --- masks ----------------------------------------------------------------------------------------------------


def test_mask_from_alpha_marks_every_not_fully_opaque_pixel_editable() -> None:
    img = Image.new("RGBA", (8, 4), (*RED, 255))
    img.paste((0, 0, 0, 0), (0, 0, 2, 4))
    img.paste((*RED, 128), (2, 0, 4, 4))
    mask = imaging.mask_from_alpha(encode(img, "PNG"))
    assert mask is not None
    assert alpha_of(mask).tobytes() == expected_alpha((8, 4), (0, 0, 4, 4))
    assert decode(mask).getpixel((6, 1)) == (0, 0, 0, 255)


def test_mask_from_alpha_is_none_for_an_opaque_image() -> None:
    assert imaging.mask_from_alpha(encode(Image.new("RGBA", (8, 8), (*RED, 255)), "PNG")) is None
    assert imaging.mask_from_alpha(encode(Image.new("RGB", (8, 8), RED), "PNG")) is None


def test_uploaded_black_and_white_mask_white_is_editable() -> None:
    upload = Image.new("L", (40, 20), 0)
    upload.paste(255, (10, 5, 30, 15))
    mask = imaging.mask_from_upload(encode(upload, "PNG"), (40, 20), **LIMITS)
    assert alpha_of(mask).tobytes() == expected_alpha((40, 20), (10, 5, 30, 15))
    assert decode(mask).getpixel((0, 0)) == (0, 0, 0, 255)


def test_uploaded_mask_with_transparency_uses_its_alpha_not_its_colours() -> None:
    upload = Image.new("RGBA", (40, 20), (255, 255, 255, 255))  # white, but opaque: keep
    upload.paste((0, 0, 0, 0), (0, 0, 20, 20))  # transparent: editable
    mask = imaging.mask_from_upload(encode(upload, "PNG"), (40, 20), **LIMITS)
    assert alpha_of(mask).tobytes() == expected_alpha((40, 20), (0, 0, 20, 20))


def test_uploaded_mask_of_the_same_shape_but_another_size_is_resized() -> None:
    upload = Image.new("RGB", (50, 25), (0, 0, 0))
    upload.paste((255, 255, 255), (0, 0, 25, 25))
    mask = imaging.mask_from_upload(encode(upload, "JPEG", quality=95), (200, 100), **LIMITS)
    assert decode(mask).size == (200, 100)
    alpha = alpha_of(mask)
    assert alpha.getpixel((20, 50)) == 0
    assert alpha.getpixel((180, 50)) == 255


def test_uploaded_mask_of_another_shape_is_refused() -> None:
    upload = encode(Image.new("L", (200, 100), 255), "PNG")
    with pytest.raises(InvalidImageError, match=r"same shape as the image \(100x100\)"):
        imaging.mask_from_upload(upload, (100, 100), **LIMITS)


def test_uploaded_mask_marking_nothing_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="doesn't mark any area"):
        imaging.mask_from_upload(encode(Image.new("L", (16, 16), 0), "PNG"), (16, 16), **LIMITS)


def test_uploaded_mask_that_is_not_an_image_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="isn't an image"):
        imaging.mask_from_upload(b"not an image", (16, 16), **LIMITS)


# --- regions --------------------------------------------------------------------------------------------------

SIZE = (80, 48)  # cells of 20x12, border ring 10 px wide and 6 px high


@pytest.mark.parametrize(
    ("region", "editable"),
    [
        ("top-half", (0, 0, 80, 24)),
        ("bottom-half", (0, 24, 80, 48)),
        ("left-half", (0, 0, 40, 48)),
        ("right-half", (40, 0, 80, 48)),
        ("center", (20, 12, 60, 36)),
        ("A1", (0, 0, 20, 12)),
        ("c2", (40, 12, 60, 24)),
        ("A1:B2", (0, 0, 40, 24)),
        ("d4:c3", (40, 24, 80, 48)),
        ("B4:C1", (20, 0, 60, 48)),
        ("  Top_Half ", (0, 0, 80, 24)),
        ("bottom half", (0, 24, 80, 48)),
        (" a1 : b2 ", (0, 0, 40, 24)),
    ],
)
def test_region_mask_is_editable_exactly_inside_the_region(region: str, editable: tuple[int, int, int, int]) -> None:
    mask = imaging.region_mask(region, SIZE)
    assert alpha_of(mask).tobytes() == expected_alpha(SIZE, editable)
    assert decode(mask).convert("RGB").getbbox() is None  # black everywhere


def test_border_region_is_editable_on_an_eighth_ring_and_keeps_the_inside() -> None:
    mask = imaging.region_mask("border", SIZE)
    assert alpha_of(mask).tobytes() == expected_alpha(SIZE, (10, 6, 70, 42), inverted=True)


def test_every_region_name_is_accepted() -> None:
    for name in imaging.REGION_NAMES:
        assert ImageChops.invert(alpha_of(imaging.region_mask(name, SIZE))).getbbox() is not None, name


def test_parse_region_returns_fractions() -> None:
    assert imaging.parse_region("B2") == (0.25, 0.25, 0.5, 0.5)
    assert imaging.parse_region("center") == (0.25, 0.25, 0.75, 0.75)


@pytest.mark.parametrize("region", ["middle", "E1", "A5", "A0", "A1:B", "A1-B2", "", "A1:B2:C3"])
def test_unknown_region_is_refused_with_the_names_and_grid_syntax(region: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        imaging.parse_region(region)
    message = str(caught.value)
    assert all(name in message for name in imaging.REGION_NAMES)
    assert "A1:B2" in message
    assert "A-D" in message


# --- results: inspect_output, fit_under, contact_sheet ----------------------------------------------------------


def test_inspect_output_describes_a_valid_result() -> None:
    assert imaging.inspect_output(encode(gradient((48, 32)), "JPEG")) == imaging.OutputInfo(
        format="jpeg", mime_type="image/jpeg", extension="jpg", width=48, height=32
    )


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "html"])
def test_inspect_output_blames_the_provider_for_unreadable_bytes(kind: str) -> None:
    png = encode(noise((64, 64)), "PNG")
    data = {
        "garbage": b"\x00\x01garbage" * 10,
        "truncated": png[: len(png) // 2],
        "empty": b"",
        "html": b"<html><body>Sign in</body></html>",
    }[kind]
    with pytest.raises(ProviderResponseError) as caught:
        imaging.inspect_output(data)
    assert "cannot identify" not in str(caught.value)


def test_fit_under_returns_the_providers_bytes_untouched_when_they_fit() -> None:
    data = encode(gradient((64, 48)), "PNG")
    fitted, info = imaging.fit_under(data, len(data))
    assert fitted is data
    assert (info.format, info.width, info.height) == ("png", 64, 48)


def test_fit_under_shrinks_a_noisy_2048_png_under_1_mb_into_a_valid_image() -> None:
    data = encode(noise((2048, 2048)), "PNG", compress_level=1)
    assert len(data) > 10_000_000
    fitted, info = imaging.fit_under(data, 1_000_000)
    assert len(fitted) <= 1_000_000
    img = decode(fitted)
    assert (img.format.lower(), img.size) == (info.format, (info.width, info.height))
    assert info.width == info.height
    assert info.mime_type == imaging.MIME[info.format]


def test_fit_under_keeps_transparency_by_choosing_webp() -> None:
    source = noise((512, 512), "RGBA")
    source.putalpha(255)
    source.paste((0, 0, 0, 0), (0, 0, 256, 512))
    fitted, info = imaging.fit_under(encode(source, "PNG"), 400_000)
    img = decode(fitted)
    assert info.format == "webp"
    assert len(fitted) <= 400_000
    assert img.getpixel((10, 10))[3] == 0


def test_fit_under_refuses_a_limit_nothing_fits_in() -> None:
    with pytest.raises(InvalidImageError):
        imaging.fit_under(encode(noise((256, 256)), "PNG"), 50)


def test_fit_under_blames_the_provider_for_garbage() -> None:
    with pytest.raises(ProviderResponseError):
        imaging.fit_under(b"not an image at all", 5)


@pytest.mark.parametrize(
    ("count", "columns", "size"),
    [(1, None, (64, 64)), (2, None, (128, 64)), (3, None, (128, 128)), (4, None, (128, 128)), (5, None, (192, 128)),
     (9, None, (192, 192)), (10, None, (256, 192)), (3, 3, (192, 64))],
)  # fmt: skip
def test_contact_sheet_dimensions(count: int, columns: int | None, size: tuple[int, int]) -> None:
    images = [encode(Image.new("RGB", (32, 32), RED), "PNG")] * count
    assert decode(imaging.contact_sheet(images, tile=64, columns=columns)).size == size


def test_contact_sheet_fits_each_image_in_its_cell_with_a_number_on_dark() -> None:
    images = [encode(Image.new("RGB", (200, 100), colour), "PNG") for colour in (RED, GREEN, BLUE)]
    sheet = decode(imaging.contact_sheet(images, tile=128)).convert("RGB")
    assert sheet.size == (256, 256)
    assert sheet.getpixel((64, 64)) == RED  # wide image centred in cell 1
    assert sheet.getpixel((64, 10)) == sheet.getpixel((200, 200))  # letterbox = empty cell 4 = background
    assert max(sheet.getpixel((64, 10))) < 64  # dark
    assert sheet.getpixel((128 + 64, 64)) == GREEN
    corner = sheet.crop((0, 0, 32, 32)).convert("L")
    assert corner.getextrema()[1] > 200  # a white number label in the corner


def test_contact_sheet_blames_the_provider_for_an_unreadable_image() -> None:
    with pytest.raises(ProviderResponseError):
        imaging.contact_sheet([encode(Image.new("RGB", (8, 8)), "PNG"), b"junk"])


def test_encode_png_fast_and_small_are_both_lossless() -> None:
    img = noise((64, 64))
    for fast in (True, False):
        assert decode(imaging.encode_png(img, fast=fast)).tobytes() == img.tobytes()


# --- metadata of stored uploads -------------------------------------------------------------------------------

PRIVATE = (b"PhoneMaker", b"SN-0042-SECRET", b"51deg-N-secret", b"xmp-secret", b"comment-secret")


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.BodySerialNumber] = "SN-0042-SECRET"
    exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSAreaInformation] = "51deg-N-secret"
    return exif


def _photo_with_metadata(fmt: str, orientation: int, size: tuple[int, int] = (40, 24)) -> bytes:
    """A small busy picture carrying EXIF (GPS, serial), XMP and a comment the way each format stores them."""
    img = Image.effect_mandelbrot(size, (-2.0, -1.5, 1.0, 1.5), 60).convert("RGB")
    buffer = io.BytesIO()
    xmp = b"<x:xmpmeta>xmp-secret</x:xmpmeta>"
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "comment-secret")
        info.add_itxt("XML:com.adobe.xmp", xmp.decode())
        img.save(buffer, "PNG", exif=_exif(orientation), pnginfo=info)
    elif fmt == "jpeg":
        img.save(buffer, "JPEG", exif=_exif(orientation).tobytes(), xmp=xmp, comment=b"comment-secret")
    else:
        img.save(buffer, "WEBP", exif=_exif(orientation).tobytes(), xmp=xmp, lossless=True)
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(["png", "jpeg", "webp"]), orientation=st.integers(1, 8), progressive=st.booleans())
def test_strip_metadata_removes_everything_private_and_keeps_pixels_and_orientation(
    fmt: str, orientation: int, progressive: bool
) -> None:
    sent = _photo_with_metadata(fmt, orientation)
    if fmt == "jpeg" and progressive:
        img = Image.open(io.BytesIO(sent))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", exif=_exif(orientation).tobytes(), progressive=True, comment=b"comment-secret")
        sent = buffer.getvalue()
    stored = imaging.strip_metadata(sent)
    for private in PRIVATE:
        assert private not in stored
    assert imaging.sniff_format(stored) == fmt  # the same container, not a re-encode
    before, after = Image.open(io.BytesIO(sent)), Image.open(io.BytesIO(stored))
    assert ImageChops.difference(before.convert("RGB"), after.convert("RGB")).getbbox() is None
    expected = {} if orientation == 1 else {ExifTags.Base.Orientation: orientation}
    assert dict(after.getexif()) == expected


def test_strip_metadata_drops_images_appended_after_the_end() -> None:
    sent = _photo_with_metadata("jpeg", 1) + _photo_with_metadata("jpeg", 3)  # like a multi-picture thumbnail
    stored = imaging.strip_metadata(sent)
    assert stored.count(b"\xff\xd8") == 1
    assert b"PhoneMaker" not in stored


def test_strip_metadata_keeps_a_cmyk_jpeg_readable() -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 200, 30, 5)).save(buffer, "JPEG", exif=_exif(1).tobytes())
    stored = imaging.strip_metadata(buffer.getvalue())
    assert Image.open(io.BytesIO(stored)).convert("RGB").getpixel((8, 8)) == Image.open(buffer).convert("RGB").getpixel(
        (8, 8)
    )
    assert b"PhoneMaker" not in stored


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(["png", "jpeg", "webp"]),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
)
def test_strip_metadata_never_raises_on_damaged_files(fmt: str, cut: int, flips: list[tuple[int, int]]) -> None:
    damaged = bytearray(_photo_with_metadata(fmt, 6))
    for offset, value in flips:
        if offset < len(damaged):
            damaged[offset] = value
    data = bytes(damaged[: max(cut, 12)])
    stored = imaging.strip_metadata(data)
    assert isinstance(stored, bytes) and stored


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_strip_metadata_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert imaging.strip_metadata(data) is not None


# --- results checked by their chunk frames (no decode) ---------------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, end of data) of every chunk of a PNG."""
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        found.append((pos, data[pos + 4 : pos + 8], pos + 8 + length))
        pos += 12 + length
    return found


def _many_idats(size: tuple[int, int] = (96, 96)) -> bytes:
    """A PNG whose image data is split into several IDAT chunks (as encoders do for big images)."""
    data = encode(noise(size), "PNG", compress_level=0)
    ihdr, idat, iend = data[8:33], data[33:-12], data[-12:]
    assert idat[4:8] == b"IDAT"
    payload = idat[8:-4]
    pieces = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
    return data[:8] + ihdr + b"".join(png_chunk(b"IDAT", piece) for piece in pieces) + iend


def test_a_result_png_is_checked_by_its_chunks_and_described() -> None:
    data = _many_idats()
    assert sum(kind == b"IDAT" for _, kind, _ in _chunks(data)) > 3
    info = imaging.quick_output_info(data)
    assert info == imaging.inspect_output(data)
    assert info is not None and (info.format, info.width, info.height) == ("png", 96, 96)


@pytest.mark.parametrize(
    "damage",
    ["cut in the last IDAT", "bad CRC of the last IDAT", "bad CRC of IHDR", "bytes after IEND", "no IEND", "no IHDR"],
)
def test_a_damaged_result_png_is_blamed_on_the_provider(damage: str) -> None:
    data = bytearray(_many_idats())
    chunks = _chunks(bytes(data))
    last_idat = [c for c in chunks if c[1] == b"IDAT"][-1]
    if damage == "cut in the last IDAT":
        data = data[: last_idat[2] - 10] + data[-12:]  # IEND still at the end: only the frames can tell
    elif damage == "bad CRC of the last IDAT":
        data[last_idat[2] + 1] ^= 0x55
    elif damage == "bad CRC of IHDR":
        data[29] ^= 0xFF
    elif damage == "bytes after IEND":
        data += b"\x00" * 16
    elif damage == "no IEND":
        data = data[:-12]
    else:
        data = data[:8] + data[33:]
    with pytest.raises(ProviderResponseError) as caught:
        imaging.quick_output_info(bytes(data))
    assert "unusable image" in str(caught.value.detail)


def test_the_crc_of_an_idat_before_the_last_is_left_unchecked() -> None:
    """What the walk knowingly skips (zlib's CRC of megabytes of image data): a flipped byte inside an earlier
    IDAT goes through; the image decodes (differently). TLS and the base64 check guard the transfer."""
    data = bytearray(_many_idats())
    first_idat = next(c for c in _chunks(bytes(data)) if c[1] == b"IDAT")
    data[first_idat[2] + 2] ^= 0x01  # its CRC, not its data
    assert imaging.quick_output_info(bytes(data)) is not None


def test_the_quick_check_hands_jpegs_and_pngs_of_many_chunks_to_the_full_one() -> None:
    assert imaging.quick_output_info(encode(gradient((32, 32)), "JPEG")) is None
    data = _many_idats()
    assert imaging.quick_output_info(data, max_chunks=3) is None
    assert imaging.inspect_output(data).width == 96  # the worker thread's check walks it all


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_hostile_result_bytes_raise_only_the_providers_error(data: st.DataObject) -> None:
    original = bytearray(_many_idats((24, 16)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        if data.draw(st.booleans()):
            original[position] = data.draw(st.integers(0, 255))
        else:
            del original[position:]
            if not original:
                break
    try:
        imaging.quick_output_info(bytes(original))
        imaging.inspect_output(bytes(original))
    except ProviderResponseError:
        pass  # anything else fails the test
