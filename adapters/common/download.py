"""The capped streaming download of a user's attachment, for every platform.

Only from the platform's own hosts (https, or http where the operator pointed the platform's API at a plain
http host such as a local proxy), on the standard port for the scheme unless the configured host says
otherwise; redirects followed by hand, each hop checked again (credentials are sent only to allowed hosts);
a declared size over the limit refused before reading; the body read in chunks and cut off at the limit,
whatever the server declared; the result sniffed so that a login page is never taken for a picture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot import imaging
from bot.errors import ImageBotError, InvalidImageError, ProviderOutageError
from bot.text import N_, Text

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"https": 443, "http": 80}
TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


class DownloadRefusedError(InvalidImageError):
    """The link points somewhere the bot does not fetch from."""


class NotAnImageError(InvalidImageError):
    """What came back is not an image (a document, a text...)."""

    default_message = N_("That file isn't an image I can read. Send a PNG, JPEG, WebP or GIF.")


class LoginPageError(NotAnImageError):
    """An HTML page came back instead of the file: platforms answer so when the bot may not read files."""


@dataclass(frozen=True, slots=True)
class Origin:
    """One place downloads may come from."""

    scheme: str
    host: str
    port: int


def origins(hosts: Iterable[str], configured: str | None = None) -> frozenset[Origin]:
    """https on port 443 for each of ``hosts``, plus the scheme, host and port of a configured base URL."""
    found = {Origin("https", host.lower(), 443) for host in hosts}
    if configured:
        parts = urlsplit(configured)
        if parts.hostname and parts.scheme in _DEFAULT_PORTS:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
            found.add(Origin(parts.scheme, parts.hostname.lower(), port))
    return frozenset(found)


def origin_of(url: str) -> Origin | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme])


class CappedDownload:
    """Fetches users' images from allowed origins only, at most ``max_bytes`` each."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        allowed: frozenset[Origin],
        *,
        max_bytes: int,
        headers: Mapping[str, str] | None = None,
        platform: str = "the chat platform",
    ):
        self._session = session
        self._allowed = allowed
        self._max_bytes = max_bytes
        self._headers = dict(headers or {})
        self._platform = platform

    def allowed(self, url: str) -> bool:
        return origin_of(url) in self._allowed

    async def fetch(self, url: str, *, declared_size: int | None = None) -> bytes:
        """The image at ``url`` (raises a friendly ``ImageBotError``)."""
        if declared_size is not None and declared_size > self._max_bytes:
            raise InvalidImageError(self.too_big(), detail=f"declared size {declared_size} bytes")
        for _ in range(MAX_REDIRECTS + 1):
            if not self.allowed(url):
                origin = origin_of(url)
                where = f"{origin.scheme}://{origin.host}:{origin.port}" if origin else "a malformed link"
                raise DownloadRefusedError(
                    N_("I only download images shared in {platform} itself.", platform=self._platform),
                    detail=f"refused {where}",
                )
            try:
                async with self._session.get(
                    url, headers=self._headers, allow_redirects=False, timeout=TIMEOUT
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    return await self._read(resp)
            except ImageBotError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise ProviderOutageError(
                    N_("I couldn't download that image from {platform}. Please try again.", platform=self._platform),
                    detail=f"download failed: {type(exc).__name__}",
                ) from None
        raise DownloadRefusedError(N_("I can't download that file."), detail="too many redirects")

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.status != 200:
            raise InvalidImageError(
                N_("I couldn't download that image (its link may have expired). Please upload it again."),
                detail=f"download answered HTTP {resp.status}",
            )
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise InvalidImageError(self.too_big(), detail=f"content-length {resp.content_length}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > self._max_bytes:
                raise InvalidImageError(self.too_big(), detail=f"download over {self._max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if imaging.sniff_format(data[:16]) is None:
            if resp.content_type == "text/html" or data.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
                raise LoginPageError(detail="the download answered an HTML page")
            raise NotAnImageError(detail=f"downloaded {resp.content_type}, not an image")
        return data

    def too_big(self) -> Text:
        return N_("That image is too large: the limit is {limit} MB.", limit=self._max_bytes // (1024 * 1024))
