"""The interface every model backend implements.

A text backend is a class with one generator method, :meth:`TextModel.generate`, that yields text
chunks (and optionally one :class:`~bot.events.Usage`). Callers use :meth:`TextModel.respond`,
which wraps that generator in a :class:`Response` that can be iterated for deltas or awaited for
the whole text, like ``llm``'s response objects.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.events import Message, Usage
from bot.text import clean


class GenerationOptions(BaseModel):
    """Per-request generation options; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)

    def merged(self, override: GenerationOptions | None) -> GenerationOptions:
        """Options from ``override`` where set, else ours."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))


Chunk = str | Usage


class TextModel(abc.ABC):
    """A text generation backend."""

    #: Spec the model was created from, e.g. ``local:smollm2``; shown to users.
    name: str
    #: What one picture costs of the context window, for fitting history around it: a fixed
    #: estimate, as services count pictures by their own rules (Gemma 3: 256 tokens;
    #: Qwen2.5-VL: ~2,300 at 1568×1176; GPT-4o: ~1,100).
    picture_tokens: int = 1500
    #: The model keeps the previous prompt's computed state and reuses its common prefix (the
    #: local one): what changes every turn (retrieved passages) belongs after that prefix.
    reuses_prompt_prefix: bool = False

    @property
    @abc.abstractmethod
    def context_window(self) -> int:
        """How many tokens (input plus output) one request may use."""

    @abc.abstractmethod
    def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        """Yield the reply as text chunks as they are produced, and at most one Usage.

        Raise :class:`~bot.errors.ModelError` subclasses only. Closing the iterator early
        (cancellation) must stop generation and release resources.
        """

    @abc.abstractmethod
    async def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens ``messages`` take as a prompt, counted by the model's own tokenizer."""

    def waiting(self) -> int:
        """Replies this model must finish before it can start a new one (a model that answers
        one at a time, like the embedded one, queues the rest). Default: none."""
        return 0

    def respond(self, messages: Sequence[Message], options: GenerationOptions) -> Response:
        return Response(self.generate(messages, options))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or memory. Default: nothing to release."""


class Response:
    """One model reply: ``async for delta in response`` or ``text = await response``."""

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self._chunks = chunks
        self._parts: list[str] = []
        self._done = False
        self.usage: Usage | None = None
        #: ``time.perf_counter()`` when the first text arrived (metrics: time to first token).
        self.first_at: float | None = None

    @property
    def text(self) -> str:
        """Text received so far (the whole reply once iteration finished)."""
        return "".join(self._parts)

    @property
    def done(self) -> bool:
        return self._done

    async def __aiter__(self) -> AsyncGenerator[str, None]:
        # ``async for`` does not close an iterator it leaves early: callers that may stop
        # before the end use ``contextlib.aclosing(aiter(response))``.
        try:
            async for chunk in self._chunks:
                if isinstance(chunk, Usage):
                    self.usage = chunk
                elif chunk:
                    chunk = clean(chunk)  # a JSON "\ud800" escape decodes to a lone surrogate
                    if not self._parts:
                        self.first_at = time.perf_counter()
                    self._parts.append(chunk)
                    yield chunk
            self._done = True
        finally:
            # Closing the backend's generator stops generation (cancellation, early exit).
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _collect(self) -> str:
        async for _ in self:
            pass
        return self.text

    def __await__(self) -> Generator[Any, None, str]:
        return self._collect().__await__()


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    mime_type: str


class ImageModel(abc.ABC):
    """An image generation backend."""

    name: str

    @abc.abstractmethod
    async def generate_image(self, prompt: str) -> GeneratedImage:
        """Generate one image for ``prompt``; raise ModelError subclasses only."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to release."""
