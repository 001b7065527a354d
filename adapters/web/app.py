"""The Starlette app: routes, JSON errors and the guard in front of them all."""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from adapters.web.chats import ChatRoutes
from adapters.web.evals import EvalRoutes
from adapters.web.login import Login
from adapters.web.pages import pages, static
from adapters.web.runs import RunRoutes
from adapters.web.security import Guard, error
from adapters.web.settings import WebSettings
from adapters.web.templates import TemplateRoutes
from adapters.web.uploads import Uploads
from bot.dialog import DialogManager
from bot.errors import StoreError
from bot.observe import metrics
from bot.pictures import MediaDir
from bot.settings import Settings

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def chat_page(request: Request) -> Response:
    page: Response = pages.TemplateResponse(request, "chat.html")
    return page


async def playground_page(request: Request) -> Response:
    page: Response = pages.TemplateResponse(request, "playground.html")
    return page


#: Starlette's own answers, said with what to do instead.
ROUTING_ERRORS = {
    404: 'no such page or API route: / is the chat, /playground the playground; README "Web" '
    "lists the API",
    405: 'this route does not take that method: README "Web" lists what each route takes',
}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    generic = exc.detail in ("Not Found", "Method Not Allowed")
    detail = ROUTING_ERRORS.get(exc.status_code, exc.detail) if generic else exc.detail
    return error(exc.status_code, detail)


STORE_DOWN = (
    "the conversation store cannot be reached; try again in a moment (the server's log says why)"
)


async def store_error(request: Request, exc: Exception) -> Response:
    """A route's read of the conversation store failed (its Redis is down, its SQLite file
    locked): 503 with what to do, which the page shows, rather than a bare 500. Sending and
    forgetting go through the dialog manager, which answers its own store errors."""
    assert isinstance(exc, StoreError)
    metrics.store_error(exc)  # a Redis error when Redis's client caused it
    # The route by its handler's name: the path holds the chat's name, which the user typed.
    route = getattr(request.scope.get("endpoint"), "__qualname__", "?")
    log.error("the conversation store failed on %s %s: %s", request.method, route, exc)
    return error(503, STORE_DOWN)


def create_app(
    manager: DialogManager, settings: Settings, web: WebSettings, closing: asyncio.Event
) -> Starlette:
    """The app; setting ``closing`` stops the replies under way (the server is stopping)."""
    token = web.token.get_secret_value() if web.token is not None else None
    # The media folder the manager keeps local pictures in (build_manager always gives one).
    media = manager.pictures.media or MediaDir(settings.home / "media")
    chats = ChatRoutes(manager, Uploads(manager.pictures, media), closing)
    templates = TemplateRoutes(manager.prompts)
    runs = RunRoutes(manager, templates, settings, web.models)
    evals = EvalRoutes(templates, settings, web.suites or settings.home / "evals")
    login = Login(token, secure=(web.origin or "").startswith("https://"))
    routes = [
        Route("/healthz", healthz),
        Route("/", chat_page),
        Route("/playground", playground_page),
        Route("/login", login.page, methods=["GET"]),
        Route("/login", login.submit, methods=["POST"]),
        Route("/api/chats", chats.index, methods=["GET"]),
        Route("/api/chats/{chat}", chats.read, methods=["GET"]),
        Route("/api/chats/{chat}", chats.forget, methods=["DELETE"]),
        Route("/api/chats/{chat}/messages", chats.send, methods=["POST"]),
        Route("/api/chats/{chat}/pictures", chats.upload, methods=["POST"]),
        Route("/api/chats/{chat}/pictures/{picture}", chats.picture, methods=["GET"]),
        Route("/api/templates", templates.index, methods=["GET"]),
        Route("/api/templates/{name}", templates.read, methods=["GET"]),
        Route("/api/templates/{name}", templates.write, methods=["PUT"]),
        Route("/api/templates/{name}/check", templates.check, methods=["POST"]),
        Route("/api/render", templates.render, methods=["POST"]),
        Route("/api/models", runs.models, methods=["GET"]),
        Route("/api/run", runs.run, methods=["POST"]),
        Route("/api/evals", evals.index, methods=["GET"]),
        Route("/api/evals/run", evals.run, methods=["POST"]),
        Mount("/static", static, name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token, origin=web.origin)],
        exception_handlers={HTTPException: http_error, StoreError: store_error},
    )
