"""Downloading users' images from Slack: only from Slack's file host, with the bot token, checked and capped."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot import imaging
from bot.errors import ConfigurationError, InvalidImageError, ProviderOutageError

log = logging.getLogger(__name__)

SLACK_FILE_HOST = "files.slack.com"
_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)


class MissingFilesScopeError(ConfigurationError):
    """Slack answered a file download with its sign-in page: the app lacks the ``files:read`` scope."""

    default_message = (
        "I can't read files shared in Slack: the Slack app is missing the files:read scope. "
        "Ask a workspace admin to add it and reinstall the app."
    )


class SlackFiles:
    """Fetches ``url_private`` files with the bot token from the allowed hosts only."""

    def __init__(self, session: aiohttp.ClientSession, token: str, *, api_url: str | None, max_bytes: int):
        self._session = session
        self._token = token
        self._max_bytes = max_bytes
        self._hosts = {SLACK_FILE_HOST}
        self._plain_http_hosts: set[str] = set()
        if api_url:
            parts = urlsplit(api_url)
            if parts.hostname:
                self._hosts.add(parts.hostname)
                if parts.scheme == "http":
                    self._plain_http_hosts.add(parts.hostname)

    def allowed(self, url: str) -> bool:
        """True for https URLs on Slack's file host (or the configured API host, http allowed only if it is)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host not in self._hosts:
            return False
        return parts.scheme == "https" or (parts.scheme == "http" and host in self._plain_http_hosts)

    async def image(self, file: Mapping[str, Any]) -> bytes:
        """The bytes of a Slack file object that must be an image (raises a friendly ``ImageBotError``)."""
        size = file.get("size")
        if isinstance(size, int) and size > self._max_bytes:
            raise InvalidImageError(self._too_big(), detail=f"file {file.get('id')} is {size} bytes")
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        if not url:
            raise InvalidImageError("I can't download that file from Slack.", detail=f"file {file.get('id')} no url")
        return await self.download(url)

    async def download(self, url: str) -> bytes:
        for _ in range(_MAX_REDIRECTS + 1):
            if not self.allowed(url):
                raise InvalidImageError(
                    "I only download images shared in Slack itself.", detail=f"refused host {urlsplit(url).hostname}"
                )
            headers = {"Authorization": f"Bearer {self._token}"}
            try:
                async with self._session.get(url, headers=headers, allow_redirects=False, timeout=_TIMEOUT) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    return await self._read(resp)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ProviderOutageError(
                    "I couldn't download that image from Slack. Please try again.", detail=f"download failed: {exc!r}"
                ) from None
        raise InvalidImageError("I can't download that file from Slack.", detail="too many redirects")

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.status != 200:
            raise InvalidImageError("I can't download that file from Slack.", detail=f"download status {resp.status}")
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise InvalidImageError(self._too_big(), detail=f"content-length {resp.content_length}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > self._max_bytes:
                raise InvalidImageError(self._too_big(), detail=f"download over {self._max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if imaging.sniff_format(data[:16]) is None:
            if resp.content_type == "text/html" or data.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
                raise MissingFilesScopeError(detail="url_private answered an HTML page (files:read scope missing?)")
            raise InvalidImageError(detail=f"downloaded file is {resp.content_type}, not an image")
        return data

    def _too_big(self) -> str:
        return f"That image is too large: the limit is {self._max_bytes // (1024 * 1024)} MB."


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
