"""Logging in once with FMBOT_WEB_TOKEN: the page gets an HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.pages import pages
from adapters.web.requests import bounded_body
from adapters.web.security import COOKIE, session_value, token_matches

SESSION_DAYS = 30
#: bytes: the form is one token. /login is public, so its body is read before anyone is known:
#: bounded, or one request could fill the memory.
MAX_FORM = 4096
FORM_TOO_LARGE = f"the login form is over {MAX_FORM} bytes: send only token=FMBOT_WEB_TOKEN"


class Login:
    def __init__(self, token: str | None, secure: bool = False) -> None:
        self.token = token
        self.secure = secure  # FMBOT_WEB_ORIGIN is https: a proxy terminates TLS

    async def page(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)  # loopback: nothing to log in to
        form: Response = pages.TemplateResponse(request, "login.html", {"failed": False})
        return form

    async def submit(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        # A urlencoded form, parsed here: one field does not need python-multipart.
        body = await bounded_body(request, MAX_FORM, FORM_TOO_LARGE)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        given = (form.get("token") or [""])[0]
        if not token_matches(given, self.token):
            refused: Response = pages.TemplateResponse(
                request, "login.html", {"failed": True}, status_code=401
            )
            return refused
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(self.token),
            max_age=SESSION_DAYS * 86400,
            httponly=True,  # page scripts cannot read it
            samesite="strict",  # other sites' pages cannot send it
            secure=self.secure or request.url.scheme == "https",
        )
        return response
