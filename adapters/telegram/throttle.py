"""Pacing of preview updates per chat (Telegram allows ~1 message/s per chat, ~20/min in
groups, and answers 429 with retry_after when a bot goes faster)."""

from __future__ import annotations

import asyncio
import time


class Throttle:
    def __init__(self) -> None:
        self._next: dict[int, float] = {}

    def ready(self, chat_id: int) -> bool:
        return time.monotonic() >= self._next.get(chat_id, 0.0)

    def used(self, chat_id: int, interval: float) -> None:
        """Something was just sent to the chat; the next preview waits ``interval`` seconds."""
        self._push(chat_id, time.monotonic() + interval)

    def back_off(self, chat_id: int, seconds: float) -> None:
        """Telegram said "retry after": nothing more to this chat before then."""
        self._push(chat_id, time.monotonic() + seconds)

    async def wait(self, chat_id: int) -> None:
        delay = self._next.get(chat_id, 0.0) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _push(self, chat_id: int, when: float) -> None:
        self._next[chat_id] = max(self._next.get(chat_id, 0.0), when)
        if len(self._next) > 10_000:  # keep memory bounded by recently active chats
            now = time.monotonic()
            self._next = {c: t for c, t in self._next.items() if t > now}
