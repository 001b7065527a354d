"""Retrieval: a query embedded once, searched in one or more knowledge bases, best passages
first. A process keeps its knowledge bases open (read-only) and its embedder loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.kb.embedders import Embedder, create_embedder
from bot.kb.index import Hit, KnowledgeBase

if TYPE_CHECKING:
    from bot.settings import Settings


class Retriever:
    def __init__(self, directory: Path, embedder: Embedder) -> None:
        self.directory = directory
        self.embedder = embedder
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = asyncio.Lock()

    async def _kb(self, name: str) -> KnowledgeBase:
        async with self._lock:
            kb = self._open.get(name)
            if kb is None:
                kb = await KnowledgeBase.open(self.directory, name, readonly=True)
                self._open[name] = kb
            return kb

    async def search(
        self,
        names: Sequence[str],
        query: str,
        k: int,
        min_score: float | None = None,
        *,
        exact: bool = False,
    ) -> list[Hit]:
        """The ``k`` best passages of the knowledge bases ``names`` for ``query``, scored at
        least ``min_score``. KnowledgeError for an unknown base or one of another embedder
        (checked before the query is embedded). ``exact``: one search in SQLite rather than
        reading every vector into memory first (a command's single search)."""
        kbs = [await self._kb(name) for name in names]
        for kb in kbs:
            await kb.check_embedder(self.embedder)
        vector = await self.embedder.embed_query(query)
        for kb in kbs:
            await kb.check_embedder(self.embedder, len(vector))
        found = await asyncio.gather(
            *(kb.search_exact(vector, k) if exact else kb.search(vector, k) for kb in kbs)
        )
        hits = [hit for each in found for hit in each]
        hits.sort(key=lambda h: h.score, reverse=True)
        floor = min_score if min_score is not None else -1.0
        return [h for h in hits if h.score >= floor][:k]

    async def aclose(self) -> None:
        async with self._lock:
            kbs = list(self._open.values())
            self._open.clear()
        for kb in kbs:
            await kb.aclose()
        await self.embedder.aclose()


async def search_kbs(settings: Settings, names: Sequence[str], query: str, k: int) -> list[Hit]:
    """One search with the configured embedder (``fmbot kb search``)."""
    retriever = Retriever(settings.knowledge_dir, create_embedder(settings))
    try:
        return await retriever.search(names, query, k, exact=True)
    finally:
        await retriever.aclose()
