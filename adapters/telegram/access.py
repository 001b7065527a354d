"""Who may talk to the bot: TELEGRAM_ALLOWED_USERS and TELEGRAM_ADMINS.

An empty allow-list means the bot is open to everyone. Admins are always allowed; in groups,
commands that change everybody's conversation (/new, /forget, switching /mode) need an admin
when TELEGRAM_ADMINS is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.types import User

from adapters.telegram.settings import TelegramSettings

REFUSAL = (
    "Sorry, this bot is private and you are not on its list of users. "
    "Please ask its owner for access."
)
ADMINS_ONLY = "Only the bot's admins can do that in a group."


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
        """``user`` None: a message sent on behalf of a chat (a channel, an anonymous admin),
        which has ``sender_chat`` instead of ``from``; only an open bot can attribute it."""
        return not self.allowed or user in self.allowed or user in self.admins

    def is_admin(self, user: User | None) -> bool:
        """Admins are also exempt from the manager's rate limits and token budgets."""
        return user in self.admins

    def may_change_shared(self, user: User | None, private: bool) -> bool:
        """May ``user`` reset or reconfigure this chat's conversation?"""
        return private or not self.admins or user in self.admins
