"""Where a reply goes, and which conversation a Telegram message belongs to.

History is kept per chat (``tg:{chat_id}``), and per forum topic when the chat has topics
(``tg:{chat_id}:{message_thread_id}``); replies go back to the same topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.enums import ChatType
from aiogram.types import Chat, Message


@dataclass(frozen=True, slots=True)
class Target:
    chat_id: int
    thread_id: int | None = None
    private: bool = True
    #: The user's message a group reply answers (None in private chats: no need to quote).
    reply_to: int | None = None

    @property
    def key(self) -> str:
        """The dialog manager's chat key."""
        if self.thread_id is not None:
            return f"tg:{self.chat_id}:{self.thread_id}"
        return f"tg:{self.chat_id}"

    @classmethod
    def of(cls, message: Message) -> Target:
        # message_thread_id alone also marks reply chains in ordinary groups; only a topic
        # message (is_topic_message) belongs to a separate conversation.
        thread = message.message_thread_id if message.is_topic_message else None
        private = message.chat.type == ChatType.PRIVATE
        return cls(message.chat.id, thread, private, None if private else message.message_id)

    @classmethod
    def of_chat(cls, chat: Chat, thread_id: int | None) -> Target:
        return cls(chat.id, thread_id, chat.type == ChatType.PRIVATE)
