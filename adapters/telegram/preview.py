"""What the user sees of one reply while it is generated, then its final delivery.

Private chats get ``sendMessageDraft`` previews (one draft_id per reply, with a stop button);
elsewhere, or when drafts are refused, a first message is sent and then edited. Previews are
plain text at most once per interval per chat, never an unchanged edit, and are skipped (not
waited for) after a 429. The final text is always delivered in full with formatting: drafts are
only a preview, so it goes out with sendMessage; in edit mode it replaces the preview message,
and parts beyond the first 4096 characters follow as new messages.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.methods import SendMessageDraft

from adapters.telegram.formatting import markdown_parts
from adapters.telegram.outbox import Outbox, reply_parameters
from adapters.telegram.splitting import TEXT_LIMIT, Part, tail, truncate
from adapters.telegram.target import Target
from adapters.telegram.throttle import Throttle

log = logging.getLogger(__name__)


class ReplyPreview:
    def __init__(
        self,
        bot: Bot,
        outbox: Outbox,
        throttle: Throttle,
        target: Target,
        *,
        interval: float,
        draft_id: int | None,
        drafts_refused: Callable[[int], None],
    ) -> None:
        self.bot = bot
        self.outbox = outbox
        self.throttle = throttle
        self.target = target
        self.interval = interval
        #: Non-zero while previews are drafts; None in edit mode.
        self.draft_id = draft_id
        self._drafts_refused = drafts_refused
        self.message_id: int | None = None  # the preview message (edit mode)
        self._shown = ""  # its text as last sent

    async def update(self, text: str) -> None:
        """Show ``text`` (the reply so far) if the chat's pace allows; never waits."""
        chat = self.target.chat_id
        if not text.strip() or not self.throttle.ready(chat):
            return
        try:
            if self.draft_id is not None and await self._draft(text):
                self.throttle.used(chat, self.interval)
                return
            await self._edit(text)
        except TelegramRetryAfter as exc:
            self.throttle.back_off(chat, exc.retry_after)
        except TelegramAPIError as exc:  # a lost preview is harmless; the final text is not
            log.info("preview update failed in chat %s: %s", chat, exc.message)
            self.throttle.used(chat, self.interval)

    async def _draft(self, text: str) -> bool:
        """Send a draft; False (and edit mode from now on) if the chat does not take drafts."""
        assert self.draft_id is not None
        try:
            await self.bot(
                SendMessageDraft(
                    chat_id=self.target.chat_id,
                    message_thread_id=self.target.thread_id,
                    draft_id=self.draft_id,
                    # The newest text matters most in a preview that is too long.
                    text=tail(text.strip(), TEXT_LIMIT),
                    parse_mode=None,
                    can_stop=True,
                )
            )
        except (TelegramBadRequest, TelegramNotFound) as exc:
            chat = self.target.chat_id
            log.info("no drafts in chat %s (%s); editing a message instead", chat, exc.message)
            self.draft_id = None
            self._drafts_refused(self.target.chat_id)
            return False
        return True

    async def _edit(self, text: str) -> None:
        preview = truncate(text.strip(), TEXT_LIMIT)
        if preview == self._shown:
            return  # Telegram answers an unchanged edit with 400 "message is not modified"
        chat = self.target.chat_id
        if self.message_id is None:
            message = await self.bot.send_message(
                chat_id=chat,
                message_thread_id=self.target.thread_id,
                text=preview,
                parse_mode=None,
                reply_parameters=reply_parameters(self.target),
            )
            self.message_id = message.message_id
        else:
            await self.bot.edit_message_text(
                chat_id=chat, message_id=self.message_id, text=preview, parse_mode=None
            )
        self._shown = preview
        self.throttle.used(chat, self.interval)

    async def finish(self, markdown: str) -> None:
        """Deliver the complete reply, formatted and split into as many messages as needed."""
        parts = markdown_parts(markdown) or [Part("…")]
        target = self.target
        if self.message_id is not None:
            first = parts[0]
            unchanged = not first.entities and first.text.strip() == self._shown
            # Edits share the chat's pace; the final one waits its turn rather than risk a 429.
            await self.throttle.wait(target.chat_id)
            if unchanged or await self.outbox.edit(target, self.message_id, first):
                parts = parts[1:]
            self.throttle.used(target.chat_id, self.interval)
            target = dataclasses.replace(target, reply_to=None)
        for part in parts:
            await self.outbox.send(target, part)
            target = dataclasses.replace(target, reply_to=None)  # only the first part quotes
