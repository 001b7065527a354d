"""Replies kept on disk so an unchanged evaluation sends no model request.

The key holds the model (its spec without ``mode``: stream, sync and async give the same
replies), every rendered message (role and text), the generation options and, for repeats
after the first, the repeat number (each repeat is a sample of its own). A reply is written only
once the model finished it: errors and cancelled replies are never kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from bot.batch.model import model_identity
from bot.events import Message, Usage
from bot.models.base import Chunk, GenerationOptions, TextModel


def cache_key(
    model: str, messages: Sequence[Message], options: GenerationOptions, salt: str
) -> str:
    blob = json.dumps(
        {
            "model": model_identity(model),
            "messages": [[m.role, m.text] for m in messages],
            "options": options.model_dump(mode="json"),
            "salt": salt,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class CachedModel(TextModel):
    """``inner`` behind the cache in ``directory``."""

    def __init__(self, inner: TextModel, directory: Path, salt: str = "") -> None:
        self.inner = inner
        self.name = inner.name
        self.picture_tokens = inner.picture_tokens
        # Where knowledge passages go depends on it (see build_messages): as the inner model.
        self.reuses_prompt_prefix = inner.reuses_prompt_prefix
        self.directory = directory
        self.salt = salt

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    async def count_tokens(self, messages: Sequence[Message]) -> int:
        return await self.inner.count_tokens(messages)

    def waiting(self) -> int:
        return self.inner.waiting()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def _read(self, key: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not cached, or a damaged entry: ask the model
        return data if isinstance(data, dict) and isinstance(data.get("reply"), str) else None

    def _write(self, key: str, reply: str, usage: Usage | None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of this thread's own: the same reply may be written by two at once (equal
        # cases, or a stopped web evaluation's thread finishing beside the next one's).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = {
            "model": self.name,
            "reply": reply,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
        }
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)  # readers see a whole entry or none

    async def generate(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Chunk]:
        key = cache_key(self.name, messages, options, self.salt)
        hit = await asyncio.to_thread(self._read, key)
        if hit is not None:
            yield str(hit["reply"])
            inp, out = hit.get("input_tokens"), hit.get("output_tokens")
            if isinstance(inp, int) and isinstance(out, int):
                yield Usage(inp, out)
            return
        response = self.inner.respond(messages, options)
        # Closed when our consumer stops early, so the backend stops generating too.
        async with contextlib.aclosing(aiter(response)) as deltas:
            async for delta in deltas:
                yield delta
        if response.usage is not None:
            yield response.usage
        with contextlib.suppress(OSError):  # unwritable: costs a request next time, no more
            await asyncio.to_thread(self._write, key, response.text, response.usage)

    async def aclose(self) -> None:
        pass  # the registry owns and closes the inner model
