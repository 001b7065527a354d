"""Delivering final messages so they are not lost: 429 waits, retries, plain-text fallback.

Previews may be skipped; what this module sends is what the user keeps, so it waits out
``retry_after``, retries network failures a few times, resends a part without entities when
Telegram rejects its formatting, and treats "message is not modified" as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import EditMessageText, SendMessage, SendPhoto
from aiogram.methods.base import TelegramMethod
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, Message, ReplyParameters

from adapters.telegram.formatting import plain_parts
from adapters.telegram.splitting import CAPTION_LIMIT, Part, truncate
from adapters.telegram.target import Target
from adapters.telegram.throttle import Throttle

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 6
#: Failures that may well pass (an outage, flood control): a queued job is run again for them.
#: Any other Telegram error (403 blocked by the user, 400 no right to write in the group, chat
#: not found) would fail every retry the same way.
TRANSIENT = (TelegramNetworkError, TelegramServerError, TelegramRetryAfter)
_EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/gif": "gif"}


def is_entity_error(exc: TelegramBadRequest) -> bool:
    text = exc.message.lower()
    return "can't parse entities" in text or "entity" in text


def is_not_modified(exc: TelegramBadRequest) -> bool:
    return "message is not modified" in exc.message.lower()


def is_gone(exc: TelegramBadRequest) -> bool:
    text = exc.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


@contextlib.contextmanager
def refusal_logged(chat_id: int, what: str) -> Iterator[None]:
    """Around a send whose refusal is final: log one line (without the text) and carry on, so
    a queued job is not retried and buried for it. Transient failures still propagate."""
    try:
        yield
    except TRANSIENT:
        raise
    except TelegramAPIError as exc:
        log.warning("could not send %s in chat %s: %s", what, chat_id, exc.message)


class Outbox:
    def __init__(self, bot: Bot, throttle: Throttle) -> None:
        self.bot = bot
        self.throttle = throttle

    async def send(
        self, target: Target, part: Part, *, markup: InlineKeyboardMarkup | None = None
    ) -> Message:
        def make(p: Part) -> SendMessage:
            return SendMessage(
                chat_id=target.chat_id,
                message_thread_id=target.thread_id,
                text=p.text,
                entities=list(p.entities) or None,
                parse_mode=None,
                reply_parameters=reply_parameters(target),
                reply_markup=markup,
            )

        return await self._deliver(target, part, make)

    async def edit(
        self,
        target: Target,
        message_id: int,
        part: Part,
        *,
        markup: InlineKeyboardMarkup | None = None,
    ) -> bool:
        """Replace a message's text; False if the message is gone (deleted, too old)."""

        def make(p: Part) -> EditMessageText:
            return EditMessageText(
                chat_id=target.chat_id,
                message_id=message_id,
                text=p.text,
                entities=list(p.entities) or None,
                parse_mode=None,
                reply_markup=markup,
            )

        try:
            await self._deliver(target, part, make)
        except TelegramBadRequest as exc:
            if is_not_modified(exc):
                return True
            if is_gone(exc):
                return False
            raise
        return True

    async def send_text(self, target: Target, text: str) -> None:
        """Bot-authored text (notices, command output): plain, split when long."""
        for part in plain_parts(text):
            await self.send(target, part)

    async def send_photo(self, target: Target, data: bytes, mime_type: str, caption: str) -> None:
        ext = _EXTENSIONS.get(mime_type, "jpg")
        photo = BufferedInputFile(data, filename=f"image.{ext}")

        def make(p: Part) -> SendPhoto:
            return SendPhoto(
                chat_id=target.chat_id,
                message_thread_id=target.thread_id,
                photo=photo,
                caption=p.text or None,
                parse_mode=None,
                reply_parameters=reply_parameters(target),
            )

        await self._deliver(target, Part(truncate(caption, CAPTION_LIMIT)), make)

    async def _deliver(
        self, target: Target, part: Part, make: Callable[[Part], TelegramMethod[T]]
    ) -> T:
        current = part
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.bot(make(current))
            except TelegramRetryAfter as exc:
                self.throttle.back_off(target.chat_id, exc.retry_after)
                if attempt >= MAX_ATTEMPTS:
                    raise
                log.info("Telegram asked to wait %s s in chat %s", exc.retry_after, target.chat_id)
                await asyncio.sleep(exc.retry_after)
            except TelegramBadRequest as exc:
                if current.entities and is_entity_error(exc):
                    log.warning(
                        "Telegram rejected formatting (%s); sending plain text", exc.message
                    )
                    current = current.plain
                    continue
                raise
            except (TelegramNetworkError, TelegramServerError) as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise
                delay = min(0.5 * 2**attempt, 10.0)
                log.warning("Telegram call failed (%s); retrying in %.1f s", exc.message, delay)
                await asyncio.sleep(delay)


def reply_parameters(target: Target) -> ReplyParameters | None:
    if target.reply_to is None:
        return None
    # The question may have been deleted meanwhile: answer anyway.
    return ReplyParameters(message_id=target.reply_to, allow_sending_without_reply=True)
