"""Who may ask what: the token, the session cookie, the origin check and the response headers.

One ASGI middleware in front of every route, so no route can forget it:

- Without a token (loopback only) the Host header must name this machine too, so a page on
  another site cannot reach the API through a DNS name it re-points at 127.0.0.1.
- With FMBOT_WEB_TOKEN the API wants ``Authorization: Bearer TOKEN`` or the session cookie the
  login page sets (HttpOnly, SameSite=Strict: scripts cannot read it, other sites cannot send it);
  pages without it go to /login.
- A state-changing request whose Origin (or Referer) is another origin is refused: another than
  the one asked (scheme and Host as uvicorn sees them) and than FMBOT_WEB_ORIGIN, the page's
  address when a reverse proxy serves it (the proxy may send Host 127.0.0.1:8000 and plain http).
- Every response carries a Content Security Policy without inline scripts.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.web.settings import is_loopback

COOKIE = "fmbot_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Reachable without logging in: the health check, the login page and the static files (no
#: secrets in them; the login page needs its stylesheet).
PUBLIC = ("/healthz", "/login", "/static/")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # the Referer check below needs it on our own requests
    "x-frame-options": "DENY",
}


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"fmbot web session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """The middleware; ``token`` None means loopback only, no login. ``origin``:
    FMBOT_WEB_ORIGIN, normalised (adapters/web/settings.py)."""

    def __init__(self, app: ASGIApp, token: str | None, origin: str | None = None) -> None:
        self.app = app
        self.token = token
        self.origin = origin
        self.session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        refusal = self.refusal(conn)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await (refusal or self.app)(scope, receive, with_headers)

    def refusal(self, conn: HTTPConnection) -> Response | None:
        path = conn.url.path
        if self.token is None and not is_loopback(conn.url.hostname or ""):
            return error(
                403, "this server answers on its loopback address only: open http://127.0.0.1"
            )
        if conn.scope["method"] not in SAFE_METHODS and not same_origin(conn, self.origin):
            return error(403, "refused: this request came from another site's page")
        if self.token is None or path.startswith(PUBLIC) or self.signed_in(conn):
            return None
        if path.startswith("/api/"):
            return error(
                401,
                "send Authorization: Bearer FMBOT_WEB_TOKEN, or log in at /login",
            )
        return RedirectResponse("/login", status_code=303)

    def signed_in(self, conn: HTTPConnection) -> bool:
        assert self.token is not None and self.session is not None
        scheme, _, given = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return token_matches(given, self.token)
        cookie = conn.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie, self.session)


def same_origin(conn: HTTPConnection, origin: str | None = None) -> bool:
    """False when Origin or Referer names another origin than the one asked and than ``origin``.
    Neither header (curl, scripts) is allowed: browsers send Origin on every cross-site POST,
    PUT, DELETE."""
    headers: Headers = conn.headers
    claimed = headers.get("origin") or headers.get("referer")
    if not claimed:
        return True
    if claimed == "null":  # sandboxed frames, file: pages
        return False
    parts = urlsplit(claimed)
    given = f"{parts.scheme}://{parts.netloc}"
    own = f"{conn.url.scheme}://{headers.get('host', '')}"
    return given == own or (origin is not None and given.lower() == origin)
