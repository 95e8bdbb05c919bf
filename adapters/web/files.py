"""Uploads of the playground: a multipart form read as it streams in, each part capped before anything decodes it."""

from __future__ import annotations

from typing import Literal

from aiohttp import BodyPartReader, web

from bot.errors import InvalidImageError, InvalidRequestError
from bot.text import N_

MAX_FIELDS = 8  # an image, a mask, a few text fields
CHUNK_BYTES = 256 * 1024
NOT_OUR_FORM = "That upload was not in the form the playground sends."


class UploadTooLargeError(InvalidImageError):
    """An upload over the size limit, refused while it streams in (before anything decodes it)."""


def too_large(max_upload_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(
        N_("That upload is too large; the limit is {limit} MB per image.", limit=f"{max_upload_bytes / 1e6:g}")
    )


async def read_form(request: web.Request, max_upload_bytes: int) -> dict[str, bytes]:
    """A multipart form's fields as bytes: each at most ``max_upload_bytes``, all together two images and a bit."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError(N_("Send the image as a file upload."), detail=f"content type {request.content_type}")
    max_form_bytes = 2 * max_upload_bytes + 1024 * 1024
    reader = await request.multipart()
    fields: dict[str, bytes] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name or part.name in fields or len(fields) >= MAX_FIELDS:
            raise InvalidRequestError(NOT_OUR_FORM)
        chunks: list[bytes] = []
        size = 0
        while chunk := await part.read_chunk(CHUNK_BYTES):
            size += len(chunk)
            total += len(chunk)
            if size > max_upload_bytes or total > max_form_bytes:
                raise too_large(max_upload_bytes)
            chunks.append(chunk)
        fields[part.name] = b"".join(chunks)
    return fields


def text_field(form: dict[str, bytes], key: str) -> str:
    try:
        return form.get(key, b"").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(N_("The {key} field must be text.", key=key)) from None


_MISSING = {
    "image": N_("Attach the image first (PNG, JPEG, WebP or GIF)."),
    "mask": N_("Attach the mask first (PNG, JPEG, WebP or GIF)."),
}
_EMPTY = {
    "image": N_("That image file is empty (0 bytes). Attach the image again, as a PNG, JPEG, WebP or GIF."),
    "mask": N_("That mask file is empty (0 bytes). Attach the mask again, as a PNG, JPEG, WebP or GIF."),
}


def upload(form: dict[str, bytes], key: str, what: Literal["image", "mask"] = "image") -> bytes:
    """The uploaded file ``key``: a missing one and an empty one get different messages."""
    data = form.get(key)
    if data is None:
        raise InvalidImageError(_MISSING[what])
    if not data:
        raise InvalidImageError(_EMPTY[what], detail=f"empty {key} upload")
    return data
