"""Who may talk to the bot: TELEGRAM_ALLOWED_USERS and TELEGRAM_ADMINS.

An empty allow-list means the bot is open to everyone. Admins are always allowed; in groups,
commands that change everybody's conversation (/new, /forget, switching /mode) need an admin
when TELEGRAM_ADMINS is set.

A message sent on behalf of a chat (an anonymous group admin, a channel posting in a group, a
linked channel's automatic forward) has ``sender_chat``, and its ``from`` is a placeholder
shared by every such chat (GroupAnonymousBot, Channel_Bot, Telegram): it names no user, so it
is never on a list. Limits count it under the sender chat instead (:class:`Sender`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.types import Message, User

from adapters.telegram.settings import TelegramSettings

REFUSAL = (
    "Sorry, this bot is private and you are not on its list of users. "
    "Please ask its owner for access."
)
ADMINS_ONLY = "Only the bot's admins can do that in a group."


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message: ``user`` for the access lists (None: sent on behalf of a chat) and
    ``label``, the identity the manager's rate limits and token budgets count."""

    user: User | None
    label: str | None

    @classmethod
    def of(cls, message: Message) -> Sender:
        if message.sender_chat is not None:
            # Chat ids are negative, user ids positive: "tg:-100..." is never a person's.
            return cls(None, f"tg:{message.sender_chat.id}")
        user = message.from_user
        return cls(user, f"tg:{user.id}" if user is not None else None)


@dataclass(frozen=True, slots=True)
class UserSet:
    ids: frozenset[int]
    names: frozenset[str]  # lower case, without "@"

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> UserSet:
        ids = frozenset(int(e) for e in entries if e.isdigit())
        names = frozenset(e.lstrip("@").lower() for e in entries if not e.isdigit())
        return cls(ids, names)

    def __bool__(self) -> bool:
        return bool(self.ids or self.names)

    def __contains__(self, user: object) -> bool:
        if not isinstance(user, User):
            return False
        # Usernames can change hands, ids cannot; both are accepted because owners know names.
        return user.id in self.ids or (user.username or "").lower() in self.names


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allowed: UserSet
    admins: UserSet

    @classmethod
    def from_settings(cls, settings: TelegramSettings) -> AccessPolicy:
        return cls(UserSet.parse(settings.allowed_users), UserSet.parse(settings.admins))

    def allows(self, user: User | None) -> bool:
        """``user`` None: a message sent on behalf of a chat (see the module docstring); only
        an open bot answers it."""
        return not self.allowed or user in self.allowed or user in self.admins

    def is_admin(self, user: User | None) -> bool:
        """Admins are also exempt from the manager's rate limits and token budgets."""
        return user in self.admins

    def may_change_shared(self, user: User | None, private: bool) -> bool:
        """May ``user`` reset or reconfigure this chat's conversation?"""
        return private or not self.admins or user in self.admins
