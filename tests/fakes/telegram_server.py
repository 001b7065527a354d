"""A fake Telegram Bot API server, written from the public Bot API reference (10.3).

URLs are ``/bot{token}/{method}``. Requests may be ``application/x-www-form-urlencoded`` (what
aiogram sends), ``multipart/form-data`` (uploads: the file is its own part, referenced as
``attach://name``) or JSON. Form values are strings; fields the API types as numbers, booleans,
arrays or objects are JSON-decoded, everything else stays a string (a user's text "123" is text).

Answers are ``{"ok": true, "result": ...}`` with realistic Message objects; errors are
``{"ok": false, "error_code": N, "description": "..."}`` with HTTP status N, as aiogram expects.
What the fake checks, like the real server:

- text 1–4096 and captions 0–1024 UTF-16 units after entity parsing;
- ``parse_mode`` HTML / MarkdownV2 / Markdown: unsupported or unbalanced tags, unclosed markup,
  unescaped reserved characters → 400 "Bad Request: can't parse entities: ...";
- ``entities``: inside the text (the real server is more lenient here; strict catches bugs);
- editMessageText with the same text, entities and keyboard → 400 "message is not modified";
- getUpdates: ``offset`` confirms earlier updates, ``timeout`` long-polls, ``limit``,
  ``allowed_updates``, 409 while a webhook is set or when a second poller cuts in;
- setWebhook: updates are POSTed to the URL with X-Telegram-Bot-Api-Secret-Token, in order, and
  confirmed by a 2xx answer;
- optional flood control (``min_edit_interval``) and injected errors (``fail_next``), e.g. 429
  with ``parameters.retry_after``.

Tests push updates with :meth:`FakeTelegram.push_text` and friends and read what the bot did from
:attr:`requests`, :meth:`calls`, :meth:`bot_messages` and :attr:`drafts`.

Pictures people send: :meth:`FakeTelegram.push_photo` (the ``photo`` array of JPEG sizes Telegram
makes, smallest first), :meth:`~FakeTelegram.push_document` ("send as file"),
:meth:`~FakeTelegram.push_album` (one ``media_group_id``, the caption on the first item) and
:meth:`~FakeTelegram.push_sticker`. Their files are served like the cloud Bot API does:
``getFile`` (400 "invalid file_id"; "file is too big" above :attr:`~FakeTelegram.download_limit`,
20 MB) hands out a ``file_path``, downloaded from ``GET /file/bot<token>/<file_path>``; every
download is recorded in :attr:`~FakeTelegram.downloads`. :meth:`~FakeTelegram.add_file` registers
any bytes (a corrupt picture, a huge file) as a file. :meth:`~FakeTelegram.fail_next` makes getFile
answer an error (e.g. 400 "Bad Request: file is too big"), :meth:`~FakeTelegram.fail_download` a
download (404, 500, or a body cut short). With :attr:`~FakeTelegram.local_dir` set, the fake is a
server started with ``--local``: getFile answers absolute paths of files it wrote to that folder.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import io
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageOps, UnidentifiedImageError

from tests.fakes.base import FakeServer, Fault, Handler, Recorded

TOKEN = "123456789:AAHfakeTokenForTests-0123456789abcdEF"
BOT_ID = 123456789
BOT_USERNAME = "fmbot_test_bot"

PARAMS = web.RequestKey("params", dict)
FILES = web.RequestKey("files", dict)
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
# Fields the Bot API types as Integer/Boolean/Array/Object: aiogram sends them JSON-encoded.
JSON_FIELDS = frozenset(
    {
        "chat_id", "message_id", "message_thread_id", "draft_id", "entities",
        "caption_entities", "reply_markup", "reply_parameters", "link_preview_options",
        "disable_notification", "protect_content", "can_stop", "keep_on_stop", "offset",
        "limit", "timeout", "allowed_updates", "commands", "scope", "show_alert", "cache_time",
        "drop_pending_updates", "max_connections", "show_caption_above_media", "has_spoiler",
        "reply_to_message_id", "allow_sending_without_reply", "allow_paid_broadcast",
        "business_connection_id_unused",
    }
)  # fmt: skip
ENTITY_TYPES = frozenset(
    {
        "mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number", "bold",
        "italic", "underline", "strikethrough", "spoiler", "blockquote",
        "expandable_blockquote", "code", "pre", "text_link", "text_mention", "custom_emoji",
        "date_time",
    }
)  # fmt: skip
#: Longest sides of the sizes Telegram keeps of a photo (its "s", "m", "x" and "y" sizes; HD
#: photos add 2560): only those smaller than the original, plus the original capped at the last.
PHOTO_SIDES = (90, 320, 800, 1280)
#: The cloud Bot API's getFile limit (telegram-bot-api's MAX_DOWNLOAD_FILE_SIZE, 20 << 20).
DOWNLOAD_LIMIT = 20 * 1024 * 1024
# Prefixes real file ids start with, by kind (they encode the file type).
FILE_ID_PREFIXES = {
    "photos": "AgACAgIAAxkBAAI",
    "documents": "BQACAgIAAxkBAAI",
    "stickers": "CAACAgIAAxkBAAI",
    "thumbnails": "AAMCAgADGQEAA",
}
CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice",
        "upload_voice", "upload_document", "choose_sticker", "find_location",
        "record_video_note", "upload_video_note",
    }
)  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


# --- markup checks -------------------------------------------------------------------------

_HTML_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "code", "pre", "blockquote", "tg-emoji", "tg-time",
}  # fmt: skip
_HTML_ENTITIES = {"lt", "gt", "amp", "quot"}


class _HtmlChecker(HTMLParser):
    """Balanced, supported tags only; returns the text the markup stands for."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self.source = source
        self.stack: list[str] = []
        self.text: list[str] = []

    def _byte_offset(self) -> int:
        line, col = self.getpos()
        lines = self.source.split("\n")
        prefix = "\n".join(lines[: line - 1]) + ("\n" if line > 1 else "") + lines[line - 1][:col]
        return len(prefix.encode())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            raise _bad(
                f'can\'t parse entities: Unsupported start tag "{tag}" at byte offset '
                f"{self._byte_offset()}"
            )
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            expected = f'expected "</{self.stack[-1]}>", ' if self.stack else ""
            raise _bad(
                f"can't parse entities: Unmatched end tag at byte offset {self._byte_offset()}, "
                f'{expected}found "</{tag}>"'
            )
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _HTML_ENTITIES:
            raise _bad(
                f'can\'t parse entities: Unsupported HTML entity "&{name};" at byte offset '
                f"{self._byte_offset()}"
            )
        self.text.append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.text.append(html.unescape(f"&#{name};"))

    def check(self) -> str:
        self.feed(self.source)
        self.close()
        if self.rawdata:  # e.g. an unclosed "<b" at the end
            raise _bad("can't parse entities: Unclosed start tag")
        if self.stack:
            raise _bad(
                "can't parse entities: Can't find end tag corresponding to start tag "
                f'"{self.stack[-1]}"'
            )
        return "".join(self.text)


_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
    "`": "Code",
    "```": "Pre",
    "[": "TextUrl",
}


def check_markdown_v2(source: str) -> str:
    """MarkdownV2 as the reference describes it; returns the plain text."""
    out: list[str] = []
    stack: list[tuple[str, int]] = []  # (marker, byte offset)
    i = 0
    n = len(source)

    def offset(at: int) -> int:
        return len(source[:at].encode())

    while i < n:
        c = source[i]
        code = bool(stack) and stack[-1][0] in ("`", "```")
        if c == "\\":
            if i + 1 >= n:
                raise _bad(
                    "can't parse entities: Character '\\' is reserved and must be escaped with "
                    "the preceding '\\'"
                )
            out.append(source[i + 1])
            i += 2
            continue
        if source.startswith("```", i):
            if code and stack[-1][0] == "```":
                stack.pop()
            elif not code:
                stack.append(("```", offset(i)))
                end = source.find("\n", i + 3)  # optional language on the opening line
                i = i + 3 if end < 0 or " " in source[i + 3 : end] else end + 1
                continue
            i += 3
            continue
        if c == "`":
            if code and stack[-1][0] == "`":
                stack.pop()
            elif not code:
                stack.append(("`", offset(i)))
            else:
                out.append(c)
            i += 1
            continue
        if code:
            out.append(c)
            i += 1
            continue
        marker = next((m for m in ("||", "__") if source.startswith(m, i)), None) or (
            c if c in "*_~" else None
        )
        if marker is not None:
            if stack and stack[-1][0] == marker:
                stack.pop()
            elif any(m == marker for m, _ in stack):
                raise _bad(
                    f"can't parse entities: Can't find end of {_MDV2_NAMES[stack[-1][0]]} "
                    f"entity at byte offset {stack[-1][1]}"
                )
            else:
                stack.append((marker, offset(i)))
            i += len(marker)
            continue
        if c == "[":
            stack.append(("[", offset(i)))
            i += 1
            continue
        if c == "]" and stack and stack[-1][0] == "[":
            if not source.startswith("(", i + 1) or ")" not in source[i + 1 :]:
                raise _bad(
                    f"can't parse entities: Can't find end of TextUrl entity at byte offset "
                    f"{stack[-1][1]}"
                )
            stack.pop()
            i = source.index(")", i + 1) + 1
            continue
        if c == ">" and (i == 0 or source[i - 1] == "\n"):
            i += 1  # block quotation mark
            continue
        if c in _MDV2_RESERVED:
            raise _bad(
                f"can't parse entities: Character '{c}' is reserved and must be escaped with the "
                "preceding '\\'"
            )
        out.append(c)
        i += 1
    if stack:
        marker, at = stack[-1]
        name = _MDV2_NAMES[marker]
        raise _bad(f"can't parse entities: Can't find end of {name} entity at byte offset {at}")
    return "".join(out)


def check_markdown_legacy(source: str) -> str:
    """Legacy Markdown: *bold*, _italic_, `code`, ```pre```, [text](url); no nesting."""
    out: list[str] = []
    i = 0
    while i < len(source):
        c = source[i]
        marker = "```" if source.startswith("```", i) else c if c in "*_`[" else None
        if marker is None:
            if c == "\\" and i + 1 < len(source):
                i += 1
            out.append(source[i])
            i += 1
            continue
        closer = "]" if marker == "[" else marker
        end = source.find(closer, i + len(marker))
        if end < 0:
            raise _bad(
                "can't parse entities: Can't find end of the entity starting at byte offset "
                f"{len(source[:i].encode())}"
            )
        out.append(source[i + len(marker) : end])
        i = end + len(closer)
        if marker == "[" and source.startswith("(", i):
            close = source.find(")", i)
            i = close + 1 if close >= 0 else len(source)
    return "".join(out)


def parse_text(text: str, parse_mode: str | None, entities: Any) -> str:
    """The text a message would show, checking its markup or entities on the way."""
    if parse_mode and entities:
        raise _bad("can't parse entities: both parse_mode and entities are specified")
    mode = (parse_mode or "").lower()
    if mode == "html":
        return _HtmlChecker(text).check()
    if mode == "markdownv2":
        return check_markdown_v2(text)
    if mode == "markdown":
        return check_markdown_legacy(text)
    if mode:
        raise _bad(f"unsupported parse_mode {parse_mode!r}")
    if entities is not None:
        check_entities(text, entities)
    return text


def check_entities(text: str, entities: Any) -> None:
    size = utf16_len(text)
    if not isinstance(entities, list):
        raise _bad("can't parse entities: entities must be an array")
    for e in entities:
        if not isinstance(e, dict) or e.get("type") not in ENTITY_TYPES:
            raise _bad(f"can't parse entities: unsupported entity {e!r}")
        offset, length = e.get("offset"), e.get("length")
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0:
            raise _bad(f"can't parse entities: bad entity bounds {e!r}")
        if length <= 0 or offset + length > size:
            raise _bad(f"can't parse entities: entity {e!r} is outside the text ({size} units)")
        if e["type"] == "text_link" and not e.get("url"):
            raise _bad("can't parse entities: text_link entity without url")


# --- the server -----------------------------------------------------------------------------


@dataclass
class StoredFile:
    """A file the fake's Bot API holds: what getFile describes and the download serves."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int  # usually len(data); add_file(size=...) claims more

    def photo_size(self, width: int, height: int) -> dict[str, Any]:
        """This file as a PhotoSize (e.g. a corrupt picture in ``photo=[...]``)."""
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.file_size,
            "width": width,
            "height": height,
        }


def _open_picture(data: bytes) -> Image.Image:
    """A picture as Telegram's apps upload it: rotated upright, without transparency."""
    try:
        picture: Image.Image = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"Telegram would not deliver this as a photo: {exc}") from None
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        backdrop = Image.new("RGB", picture.size, "white")
        backdrop.paste(picture.convert("RGBA"), mask=picture.convert("RGBA").getchannel("A"))
        return backdrop
    return picture.convert("RGB")


def _scaled(picture: Image.Image, side: int, fmt: str = "JPEG") -> tuple[bytes, int, int]:
    """``picture`` with its longest side at most ``side``, encoded; (bytes, width, height)."""
    copy = picture.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    copy.save(out, fmt, quality=87)
    return out.getvalue(), copy.width, copy.height


@dataclass
class _Injected:
    method: str
    status: int
    description: str
    retry_after: int | None
    times: int
    when: Callable[[dict[str, Any]], bool] | None


@dataclass
class FakeTelegram(FakeServer):
    token: str = TOKEN
    bot_user: dict[str, Any] = field(
        default_factory=lambda: {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "fmbot test",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
    )
    #: Flood control: edits to one chat closer together than this get 429 (0 = off).
    min_edit_interval: float = 0.0
    base_url: str = ""
    #: Every error the fake answered: (method, status, description).
    errors: list[tuple[str, int, str]] = field(default_factory=list)
    drafts: list[dict[str, Any]] = field(default_factory=list)
    photos_received: list[bytes] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] | None = None
    webhook_deliveries: list[tuple[int, int]] = field(default_factory=list)  # (update_id, status)
    chats: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    topics: dict[int, set[int]] = field(default_factory=dict)
    callback_queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Unconfirmed updates, oldest first.
    pending: list[dict[str, Any]] = field(default_factory=list)
    #: Every offset a getUpdates call confirmed up to (update ids below it are gone).
    confirmed: list[int] = field(default_factory=list)
    _update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _message_ids: dict[int, itertools.count[int]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _poller: int = 0
    _allowed: list[str] | None = None
    _last_edit: dict[int, float] = field(default_factory=dict)
    _injected: list[_Injected] = field(default_factory=list)
    _webhook_task: asyncio.Task[None] | None = None
    #: Methods answered with a redirect to themselves (the client gives up: TooManyRedirects).
    redirect_loop: set[str] = field(default_factory=set)
    #: Calls held unanswered (see hold_next), by method; the next matching calls wait here.
    held: list[dict[str, Any]] = field(default_factory=list)
    _hold: dict[str, int] = field(default_factory=dict)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    #: Longest sides of the photo sizes push_photo makes (add 2560 for HD photos).
    photo_sides: tuple[int, ...] = PHOTO_SIDES
    #: getFile refuses larger files ("file is too big"), as the cloud Bot API does.
    download_limit: int = DOWNLOAD_LIMIT
    #: Files by file_id.
    files: dict[str, StoredFile] = field(default_factory=dict)
    #: file_id of every file downloaded from /file/bot<token>/..., in order.
    downloads: list[str] = field(default_factory=list)
    #: A server started with ``--local``: getFile writes the file under this folder (as
    #: ``<dir>/<token>/<kind>/file_N.ext``) and answers its absolute path, with no 20 MB limit;
    #: nothing is served over HTTP. None: the cloud Bot API's behaviour.
    local_dir: Path | None = None
    #: The --dir the local server names in file paths, when the bot sees ``local_dir`` under
    #: another path (a container's mount); None: ``local_dir`` itself.
    local_name: Path | None = None
    _served: dict[str, StoredFile] = field(default_factory=dict)  # file_path -> file, by getFile
    _file_numbers: itertools.count[int] = field(default_factory=itertools.count)
    _media_groups: itertools.count[int] = field(
        default_factory=lambda: itertools.count(13_960_000_000_000_001)
    )

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def start(self) -> None:
        app = web.Application(client_max_size=20 * 1024 * 1024)  # photos up to 10 MB
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self.base_url = await self.serve(app)

    async def stop(self) -> None:
        self._released.set()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
        await super().stop()

    # --- for tests: people, chats and updates ---

    @staticmethod
    def user(
        user_id: int, first_name: str = "Alice", username: str | None = None
    ) -> dict[str, Any]:
        u: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            u["username"] = username
        return u

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if "username" in user:
            chat["username"] = user["username"]
        self.chats[chat["id"]] = chat
        return chat

    def group(self, chat_id: int, title: str = "Team", forum: bool = False) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        self.chats[chat_id] = chat
        return chat

    def create_topic(self, chat: dict[str, Any], name: str, creator: dict[str, Any]) -> int:
        """A forum topic; its id is the id of the service message that created it."""
        msg = self._store(chat, creator, forum_topic_created={"name": name, "icon_color": 7322096})
        thread = int(msg["message_id"])
        msg["message_thread_id"] = thread
        msg["is_topic_message"] = True
        self.topics.setdefault(chat["id"], set()).add(thread)
        return thread

    def push_text(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        text: str,
        *,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A user's text message (with the entities Telegram would detect) as a new update."""
        return self.push_message(
            chat, user, thread_id=thread_id, reply_to=reply_to, text=text,
            entities=detect_entities(text), **fields,
        )  # fmt: skip

    def push_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        *,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Any message (sticker=..., voice=..., document=..., photo=[...]) as a new update.

        ``user`` None: a message sent on behalf of a chat (pass ``sender_chat=...``), as a
        channel or an anonymous admin posts in a group. As the Bot API documents, ``from`` then
        "contains a fake sender user in non-channel chats": see :func:`stand_in_sender`."""
        fields = {k: v for k, v in fields.items() if v not in (None, [])}
        if user is None and "sender_chat" in fields and chat.get("type") != "channel":
            user = stand_in_sender(chat, fields["sender_chat"], fields)
        if thread_id is not None:
            fields |= {"message_thread_id": thread_id, "is_topic_message": True}
            if reply_to is None:
                # Telegram's quirk: a topic message "replies" to the topic's service message.
                reply_to = self.messages[chat["id"]][thread_id]
        if reply_to is not None:
            fields["reply_to_message"] = _shallow(reply_to)
        msg = self._store(chat, user, **fields)
        self.push_update("message", msg)
        return msg

    def push_callback(self, user: dict[str, Any], message: dict[str, Any], data: str) -> str:
        query_id = f"cb{next(self._update_ids)}"
        query = {
            "id": query_id,
            "from": user,
            "message": message,
            "chat_instance": str(message["chat"]["id"]),
            "data": data,
        }
        self.callback_queries[query_id] = {"query": query, "answer": None}
        self.push_update("callback_query", query)
        return query_id

    def push_stopped(
        self, chat: dict[str, Any], draft_id: int, thread_id: int | None = None
    ) -> None:
        event: dict[str, Any] = {"chat": chat, "draft_id": draft_id}
        if thread_id is not None:
            event["message_thread_id"] = thread_id
        self.push_update("stopped_message_generation", event)

    def add_file(
        self, data: bytes, *, kind: str = "documents", extension: str = "", size: int | None = None
    ) -> StoredFile:
        """Register ``data`` as a file (kind: photos, documents, stickers, thumbnails).

        ``size`` claims a size other than ``len(data)``: a 2 GB video without holding 2 GB."""
        number = next(self._file_numbers)
        digest = hashlib.sha256(data).digest()
        unique = base64.urlsafe_b64encode(hashlib.sha256(kind.encode() + digest).digest())
        numbered = base64.urlsafe_b64encode(hashlib.sha256(b"%d|" % number + digest).digest())
        stored = StoredFile(
            file_id=FILE_ID_PREFIXES.get(kind, "BQACAgIAAxkBAAI") + numbered.decode()[:40],
            # The same bytes keep one file_unique_id, as on Telegram.
            file_unique_id="AQAD" + unique.decode()[:12],
            file_path=f"{kind}/file_{number}" + (f".{extension}" if extension else ""),
            data=data,
            file_size=len(data) if size is None else size,
        )
        self.files[stored.file_id] = stored
        return stored

    def photo_sizes(self, image: bytes) -> list[dict[str, Any]]:
        """The PhotoSize array Telegram makes of a picture: JPEGs, smallest first."""
        picture = _open_picture(image)
        top = min(max(picture.size), max(self.photo_sides))
        sizes = []
        for side in [s for s in self.photo_sides if s < top] + [top]:
            data, width, height = _scaled(picture, side)
            sizes.append(
                self.add_file(data, kind="photos", extension="jpg").photo_size(width, height)
            )
        return sizes

    def push_photo(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        image: bytes,
        *,
        caption: str | None = None,
        media_group_id: str | None = None,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A photo as Telegram delivers it (sizes made from ``image``, ValueError if it is not a
        picture); ``caption`` with the entities Telegram would detect."""
        return self.push_message(
            chat, user, thread_id=thread_id, reply_to=reply_to, photo=self.photo_sizes(image),
            media_group_id=media_group_id, **_caption_fields(caption), **fields,
        )  # fmt: skip

    def push_album(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        images: list[bytes],
        caption: str | None = None,
        *,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        media_group_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Several photos sent together: one update each, sharing a ``media_group_id``; only the
        first carries the caption, as Telegram delivers albums."""
        group = media_group_id or str(next(self._media_groups))
        sent = []
        for i, image in enumerate(images):
            sent.append(
                self.push_photo(
                    chat,
                    user,
                    image,
                    caption=caption if i == 0 else None,
                    media_group_id=group,
                    thread_id=thread_id,
                    reply_to=reply_to,
                )
            )
        return sent

    def push_document(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        data: bytes,
        *,
        mime_type: str,
        file_name: str,
        caption: str | None = None,
        media_group_id: str | None = None,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        size: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A file sent "as file": ``document`` as sent (no recompression), with a JPEG
        ``thumbnail`` when ``data`` is a picture. ``size`` claims a larger file_size."""
        extension = file_name.rpartition(".")[2] if "." in file_name else ""
        stored = self.add_file(data, kind="documents", extension=extension, size=size)
        document: dict[str, Any] = {
            "file_name": file_name,
            "mime_type": mime_type,
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
        }
        with contextlib.suppress(ValueError):
            thumb, width, height = _scaled(_open_picture(data), 320)
            document["thumbnail"] = self.add_file(
                thumb, kind="thumbnails", extension="jpg"
            ).photo_size(width, height)
        return self.push_message(
            chat, user, thread_id=thread_id, reply_to=reply_to, document=document,
            media_group_id=media_group_id, **_caption_fields(caption), **fields,
        )  # fmt: skip

    def push_sticker(
        self,
        chat: dict[str, Any],
        user: dict[str, Any] | None,
        *,
        emoji: str = "👍",
        set_name: str = "FmbotTestStickers",
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A static sticker: a 512x512 WebP, as regular stickers are."""
        picture = Image.new("RGB", (512, 512), (250, 200, 40))
        data, _, _ = _scaled(picture, 512, "WEBP")
        stored = self.add_file(data, kind="stickers", extension="webp")
        thumb, width, height = _scaled(picture, 128, "WEBP")
        sticker = {
            **stored.photo_size(512, 512),
            "type": "regular",
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "set_name": set_name,
            "thumbnail": self.add_file(thumb, kind="thumbnails", extension="webp").photo_size(
                width, height
            ),
        }
        return self.push_message(
            chat, user, thread_id=thread_id, reply_to=reply_to, sticker=sticker, **fields
        )

    def push_update(self, kind: str, payload: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        self.pending.append({"update_id": update_id, kind: payload})
        self._changed.set()
        return update_id

    # --- for tests: what the bot did ---

    def calls(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every call to ``method``, in order."""
        return [r.body for r in self.requests if r.path.endswith("/" + method)]

    def recorded(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/" + method)]

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat as they look now (after edits), oldest first."""
        return [
            m
            for _, m in sorted(self.messages.get(chat_id, {}).items())
            if m.get("from", {}).get("id") == self.bot_user["id"]
        ]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (re-checked whenever a request arrives)."""
        async with asyncio.timeout(within):
            while not predicate():
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.05)

    def fail_next(
        self,
        method: str,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        times: int = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (matching ``when``) with this error."""
        self._injected.append(_Injected(method, status, description, retry_after, times, when))

    def fail_download(self, status: int = 500, *, cut: bool = False, times: int = 1) -> None:
        """Make the next ``times`` file downloads (``GET /file/bot<token>/...``) fail: answer
        ``status`` (404: the file_path expired; 500: the server failed) or, with ``cut``, send
        half the file and drop the connection. getFile itself still answers (see fail_next)."""
        description = {404: "Not Found", 502: "Bad Gateway"}.get(status, "Internal Server Error")
        fault = Fault("cut") if cut else Fault("status", status=status, message=description)
        self.inject(fault, times=times)  # only downloads take faults here (_download)

    def hold_next(self, method: str, times: int = 1) -> None:
        """Leave the next ``times`` calls of ``method`` unanswered and not carried out (a network
        that stalls): they are recorded in ``held`` and fail with 502 when the server stops."""
        self._hold[method.lower()] = self._hold.get(method.lower(), 0) + times

    def too_many_requests(self, method: str, retry_after: int, times: int = 1) -> None:
        self.fail_next(
            method, 429, f"Too Many Requests: retry after {retry_after}",
            retry_after=retry_after, times=times,
        )  # fmt: skip

    # --- plumbing ---

    def error_response(
        self,
        request: web.Request,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return self._error(request.match_info.get("method", "?"), ApiError(status, message))

    def _error(self, method: str, exc: ApiError) -> web.Response:
        self.errors.append((method, exc.status, exc.description))
        body: dict[str, Any] = {
            "ok": False,
            "error_code": exc.status,
            "description": exc.description,
        }
        if exc.retry_after is not None:
            body["parameters"] = {"retry_after": exc.retry_after}
        return web.json_response(body, status=exc.status)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        params, files = await _read_params(request)
        request[PARAMS], request[FILES] = params, files
        self._record(request, params)
        return await handler(request)

    def _take_injected(self, method: str, params: dict[str, Any]) -> ApiError | None:
        for item in self._injected:
            if item.method.lower() == method.lower() and (item.when is None or item.when(params)):
                item.times -= 1
                if item.times <= 0:
                    self._injected.remove(item)
                return ApiError(item.status, item.description, item.retry_after)
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method in self.redirect_loop:
            raise web.HTTPFound(str(request.url))
        if request.match_info["token"] != self.token:
            return self._error(method, ApiError(401, "Unauthorized"))
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return self._error(method, ApiError(404, "Not Found"))
        params: dict[str, Any] = request[PARAMS]
        if self._hold.get(method.lower()):
            self._hold[method.lower()] -= 1
            self.held.append(params)
            self._arrived.set()
            await self._released.wait()
            return self._error(method, ApiError(502, "Bad Gateway"))
        try:
            injected = self._take_injected(method, params)
            if injected is not None:
                raise injected
            result = await handler(params, request[FILES])
        except ApiError as exc:
            return self._error(method, exc)
        except (KeyError, TypeError, ValueError) as exc:
            return self._error(method, _bad(f"invalid parameters: {exc}"))
        return web.json_response({"ok": True, "result": result})

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        if chat_id is None:
            raise _bad("chat_id is empty")
        chat = self.chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise _bad("chat not found")
        return chat

    def _store(
        self, chat: dict[str, Any], sender: dict[str, Any] | None, **fields: Any
    ) -> dict[str, Any]:
        ids = self._message_ids.setdefault(chat["id"], itertools.count(1))
        msg = {
            "message_id": next(ids),
            **({"from": sender} if sender is not None else {}),
            "chat": chat,
            "date": int(time.time()),
            **fields,
        }
        self.messages.setdefault(chat["id"], {})[msg["message_id"]] = msg
        return msg

    def _thread(self, chat: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        thread = params.get("message_thread_id")
        if thread is None:
            return {}
        if thread not in self.topics.get(chat["id"], set()):
            raise _bad("message thread not found")
        return {"message_thread_id": thread, "is_topic_message": True}

    def _reply(self, chat: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        reply = params.get("reply_parameters")
        if not reply:
            return {}
        target = self.messages.get(chat["id"], {}).get(reply.get("message_id"))
        if target is None:
            if reply.get("allow_sending_without_reply"):
                return {}
            raise _bad("message to be replied not found")
        return {"reply_to_message": _shallow(target)}

    def _text_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _bad("message text is empty")
        shown = parse_text(text, params.get("parse_mode"), params.get("entities"))
        if utf16_len(shown) > TEXT_LIMIT:
            raise _bad("message is too long")
        if not shown.strip():
            raise _bad("message text is empty")
        entities = params.get("entities") if not params.get("parse_mode") else None
        return trim(shown, entities or [])

    # --- methods ---

    async def _m_getme(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self.bot_user

    async def _m_logout(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return True

    async def _m_close(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return True

    async def _m_setmycommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("commands must be an array of at most 100 BotCommand")
        for c in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(c.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(c.get("description", ""))) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands = commands
        return True

    async def _m_getmycommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self.commands

    async def _m_deletewebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.webhook = None
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            self._webhook_task = None
        if params.get("drop_pending_updates"):
            self.pending.clear()
        return True

    async def _m_setwebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        url = params.get("url")
        if not url:
            return await self._m_deletewebhook(params, files)
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise _bad("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self.pending.clear()
        self.webhook = {"url": url, "secret_token": secret}
        self._allowed = params.get("allowed_updates") or self._allowed
        if self._webhook_task is None:
            self._webhook_task = asyncio.create_task(self._deliver_webhook())
        return True

    async def _m_getwebhookinfo(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }

    async def _m_getupdates(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = min(max(float(params.get("timeout") or 0), 0.0), 50.0)
        if params.get("allowed_updates") is not None:
            self._allowed = params["allowed_updates"] or None
        if isinstance(offset, int) and offset > 0:
            self.confirmed.append(offset)
            self.pending = [u for u in self.pending if u["update_id"] >= offset]
        elif isinstance(offset, int) and offset < 0:
            self.pending = self.pending[offset:]
        self._poller += 1
        me = self._poller
        deadline = time.monotonic() + timeout
        while True:
            if self._poller != me:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )
            self._drop_unwanted()
            if self.pending or time.monotonic() >= deadline:
                return self.pending[:limit]
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())

    def _drop_unwanted(self) -> None:
        if self._allowed:
            self.pending = [u for u in self.pending if any(kind in u for kind in self._allowed)]

    async def _deliver_webhook(self) -> None:
        async with aiohttp.ClientSession() as session:
            while self.webhook is not None:
                self._drop_unwanted()
                if not self.pending:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)
                    continue
                update = self.pending[0]
                headers = {}
                if self.webhook.get("secret_token"):
                    headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
                try:
                    async with session.post(self.webhook["url"], json=update, headers=headers) as r:
                        status = r.status
                except aiohttp.ClientError:
                    status = 0
                self.webhook_deliveries.append((update["update_id"], status))
                if 200 <= status < 300:
                    self.pending.remove(update)
                else:
                    await asyncio.sleep(0.2)  # Telegram retries with backoff

    async def _m_sendmessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        fields = self._text_fields(params)
        if params.get("reply_markup"):
            fields["reply_markup"] = params["reply_markup"]
        return self._store(
            chat, self.bot_user, **self._thread(chat, params), **self._reply(chat, params), **fields
        )

    async def _m_sendmessagedraft(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        if chat["type"] != "private":
            raise _bad("method is available only for private chats")
        if not params.get("draft_id"):
            raise _bad("draft_id must be non-zero")
        text = params.get("text") or ""
        shown = parse_text(text, params.get("parse_mode"), params.get("entities")) if text else ""
        if utf16_len(shown) > TEXT_LIMIT:
            raise _bad("text is too long")
        self.drafts.append(
            {
                "chat_id": chat["id"],
                "draft_id": params["draft_id"],
                "text": shown,
                "message_thread_id": params.get("message_thread_id"),
                "can_stop": bool(params.get("can_stop")),
                "at": time.monotonic(),
            }
        )
        return True

    async def _m_editmessagetext(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        msg = self.messages.get(chat["id"], {}).get(int(params.get("message_id") or 0))
        if msg is None or msg["from"]["id"] != self.bot_user["id"] or "text" not in msg:
            raise _bad("message to edit not found")
        fields = self._text_fields(params)
        markup = params.get("reply_markup")
        if (
            fields["text"] == msg["text"]
            and fields.get("entities") == msg.get("entities")
            and markup == msg.get("reply_markup")
        ):
            raise ApiError(400, NOT_MODIFIED)
        if self.min_edit_interval:
            now = time.monotonic()
            wait = self._last_edit.get(chat["id"], 0.0) + self.min_edit_interval - now
            if wait > 0:
                retry = max(1, round(wait))
                raise ApiError(429, f"Too Many Requests: retry after {retry}", retry)
            self._last_edit[chat["id"]] = now
        msg.pop("entities", None)
        msg.pop("reply_markup", None)
        msg.update(fields, edit_date=int(time.time()))
        if markup:
            msg["reply_markup"] = markup
        return msg

    async def _m_sendphoto(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        photo = params.get("photo")
        if not isinstance(photo, str) or not photo:
            raise _bad("there is no photo in the request")
        data = files.get(photo.removeprefix("attach://")) if photo.startswith("attach://") else b""
        if data is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        if len(data) > 10 * 1024 * 1024:
            raise ApiError(413, "Request Entity Too Large")
        fields: dict[str, Any] = {
            "photo": [
                {
                    "file_id": f"photo{len(data)}-{chat['id']}",
                    "file_unique_id": f"u{len(data)}",
                    "width": 320,
                    "height": 320,
                    "file_size": len(data),
                }
            ]
        }
        caption = params.get("caption")
        if caption:
            shown = parse_text(caption, params.get("parse_mode"), params.get("caption_entities"))
            if utf16_len(shown) > CAPTION_LIMIT:
                raise _bad("message caption is too long")
            fields["caption"] = shown
        self.photos_received.append(data)
        return self._store(
            chat, self.bot_user, **self._thread(chat, params), **self._reply(chat, params), **fields
        )

    async def _m_sendchataction(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._thread(chat, params)
        return True

    async def _m_answercallbackquery(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        entry = self.callback_queries.get(str(params.get("callback_query_id")))
        if entry is None:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        entry["answer"] = params
        return True

    async def _m_getfile(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        # Messages as telegram-bot-api's Client.cpp words them.
        file_id = params.get("file_id")
        if not file_id:
            raise _bad("file_id not specified")
        stored = self.files.get(str(file_id))
        if stored is None:
            raise _bad("invalid file_id")
        file_path = stored.file_path
        if self.local_dir is not None:
            # The server downloads the file to its disk and names it there.
            relative = Path(self.token, stored.file_path)
            on_disk = self.local_dir / relative
            on_disk.parent.mkdir(parents=True, exist_ok=True)
            on_disk.write_bytes(stored.data)
            file_path = str((self.local_name or self.local_dir) / relative)
        elif stored.file_size > self.download_limit:
            raise _bad("file is too big")
        else:
            self._served[stored.file_path] = stored  # the file is on the server from now on
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": file_path,
        }

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """GET /file/bot<token>/<file_path>: only paths a getFile has handed out."""
        stored = self._served.get(request.match_info["path"])
        if request.match_info["token"] != self.token or stored is None:
            return self._file_error(404, "Not Found")
        fault = self._take_fault(request.path)  # see fail_download
        if fault is not None and fault.kind == "status":
            return self._file_error(fault.status, fault.message)
        if fault is not None and fault.kind == "cut":
            # Content-Length promises the whole file; half of it comes, then the connection ends.
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(stored.data)
            await response.prepare(request)
            await response.write(stored.data[: len(stored.data) // 2])
            await self.cut(request, response, fault)
            return response
        self.downloads.append(stored.file_id)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _file_error(self, status: int, description: str) -> web.Response:
        self.errors.append(("download", status, description))
        body = {"ok": False, "error_code": status, "description": description}
        return web.json_response(body, status=status)

    async def _m_deletemessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        if self.messages.get(chat["id"], {}).pop(int(params.get("message_id") or 0), None) is None:
            raise _bad("message to delete not found")
        return True


NOT_FOUND_PAGE = "<html><head><title>404 Not Found</title></head><body>Not Found</body></html>"


@dataclass
class NotBotApi(FakeServer):
    """An ordinary web server, not a Bot API one (a mistyped TELEGRAM_API_URL): every path is
    a 404 HTML page."""

    base_url: str = ""

    async def __aenter__(self) -> NotBotApi:
        await self.start()
        return self

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._not_found)
        self.base_url = await self.serve(app)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")


def trim(text: str, entities: list[dict[str, Any]]) -> dict[str, Any]:
    """Text and entities as Telegram stores them: outer whitespace removed, entities moved."""
    lead = utf16_len(text) - utf16_len(text.lstrip())
    shown = text.strip()
    size = utf16_len(shown)
    kept = []
    for e in entities:
        start, end = max(e["offset"] - lead, 0), min(e["offset"] + e["length"] - lead, size)
        if end > start:
            kept.append({**e, "offset": start, "length": end - start})
    return {"text": shown, "entities": kept} if kept else {"text": shown}


#: The placeholder users Telegram puts in ``from`` of messages sent on behalf of a chat.
GROUP_ANONYMOUS_BOT = {
    "id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot",
}  # fmt: skip
CHANNEL_BOT = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}
SERVICE_USER = {"id": 777000, "is_bot": False, "first_name": "Telegram"}


def stand_in_sender(
    chat: dict[str, Any], sender_chat: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    """``from`` of a message with ``sender_chat`` in a group: GroupAnonymousBot for an anonymous
    admin (the group itself), "Telegram" for a linked channel's automatic forward, Channel_Bot
    for a post on behalf of a channel. The same user for every chat."""
    if sender_chat["id"] == chat["id"]:
        return dict(GROUP_ANONYMOUS_BOT)
    if fields.get("is_automatic_forward"):
        return dict(SERVICE_USER)
    return dict(CHANNEL_BOT)


def _caption_fields(caption: str | None) -> dict[str, Any]:
    """A user's caption and the entities Telegram detects in it (mentions live here)."""
    if caption is None:
        return {}
    if utf16_len(caption) > CAPTION_LIMIT:
        raise ValueError("Telegram's apps do not send captions over 1024 characters")
    return {"caption": caption, "caption_entities": detect_entities(caption)}


def _shallow(msg: dict[str, Any]) -> dict[str, Any]:
    """A message as it appears inside another (Telegram does not nest replies deeper)."""
    return {k: v for k, v in msg.items() if k != "reply_to_message"}


def detect_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram adds to a user's text: a leading /command and @mentions."""
    found: list[dict[str, Any]] = []
    for m in re.finditer(
        r"(?:^/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?)|(?<![\w@])@[A-Za-z0-9_]{5,32}", text
    ):
        kind = "bot_command" if m.group().startswith("/") else "mention"
        found.append(
            {
                "type": kind,
                "offset": utf16_len(text[: m.start()]),
                "length": utf16_len(m.group()),
            }
        )
    return found


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Form, multipart or JSON parameters, decoded the way the Bot API types them."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    ctype = request.content_type
    if ctype == "application/json":
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        return (body if isinstance(body, dict) else {}), files
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # GET with a query string works on the real server too.
        items: list[tuple[str, Any]] = list(request.query.items())
    else:
        items = list((await request.post()).items())
        items += list(request.query.items())
    for key, value in items:
        if isinstance(value, web.FileField):
            files[key] = value.file.read()
            continue
        if key in JSON_FIELDS:
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value  # e.g. chat_id="@channelusername"
        else:
            params[key] = value
    return params, files
