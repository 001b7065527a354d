"""``similar``: the cosine similarity of the reply and the assertion's ``value``, embedded by the
configured embedder (FMBOT_EMBED_MODEL), must reach ``threshold`` (default 0.8).

Both texts are embedded as queries: e5's advice for symmetric tasks (``query:`` on both sides),
and for Yandex the same model on both sides. Vectors are cached on disk like replies (see
:class:`CachedEmbedder`), so an unchanged suite sends no embedding request the second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from bot.errors import FmbotError
from bot.eval.assertions import SIMILAR_THRESHOLD, Assertion, Outcome
from bot.kb.embedders import Embedder, Vector


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


class SimilarJudge:
    """Grades ``similar`` assertions with ``embedder``."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    async def __call__(self, assertion: Assertion, reply: str) -> Outcome:
        needed = SIMILAR_THRESHOLD if assertion.threshold is None else assertion.threshold
        if not reply.strip():
            return Outcome(False, 0.0, "an empty reply")
        try:
            expected = await self.embedder.embed_query(str(assertion.value))
            got = await self.embedder.embed_query(reply)
        except FmbotError as exc:
            return Outcome(False, 0.0, f"the embedder failed: {exc}", error=True)
        similarity = cosine(expected, got)
        passed = similarity >= needed
        verdict = "≥" if passed else "<"
        reason = f"similarity {similarity:.3f} {verdict} {needed:g} ({self.embedder.name})"
        return Outcome(passed, min(1.0, max(0.0, similarity)), reason)


class CachedEmbedder(Embedder):
    """``inner``'s query vectors kept in ``directory`` (and in memory), keyed by the embedder's
    spec and the text. Documents are not cached: an evaluation embeds only queries."""

    def __init__(self, inner: Embedder, directory: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.directory = directory
        #: Vectors by key, in flight or done: a text is embedded once however many ask at once.
        self._vectors: dict[str, asyncio.Task[Vector]] = {}

    def _path(self, text: str) -> Path:
        blob = json.dumps({"embedder": self.name, "query": text}, ensure_ascii=False)
        key = hashlib.sha256(blob.encode()).hexdigest()
        return self.directory / key[:2] / f"{key}.json"

    def _read(self, path: Path) -> Vector | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not cached, or a damaged entry: ask the embedder
        vector = data.get("vector") if isinstance(data, dict) else None
        if not isinstance(vector, list) or not vector:
            return None
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
            return None
        return [float(x) for x in vector]

    def _write(self, path: Path, vector: Vector) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # This thread's own name: a stopped web evaluation's thread may still write beside
        # the next evaluation's.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"embedder": self.name, "vector": vector}), encoding="utf-8")
        os.replace(tmp, path)  # readers see a whole entry or none

    async def _fetch(self, path: Path, text: str) -> Vector:
        vector = await asyncio.to_thread(self._read, path)
        if vector is None:
            vector = await self.inner.embed_query(text)
            with contextlib.suppress(OSError):  # unwritable: costs a request next time, no more
                await asyncio.to_thread(self._write, path, vector)
        return vector

    async def embed_query(self, text: str) -> Vector:
        path = self._path(text)
        task = self._vectors.get(path.name)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._fetch(path, text))  # failures are asked again
            self._vectors[path.name] = task
        # Shielded: one waiter cancelled does not cancel the others' vector.
        return await asyncio.shield(task)

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await self.inner.embed_documents(texts)

    async def dimension(self) -> int:
        return await self.inner.dimension()

    async def aclose(self) -> None:
        for task in self._vectors.values():
            task.cancel()
        await asyncio.gather(*self._vectors.values(), return_exceptions=True)
        self._vectors.clear()
        await self.inner.aclose()
