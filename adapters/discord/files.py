"""Users' attachments: only images, only from Discord's CDN (or the configured API's origin), at most the
configured size — checked against the declared size first and enforced again while the body streams in."""

from __future__ import annotations

import aiohttp
import discord

from adapters.common.download import CappedDownload, origins
from bot.errors import InvalidImageError
from bot.settings import Settings
from bot.text import N_

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net", "cdn.discord.com", "media.discord.net"})
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def is_image(attachment: discord.Attachment) -> bool:
    kind = attachment.content_type or ""
    return kind.startswith("image/") or attachment.filename.lower().endswith(_IMAGE_EXTENSIONS)


def first_image(message: discord.Message) -> discord.Attachment | None:
    return next((a for a in message.attachments if is_image(a)), None)


class Attachments:
    """Downloads attachments through the shared ``CappedDownload`` (https on port 443 to the CDN hosts)."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        allowed = origins(CDN_HOSTS, settings.discord_api_base_url)
        self._download = CappedDownload(
            session, allowed, max_bytes=settings.imaging.max_input_bytes, platform="Discord"
        )

    async def read(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes (raises a friendly ``ImageBotError``)."""
        if not is_image(attachment):
            raise InvalidImageError(N_("That file isn't an image. Send a PNG, JPEG, WebP or GIF."))
        return await self._download.fetch(attachment.url, declared_size=attachment.size)
