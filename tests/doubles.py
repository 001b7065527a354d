"""Test doubles that implement the public TextModel interface (no patching of fmbot code)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from bot.errors import ModelError
from bot.events import Message, Usage
from bot.models.base import Chunk, GenerationOptions, TextModel


class Recording(TextModel):
    """Wraps a real model and records every request it receives."""

    def __init__(self, inner: TextModel) -> None:
        self.inner = inner
        self.name = inner.name
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
        async for chunk in self.inner.generate(messages, options):
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
