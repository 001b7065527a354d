"""The dialog store: each chat's turns and its small state (chosen template), behind one async ABC.

Implementations (memory, SQLite, Redis) pass one contract suite, ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message of a conversation."""

    role: Role
    text: str
    created_at: float = field(default_factory=time.time)
    #: Extra facts about the turn (token usage, template used); JSON-serialisable values only.
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatInfo:
    chat: str
    turns: int
    updated_at: float


class DialogStore(abc.ABC):
    """Async storage of conversations keyed by chat id.

    Retention is set by :func:`bot.stores.open_store` from FMBOT_HISTORY_TURNS / FMBOT_HISTORY_TTL.
    """

    #: Keep at most this many turns (messages: an exchange is two) per chat; the oldest are
    #: dropped on append. None: keep all.
    max_turns: int | None = None
    #: Forget a chat (turns and state) this many seconds after its last update. None: never.
    ttl: float | None = None

    @abc.abstractmethod
    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        """Append ``turns`` to the chat atomically (all or none, in order).

        ``counters`` are added to integer counters in the chat's state in the same write.
        """

    @abc.abstractmethod
    async def read(self, chat: str, last: int | None = None) -> list[Turn]:
        """The chat's turns, oldest first; only the newest ``last`` when given."""

    @abc.abstractmethod
    async def reset(self, chat: str) -> None:
        """Start a fresh conversation: drop the turns, keep the chat's state (e.g. its mode)."""

    @abc.abstractmethod
    async def delete(self, chat: str) -> None:
        """Forget everything stored about the chat."""

    def kept_after_delete(self) -> str:
        """What :meth:`delete` keeps about the chat, and for how long (``/forget`` says it)."""
        return ""

    @abc.abstractmethod
    async def chats(self) -> list[ChatInfo]:
        """Chats that have turns or state, most recently updated first."""

    async def load(self, chat: str, last: int | None = None) -> tuple[dict[str, str], list[Turn]]:
        """The chat's state and its newest ``last`` turns (one round trip where the store can)."""
        return await self.get_state(chat), await self.read(chat, last)

    @abc.abstractmethod
    async def get_state(self, chat: str) -> dict[str, str]:
        """The chat's small key/value state (empty when none)."""

    @abc.abstractmethod
    async def set_state(self, chat: str, **values: str) -> None:
        """Merge ``values`` into the chat's state."""

    @abc.abstractmethod
    async def increment(self, chat: str, **amounts: int) -> None:
        """Add ``amounts`` to integer counters in the chat's state, atomically."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close connections. Default: nothing to close."""
