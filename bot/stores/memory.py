"""In-process store (``memory://``) for tests and throwaway sessions; nothing survives restarts."""

from __future__ import annotations

import time
from collections.abc import Mapping

from bot.stores.base import ChatInfo, DialogStore, Turn


class MemoryStore(DialogStore):
    def __init__(self) -> None:
        self._turns: dict[str, list[Turn]] = {}
        self._state: dict[str, dict[str, str]] = {}
        self._updated: dict[str, float] = {}

    def _touch(self, chat: str) -> None:
        self._updated[chat] = time.time()

    def _expire(self) -> None:
        if self.ttl is None:
            return
        cutoff = time.time() - self.ttl
        for chat in [c for c, t in self._updated.items() if t < cutoff]:
            self._turns.pop(chat, None)
            self._state.pop(chat, None)
            del self._updated[chat]

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        self._expire()
        if counters:
            await self.increment(chat, **counters)
        stored = self._turns.setdefault(chat, [])
        stored.extend(turns)
        if self.max_turns is not None and len(stored) > self.max_turns:
            del stored[: len(stored) - self.max_turns]
        self._touch(chat)

    async def read(self, chat: str, last: int | None = None) -> list[Turn]:
        self._expire()
        turns = self._turns.get(chat, [])
        return list(turns[-last:] if last else turns)

    async def reset(self, chat: str) -> None:
        self._turns.pop(chat, None)
        self._touch(chat)

    async def delete(self, chat: str) -> None:
        self._turns.pop(chat, None)
        self._state.pop(chat, None)
        self._updated.pop(chat, None)

    async def chats(self) -> list[ChatInfo]:
        self._expire()
        infos = [ChatInfo(c, len(self._turns.get(c, [])), t) for c, t in self._updated.items()]
        return sorted(infos, key=lambda i: i.updated_at, reverse=True)

    async def get_state(self, chat: str) -> dict[str, str]:
        self._expire()
        return dict(self._state.get(chat, {}))

    async def set_state(self, chat: str, **values: str) -> None:
        self._state.setdefault(chat, {}).update(values)
        self._touch(chat)

    async def increment(self, chat: str, **amounts: int) -> None:
        state = self._state.setdefault(chat, {})
        for key, amount in amounts.items():
            state[key] = str(int(state.get(key, "0")) + amount)
        self._touch(chat)
