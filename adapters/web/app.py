"""The Starlette app: routes, JSON errors and the guard in front of them all."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from adapters.web.chats import ChatRoutes
from adapters.web.login import Login
from adapters.web.pages import pages, static
from adapters.web.security import Guard, error
from bot.dialog import DialogManager


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def chat_page(request: Request) -> Response:
    page: Response = pages.TemplateResponse(request, "chat.html")
    return page


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail)


def create_app(manager: DialogManager, token: str | None) -> Starlette:
    from adapters.web.templates import TemplateRoutes

    chats = ChatRoutes(manager)
    templates = TemplateRoutes(manager.prompts)
    login = Login(token)
    routes = [
        Route("/healthz", healthz),
        Route("/", chat_page),
        Route("/login", login.page, methods=["GET"]),
        Route("/login", login.submit, methods=["POST"]),
        Route("/api/chats", chats.list, methods=["GET"]),
        Route("/api/chats/{chat}", chats.read, methods=["GET"]),
        Route("/api/chats/{chat}", chats.forget, methods=["DELETE"]),
        Route("/api/chats/{chat}/messages", chats.send, methods=["POST"]),
        Route("/api/templates", templates.list, methods=["GET"]),
        Route("/api/templates/{name}", templates.read, methods=["GET"]),
        Route("/api/templates/{name}", templates.write, methods=["PUT"]),
        Route("/api/render", templates.render, methods=["POST"]),
        Mount("/static", static, name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token)],
        exception_handlers={HTTPException: http_error},
    )
