"""Who is asking: the playground's password, its host check, the session cookie (a browser session is a user),
the header that stops cross-site posts, and errors of the routes that are not job requests.

Sessions are issued by the server only, when the page is loaded (GET ``/``): ``{id}.{HMAC(id)}`` signed with
a per-install secret kept in the data folder (``playground.key``, created 0600 on first start), so a planted
or made-up id is refused and a client that drops its cookie gets no new user from the API (per-user caps
hold). As a second line, each client address gets at most ``SESSIONS_PER_ADDRESS_PER_MINUTE`` new sessions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import yarl
from aiohttp import web

from adapters.common.i18n import _
from adapters.common.lifecycle import as_user_error
from bot.errors import InvalidRequestError
from bot.text import N_

from .files import too_large
from .replies import error_response

log = logging.getLogger(__name__)

SESSION_COOKIE = "imagebot_session"
CSRF_HEADER = "X-Imagebot"  # a custom header: a cross-site form or img tag cannot send it without CORS
USER_KEY = web.RequestKey("imagebot_user", str)
NEW_SESSION_KEY = web.RequestKey("imagebot_new_session", str)  # the cookie value of a session just issued
SECRET_FILE = "playground.key"  # noqa: S105 (a file name)
SESSIONS_PER_ADDRESS_PER_MINUTE = 20
# English here; answered in the reader's language with ``_``
NO_SESSION = N_(
    "Your playground session is missing or has expired. Please reload the page to start a new one."
).template
TOO_MANY_SESSIONS = N_(
    "Too many new playground sessions from your address. Please wait a minute, then reload the page."
).template
STARTING = N_("The playground is starting; reload in a moment.").template
_SESSION = re.compile(r"^([A-Za-z0-9_-]{24})\.([A-Za-z0-9_-]{43})$")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sessions:
    """The playground's middleware: host and password checks, the session cookie, and the error answer."""

    def __init__(self, *, password: str | None, local_only: bool, max_upload_bytes: int):
        self._password = password
        self._local_only = local_only and password is None  # with a password, any Host may reach it
        self._max_upload_bytes = max_upload_bytes
        self.secret: bytes | None = None  # set by the playground's start (load_secret)
        self._issued: dict[str, deque[float]] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path == "/" or path.startswith(("/api/", "/static/"))):
            return await handler(request)  # /healthz and whatever else shares the server
        if self._local_only and not _is_local_host(request.host):
            return web.Response(status=421, text=_("This playground answers only on localhost.") + "\n")
        if self._password is not None and not authorised(request, self._password):
            return web.Response(
                status=401,
                text=_("The playground needs its password (IMAGEBOT_WEB_PASSWORD).") + "\n",
                headers={"WWW-Authenticate": 'Basic realm="imagebot playground", charset="UTF-8"'},
            )
        if self.secret is None:
            return web.Response(status=503, text=_(STARTING) + "\n")
        user = session_user(self.secret, request.cookies.get(SESSION_COOKIE, ""))
        if user is None and path == "/":
            if not self._may_issue(request.remote or "unknown"):
                return web.Response(status=429, text=_(TOO_MANY_SESSIONS) + "\n", headers={"Retry-After": "60"})
            user = secrets.token_urlsafe(18)
            request[NEW_SESSION_KEY] = session_token(self.secret, user)
        if user is None:
            if path.startswith("/static/"):
                return await handler(request)  # the page's files need no session
            body = {"error": {"kind": "session", "message": _(NO_SESSION), "ref": None, "retryable": False}}
            return web.json_response(body, status=401)
        request[USER_KEY] = user
        try:
            if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
                raise InvalidRequestError(
                    N_("Please use the playground page to send requests."), detail="POST without the X-Imagebot header"
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

    def _may_issue(self, address: str) -> bool:
        """At most ``SESSIONS_PER_ADDRESS_PER_MINUTE`` new sessions per client address in any minute."""
        now = time.monotonic()
        for known in [a for a, times in self._issued.items() if times[-1] < now - 60]:
            del self._issued[known]
        times = self._issued.setdefault(address, deque())
        while times and times[0] < now - 60:
            times.popleft()
        if len(times) >= SESSIONS_PER_ADDRESS_PER_MINUTE:
            log.info("playground: new sessions from one address over %d a minute", SESSIONS_PER_ADDRESS_PER_MINUTE)
            return False
        times.append(now)
        return True


def load_secret(data_dir: Path) -> bytes:
    """The per-install secret that signs session ids: read, or created 0600 on first start (blocking)."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) < 32:
            raise ValueError(f"{path} is damaged: delete it (every playground session starts anew)") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret.hex() + "\n")
    return secret


def session_token(secret: bytes, user: str) -> str:
    """The cookie value for ``user``: the id and its signature."""
    digest = hmac.new(secret, b"playground-session:" + user.encode(), hashlib.sha256).digest()
    return f"{user}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def session_user(secret: bytes, token: str) -> str | None:
    """The user id a cookie value carries, if the server issued it (None: missing, malformed or forged)."""
    match = _SESSION.fullmatch(token)
    if match is None:
        return None
    user = match.group(1)
    return user if hmac.compare_digest(session_token(secret, user), token) else None


def remember(request: web.Request, response: web.StreamResponse) -> None:
    """Set the session cookie on the page that started a new session."""
    token = request.get(NEW_SESSION_KEY)
    if token is not None:
        response.set_cookie(SESSION_COOKIE, token, max_age=365 * 86_400, httponly=True, samesite="Strict", path="/")


def _is_local_host(host: str) -> bool:
    """Is the Host header a loopback name? (Stops DNS-rebinding pages from reaching a password-less bot.)"""
    try:
        name = yarl.URL(f"http://{host}/").host or ""
    except ValueError:
        return False
    return name.strip("[]").lower() in _LOCAL_HOSTS


def authorised(request: web.Request, password: str) -> bool:
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
