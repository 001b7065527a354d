"""Keeping a chat action ("typing", "upload_photo") visible while the user waits.

An action shows for at most 5 s, so it is repeated. This is a small stand-in for aiogram's
``ChatActionSender``, whose worker task dies unobserved when one sendChatAction fails (a 429,
a network hiccup); here a failed action is skipped and the reply carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter

from adapters.telegram.target import Target

log = logging.getLogger(__name__)

REPEAT_EVERY = 4.5  # seconds; Telegram clears an action after 5 s or when a message arrives


class ChatAction:
    def __init__(self, bot: Bot, target: Target, action: str) -> None:
        self.bot = bot
        self.target = target
        self.action = action
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChatAction:
        self._task = asyncio.create_task(self._repeat())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _repeat(self) -> None:
        while True:
            delay = REPEAT_EVERY
            try:
                await self.bot.send_chat_action(
                    chat_id=self.target.chat_id,
                    message_thread_id=self.target.thread_id,
                    action=self.action,
                )
            except TelegramRetryAfter as exc:
                delay = max(delay, exc.retry_after)
            except TelegramAPIError as exc:
                log.debug("chat action failed in chat %s: %s", self.target.chat_id, exc.message)
            await asyncio.sleep(delay)
