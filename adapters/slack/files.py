"""Users' images from Slack: ``url_private`` with the bot token, through the shared capped download."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from adapters.common.download import CappedDownload, LoginPageError, origins
from bot.errors import ConfigurationError, InvalidImageError
from bot.text import N_

SLACK_FILE_HOST = "files.slack.com"


class MissingFilesScopeError(ConfigurationError):
    """Slack answered a file download with its sign-in page: the app lacks the ``files:read`` scope."""

    default_message = N_(
        "I can't read files shared in Slack: the Slack app is missing the files:read scope. "
        "Ask a workspace admin to add it and reinstall the app."
    )


class SlackFiles:
    """Fetches ``url_private`` files with the bot token, from Slack's file host (or the configured API host)."""

    def __init__(self, session: aiohttp.ClientSession, token: str, *, api_url: str | None, max_bytes: int):
        self._download = CappedDownload(
            session,
            origins({SLACK_FILE_HOST}, api_url),
            max_bytes=max_bytes,
            headers={"Authorization": f"Bearer {token}"},
            platform="Slack",
        )
        self._max_bytes = max_bytes

    def allowed(self, url: str) -> bool:
        return self._download.allowed(url)

    async def image(self, file: Mapping[str, Any]) -> bytes:
        """The bytes of a Slack file object that must be an image (raises a friendly ``ImageBotError``)."""
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        if not url:
            raise InvalidImageError(
                N_("I can't download that file from Slack."), detail=f"file {file.get('id')} no url"
            )
        size = file.get("size")
        return await self.download(url, declared_size=size if isinstance(size, int) else None)

    async def download(self, url: str, *, declared_size: int | None = None) -> bytes:
        try:
            return await self._download.fetch(url, declared_size=declared_size)
        except LoginPageError:
            raise MissingFilesScopeError(
                detail="url_private answered an HTML page (files:read scope missing?)"
            ) from None


def image_files(files: object) -> list[dict[str, Any]]:
    """The image files among a message's ``files`` (by mimetype, or type for file_input objects)."""
    if not isinstance(files, list):
        return []
    found = []
    for file in files:
        if not isinstance(file, dict):
            continue
        mimetype = str(file.get("mimetype") or "")
        filetype = str(file.get("filetype") or "").lower()
        if mimetype.startswith("image/") or filetype in ("png", "jpg", "jpeg", "webp", "gif"):
            found.append(file)
    return found
