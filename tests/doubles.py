"""Test doubles that implement the public TextModel interface (no patching of fmbot code)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

from bot.errors import ModelError, StoreError
from bot.events import Message, Usage
from bot.models.base import Chunk, GenerationOptions, TextModel
from bot.stores.base import Turn
from bot.stores.memory import MemoryStore


class Recording(TextModel):
    """Wraps a real model and records every request it receives."""

    def __init__(self, inner: TextModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.reuses_prompt_prefix = inner.reuses_prompt_prefix
        self.requests: list[list[Message]] = []

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return await self.inner.count_tokens(messages)

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        self.requests.append(list(messages))
        async with contextlib.aclosing(self.inner.generate(messages, options)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk


class Scripted(TextModel):
    """Yields the given chunks with a pause between them, then optionally fails."""

    name = "scripted"

    def __init__(
        self, chunks: Sequence[str], fail: ModelError | None = None, pause: float = 0.0
    ) -> None:
        self.chunks = chunks
        self.fail = fail
        self.pause = pause
        self.closed = False

    @property
    def context_window(self) -> int:
        return 4096

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.text.split()) + 4 for m in messages)

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        try:
            for chunk in self.chunks:
                await asyncio.sleep(self.pause)
                yield chunk
            if self.fail is not None:
                raise self.fail
            yield Usage(10, len(self.chunks))
        finally:
            self.closed = True


class FailingAppends(MemoryStore):
    """A store whose writes fail, as when Redis goes away after a reply was generated."""

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        raise StoreError("connection refused")
