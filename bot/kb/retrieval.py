"""Retrieval: a query embedded once, searched in one or more knowledge bases, best passages
first. A process keeps its knowledge bases open (read-only) and its embedder loaded.

:meth:`Retriever.for_turn` is the one rule for which passages a turn gets (through
``bot.dialog.template_passages``): the bot, ``fmbot batch run`` and ``fmbot eval`` all ask it, so
an evaluation sees what users see.

A bot loads, as it starts, what its templates' knowledge bases need (:meth:`Retriever.preload`),
so that its first user does not wait for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import FmbotError, KnowledgeError
from bot.kb.embedders import Embedder, create_embedder
from bot.kb.index import Hit, KnowledgeBase, kb_file

if TYPE_CHECKING:
    from bot.events import Message
    from bot.settings import Settings

log = logging.getLogger(__name__)

#: A message of at most this many words is a follow-up ("and in Russia?"): the previous
#: question is searched with it, as it names what the follow-up is about.
FOLLOW_UP_WORDS = 3


#: ``[n]``: how a reply cites the passage numbered n.
_CITATION = re.compile(r"\[(\d{1,2})\]")


def cited_numbers(reply: str) -> set[int]:
    """The passage numbers a reply cites as ``[n]``."""
    return {int(n) for n in _CITATION.findall(reply)}


def turn_query(text: str, history: Sequence[Message]) -> str:
    """What a turn searches for: its message, after the previous question for a follow-up."""
    if len(text.split()) > FOLLOW_UP_WORDS:
        return text
    previous = next((m.text for m in reversed(history) if m.role == "user"), "")
    return f"{previous}\n{text}".strip()


def text_digest(text: str) -> str:
    """A short digest of a passage's text: enough to tell it changed, small to store per turn."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hit_records(hits: Sequence[Hit], *, text: bool = True) -> list[dict[str, object]]:
    """The passages a reply was given, numbered, as stored with it: their text, or (``text``
    False) its digest, which tells a chunk id reused by indexing a file again from the same
    passage."""
    return [
        {"n": n, "kb": h.kb, "source": h.source, "heading": h.heading, "chunk": h.chunk_id,
         "score": round(h.score, 4)}
        | ({"text": h.text} if text else {"digest": text_digest(h.text)})
        for n, h in enumerate(hits, 1)
    ]  # fmt: skip


class Retriever:
    def __init__(self, directory: Path, embedder: Embedder) -> None:
        self.directory = directory
        self.embedder = embedder
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = asyncio.Lock()
        self._preload: asyncio.Task[None] | None = None

    def preload(self, names: Iterable[str]) -> None:
        """Start loading, in the background, what searching knowledge bases ``names`` needs:
        their vectors and the embedder. A search meanwhile waits for these same loads (their
        locks) instead of repeating them. A knowledge base that does not exist yet is skipped
        (its turns say so, as without a preload); if none exists, nothing is loaded. A failure
        is logged in one line; the turns that need what failed report it themselves."""
        wanted = sorted(set(names))
        if wanted and self._preload is None:
            self._preload = asyncio.create_task(self._load(wanted), name="knowledge preload")

    async def _load(self, names: list[str]) -> None:
        kbs = []
        for name in names:
            try:
                if not kb_file(self.directory, name).is_file():
                    log.info(
                        "knowledge base %r not loaded at start: there is none in %s yet "
                        "(fmbot kb add %s PATH... builds it)",
                        name,
                        self.directory,
                        name,
                    )
                    continue
                kb = await self._kb(name)
                await kb.check_embedder(self.embedder)
            except FmbotError as exc:
                log.warning("knowledge base %r not loaded at start: %s", name, exc)
                continue
            kbs.append(kb)
        if kbs:
            await asyncio.gather(
                _logged(self.embedder.load(), f"embedder {self.embedder.name}"),
                *(_logged(kb.load_vectors(), f"knowledge base {kb.name!r}") for kb in kbs),
            )

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

    async def for_turn(
        self,
        names: Sequence[str],
        text: str,
        history: Sequence[Message],
        k: int,
        min_score: float | None,
    ) -> tuple[Hit, ...]:
        """The passages a turn gets for message ``text`` from knowledge bases ``names`` (none
        for an empty message)."""
        if not names or not text.strip():
            return ()
        return tuple(await self.search(names, turn_query(text, history), k, min_score))

    async def stored(self, records: Sequence[object]) -> tuple[Hit, ...] | None:
        """The passages a stored reply was given (its ``knowledge`` meta: kb, chunk id and text
        digest per passage), read again from their knowledge bases; None when any of them is
        gone or changed (its file was indexed again: chunk ids are reused, so the digest must
        match; or the knowledge base removed), and for turns stored without digests."""
        wanted: list[tuple[str, int, str, float]] = []
        for item in records:
            if not isinstance(item, dict):
                return None
            kb, chunk, digest = item.get("kb"), item.get("chunk"), item.get("digest")
            score = item.get("score", 0.0)
            if not isinstance(kb, str) or not isinstance(chunk, int) or not isinstance(digest, str):
                return None
            score = float(score) if isinstance(score, int | float) else 0.0
            wanted.append((kb, chunk, digest, score))
        hits = []
        for kb_name, chunk, digest, score in wanted:
            try:
                kb = await self._kb(kb_name)
            except KnowledgeError:
                return None
            found = await kb.chunk(chunk)
            if found is None or text_digest(found.text) != digest:
                return None
            hits.append(Hit(found.source, found.heading, found.text, score, chunk, kb_name))
        return tuple(hits)

    async def aclose(self) -> None:
        if self._preload is not None:
            self._preload.cancel()  # a load in a thread runs on; closing its file waits for it
            await asyncio.wait([self._preload])
        async with self._lock:
            kbs = list(self._open.values())
            self._open.clear()
        for kb in kbs:
            await kb.aclose()
        await self.embedder.aclose()


async def _logged(load: Awaitable[object], what: str) -> None:
    """``load``, its failure logged in one line (the traceback only at debug level)."""
    try:
        await load
    except FmbotError as exc:
        log.warning("%s not loaded at start: %s", what, exc)
    except Exception as exc:
        log.warning("%s not loaded at start: %s: %s", what, type(exc).__name__, exc)
        log.debug("%s not loaded at start", what, exc_info=True)


async def search_kbs(settings: Settings, names: Sequence[str], query: str, k: int) -> list[Hit]:
    """One search with the configured embedder (``fmbot kb search``)."""
    retriever = Retriever(settings.knowledge_dir, create_embedder(settings))
    try:
        return await retriever.search(names, query, k, exact=True)
    finally:
        await retriever.aclose()
