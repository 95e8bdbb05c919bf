"""Who is asking: the playground's password, its host check, the session cookie (a browser session is a user),
the header that stops cross-site posts, and errors of the routes that are not job requests."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

import yarl
from aiohttp import web

from adapters.common.lifecycle import as_user_error
from bot.errors import InvalidRequestError

from .files import too_large
from .replies import error_response

log = logging.getLogger(__name__)

SESSION_COOKIE = "imagebot_session"
CSRF_HEADER = "X-Imagebot"  # a custom header: a cross-site form or img tag cannot send it without CORS
USER_KEY = web.RequestKey("imagebot_user", str)
NEW_SESSION_KEY = web.RequestKey("imagebot_new_session", bool)
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sessions:
    """The playground's middleware: host and password checks, the session cookie, and the error answer."""

    def __init__(self, *, password: str | None, local_only: bool, max_upload_bytes: int):
        self._password = password
        self._local_only = local_only and password is None  # with a password, any Host may reach it
        self._max_upload_bytes = max_upload_bytes

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path == "/" or path.startswith(("/api/", "/static/"))):
            return await handler(request)  # /healthz and whatever else shares the server
        if self._local_only and not _is_local_host(request.host):
            return web.Response(status=421, text="This playground answers only on localhost.\n")
        if self._password is not None and not _authorised(request, self._password):
            return web.Response(
                status=401,
                text="The playground needs its password (IMAGEBOT_WEB_PASSWORD).\n",
                headers={"WWW-Authenticate": 'Basic realm="imagebot playground", charset="UTF-8"'},
            )
        user = request.cookies.get(SESSION_COOKIE, "")
        request[NEW_SESSION_KEY] = not _SESSION_ID.fullmatch(user)
        request[USER_KEY] = secrets.token_urlsafe(18) if request[NEW_SESSION_KEY] else user
        try:
            if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
                raise InvalidRequestError(
                    "Please use the playground page to send requests.", detail="POST without the X-Imagebot header"
                )
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(as_user_error(too_large(self._max_upload_bytes)))
        except web.HTTPException:
            raise
        except Exception as exc:  # routes that are not job requests (those answer through their WebReply)
            response = error_response(as_user_error(exc))
        if not response.prepared:
            remember(request, response)
        return response


def remember(request: web.Request, response: web.StreamResponse) -> None:
    """Set the session cookie on the first response of a new session."""
    if request.get(NEW_SESSION_KEY):
        response.set_cookie(
            SESSION_COOKIE, request[USER_KEY], max_age=365 * 86_400, httponly=True, samesite="Strict", path="/"
        )


def _is_local_host(host: str) -> bool:
    """Is the Host header a loopback name? (Stops DNS-rebinding pages from reaching a password-less bot.)"""
    try:
        name = yarl.URL(f"http://{host}/").host or ""
    except ValueError:
        return False
    return name.strip("[]").lower() in _LOCAL_HOSTS


def _authorised(request: web.Request, password: str) -> bool:
    """HTTP Basic auth with any user name and the shared password."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given = decoded.partition(":")[2]
    return secrets.compare_digest(given.encode(), password.encode())
