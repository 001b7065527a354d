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
from starlette.responses import JSONResponse, Response

from adapters.web.requests import bounded_body, json_object, required
from adapters.web.stream import sources_data, sse
from adapters.web.uploads import ID, TOO_LARGE, Uploads, picture_data, turn_pictures
from bot.dialog import DialogManager, stored_sources
from bot.errors import PictureError
from bot.events import Incoming, Notice
from bot.pictures import MAX_PICTURE_BYTES
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


def incoming(key: str, text: str, pictures: tuple[str, ...] = ()) -> Incoming:
    # Whoever has the page is the operator (loopback, or holds the token): no limits, like the
    # console's user.
    return Incoming(chat=key, text=text, user="web", admin=True, pictures=pictures)


class ChatRoutes:
    def __init__(self, manager: DialogManager, uploads: Uploads, closing: asyncio.Event) -> None:
        self.manager = manager
        self.uploads = uploads
        #: Set when the server shuts down: replies under way stop and their streams end.
        self.closing = closing

    async def send(self, request: Request) -> EventSourceResponse:
        """The reply as it is generated. The client closing the stream cancels this generator:
        the turn stops like Ctrl-C in the console and is stored as stopped."""
        key = chat_key(request)
        body = await json_object(request, text=str, pictures=list)
        pictures = self.uploads.sources(key, body.get("pictures", []))
        text = body.get("text", "") if pictures else required(body, "text")
        if not text.strip() and not pictures:
            raise HTTPException(400, "'text' is empty: type a message or a command like /help")
        turn = incoming(key, text, pictures)

        async def events() -> AsyncGenerator[ServerSentEvent, None]:
            async with contextlib.aclosing(self.manager.handle(turn)) as replies:
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
        name = key.removeprefix(PREFIX)
        turns = [
            {
                "role": turn.role,
                "text": turn.text,
                "status": turn.meta.get("status"),
                "kind": turn.meta.get("kind", "text"),
                "sources": sources_data(stored_sources(turn)),
                "pictures": turn_pictures(name, turn),
            }
            for turn in await self.manager.store.read(key)
        ]
        mode = (await self.manager.mode_of(key)).name
        return JSONResponse({"chat": name, "mode": mode, "turns": turns})

    async def upload(self, request: Request) -> JSONResponse:
        """A picture for a message to come: kept, and answered with its id (see .uploads)."""
        key = chat_key(request)
        raw = await bounded_body(request, MAX_PICTURE_BYTES, TOO_LARGE)
        if not raw:
            raise HTTPException(400, "send the picture's bytes as the body (JPEG, PNG, WebP, GIF)")
        try:
            picture = await self.uploads.add(key, raw)
        except PictureError as exc:  # not a picture Pillow can read, or too many pixels
            raise HTTPException(422, str(exc)) from None
        return JSONResponse(picture_data(key.removeprefix(PREFIX), picture), status_code=201)

    async def picture(self, request: Request) -> Response:
        """A picture of the chat, as the page shows it (the normalised copy)."""
        key = chat_key(request)
        sha256 = str(request.path_params["picture"])
        found = await self.uploads.media.load(key, sha256, "") if ID.fullmatch(sha256) else None
        if found is None:
            raise HTTPException(404, "no such picture in this chat (forgotten, or never sent)")
        # Named by the digest of its bytes: the same URL is always the same picture.
        headers = {"cache-control": "private, max-age=86400"}
        return Response(found.data, media_type=found.mime_type, headers=headers)

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
