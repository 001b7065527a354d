"""Per-chat isolation: one turn of one chat at a time, chats independent of each other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class ChatLocks:
    """``async with locks(chat):`` serialises work per chat; idle locks are freed."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, chat: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(chat, asyncio.Lock())
        self._users[chat] = self._users.get(chat, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[chat] -= 1
            if not self._users[chat]:
                # Nobody holds or waits for it: drop it so memory stays bounded by active chats.
                del self._users[chat]
                del self._locks[chat]

    def __len__(self) -> int:
        return len(self._locks)
