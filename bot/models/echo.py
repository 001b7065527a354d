"""``echo:``: an instant text model for benchmarks and multi-process tests.

It answers ``echo: <last user text>`` at once, so a benchmark measures fmbot (dialog manager,
store, queue) rather than a model, and a test across processes gets replies it can check. It
implements the whole :class:`~bot.models.base.TextModel` contract: it streams, reports a
:class:`~bot.events.Usage`, counts tokens (whitespace words plus a per-message overhead, so
history trimming works) and stops when closed early.

Spec: ``echo:`` or ``echo:?delay=0.5&chunks=3`` — wait ``delay`` seconds before the reply (a
slow model: lets a test kill a worker mid-turn) and stream it in ``chunks`` pieces.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from bot.events import Message, Usage
from bot.model_spec import parse_echo_spec
from bot.models.base import Chunk, GenerationOptions, TextModel

MESSAGE_OVERHEAD = 4  # tokens each message costs beyond its words (role markers), as chat formats


class EchoModel(TextModel):
    def __init__(
        self,
        *,
        delay: float = 0.0,
        chunks: int = 1,
        context_window: int = 4096,
        name: str = "echo:",
    ) -> None:
        self.name = name
        self.delay = delay
        self.chunks = max(1, chunks)
        self._context_window = context_window

    @classmethod
    def from_spec(cls, spec: str, *, context_window: int = 4096) -> EchoModel:
        delay, chunks = parse_echo_spec(spec)
        return cls(delay=delay, chunks=chunks, context_window=context_window, name=spec)

    @property
    def context_window(self) -> int:
        return self._context_window

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m.text.split()) + MESSAGE_OVERHEAD for m in messages)

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        last = next((m.text for m in reversed(messages) if m.role == "user"), "")
        reply = f"echo: {last}"
        if options.max_tokens is not None:
            reply = " ".join(reply.split(" ")[: options.max_tokens])
        if self.delay:
            await asyncio.sleep(self.delay)
        size = -(-len(reply) // self.chunks)  # ceiling division: at most ``chunks`` pieces
        for start in range(0, len(reply), size):
            yield reply[start : start + size]
        yield Usage(await self.count_tokens(messages), len(reply.split()))
