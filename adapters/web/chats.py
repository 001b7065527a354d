"""The chat API: send a message (the reply streams back), list, read and forget conversations.

Web conversations live in the configured store under ``web:NAME``, apart from the console's and
Telegram's: the API lists and deletes only its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.web.requests import json_object, required
from adapters.web.stream import sources_data, sse
from bot.dialog import DialogManager, stored_sources
from bot.events import Incoming, Notice
from bot.text import terminal_safe

PREFIX = "web:"
MAX_NAME = 200
PING = 15  # s between keep-alive comments, so proxies do not close a slow reply's stream


def chat_key(request: Request) -> str:
    """The store key of the chat in the path; 400 unless it is a name one can show and type."""
    name = str(request.path_params["chat"])
    if not name.strip() or len(name) > MAX_NAME or terminal_safe(name) != name or "\n" in name:
        raise HTTPException(
            400, f"a chat name is 1 to {MAX_NAME} characters on one line, without controls"
        )
    return PREFIX + name


def incoming(key: str, text: str) -> Incoming:
    # Whoever has the page is the operator (loopback, or holds the token): no limits, like the
    # console's user.
    return Incoming(chat=key, text=text, user="web", admin=True)


class ChatRoutes:
    def __init__(self, manager: DialogManager, closing: asyncio.Event) -> None:
        self.manager = manager
        #: Set when the server shuts down: replies under way stop and their streams end.
        self.closing = closing

    async def send(self, request: Request) -> EventSourceResponse:
        """The reply as it is generated. The client closing the stream cancels this generator:
        the turn stops like Ctrl-C in the console and is stored as stopped."""
        key = chat_key(request)
        text = required(await json_object(request, text=str), "text")
        if not text.strip():
            raise HTTPException(400, "'text' is empty: type a message or a command like /help")

        async def events() -> AsyncGenerator[ServerSentEvent, None]:
            async with contextlib.aclosing(self.manager.handle(incoming(key, text))) as replies:
                async for event in sse(replies, self.closing):
                    yield event

        return EventSourceResponse(events(), ping=PING)

    async def index(self, request: Request) -> JSONResponse:
        chats = [
            {
                "chat": info.chat.removeprefix(PREFIX),
                "turns": info.turns,
                "updated_at": info.updated_at,
            }
            for info in await self.manager.store.chats()
            if info.chat.startswith(PREFIX)
        ]
        return JSONResponse({"chats": chats})

    async def read(self, request: Request) -> JSONResponse:
        key = chat_key(request)
        turns = [
            {
                "role": turn.role,
                "text": turn.text,
                "status": turn.meta.get("status"),
                "kind": turn.meta.get("kind", "text"),
                "sources": sources_data(stored_sources(turn)),
            }
            for turn in await self.manager.store.read(key)
        ]
        mode = (await self.manager.mode_of(key)).name
        return JSONResponse({"chat": key.removeprefix(PREFIX), "mode": mode, "turns": turns})

    async def forget(self, request: Request) -> JSONResponse:
        """What /forget does: history, pictures, template and usage go."""
        key = chat_key(request)
        notices = []
        async with contextlib.aclosing(self.manager.handle(incoming(key, "/forget"))) as replies:
            async for event in replies:
                if isinstance(event, Notice):
                    notices.append(event)
        failed = [n.text for n in notices if n.kind == "error"]
        if failed:
            raise HTTPException(503, " ".join(failed))
        return JSONResponse({"text": " ".join(n.text for n in notices)})
