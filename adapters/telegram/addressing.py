"""In groups the bot answers only what is meant for it: a mention, a reply to one of its
messages, ``/cmd@thisbot``, or one of its own commands without a suffix (a bare ``/cmd`` it does
not know belongs to another bot in the group, as does ``/cmd@otherbot``)."""

from __future__ import annotations

import re

from aiogram.enums import MessageEntityType
from aiogram.types import Message, User

from adapters.telegram.commands import KNOWN
from bot.text import clean


def addressed(message: Message, me: User) -> bool:
    name = (me.username or "").lower()
    replied = message.reply_to_message
    # In forum topics every message "replies" to the topic's creation message: not to us.
    if (
        replied is not None
        and replied.forum_topic_created is None
        and replied.from_user is not None
        and replied.from_user.id == me.id
    ):
        return True
    # A forged update can carry a lone surrogate ("\ud800" in its JSON), which aiogram's
    # UTF-16 entity offsets cannot encode; U+FFFD takes the same one UTF-16 unit.
    text = clean(message.text or message.caption or "")
    for entity in message.entities or message.caption_entities or []:
        value = entity.extract_from(text)
        if entity.type == MessageEntityType.MENTION and value[1:].lower() == name:
            return True
        if (
            entity.type == MessageEntityType.TEXT_MENTION
            and entity.user
            and entity.user.id == me.id
        ):
            return True
        if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
            command, _, target = value[1:].partition("@")
            if target:
                return target.lower() == name
            if command.lower() in KNOWN:
                return True
            # Another bot's bare /command: ours only if it also mentions us.
    return False


def strip_mention(text: str, me: User) -> str:
    """The text without ``@botname`` (the manager should not see how we were called)."""
    if not me.username:
        return text.strip()
    pattern = rf"(?<![\w/])@{re.escape(me.username)}\b"
    return re.sub(r"[ \t]{2,}", " ", re.sub(pattern, "", text, flags=re.IGNORECASE)).strip()
