"""``fmbot kb bench``: retrieval latency on synthetic vectors, query embedding time, indexing
throughput. Figures for the README; every number is measured here, none assumed."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.kb.documents import Chunk
from bot.kb.embedders import Embedder
from bot.kb.index import KnowledgeBase

DIMENSION = 384  # multilingual-e5-small's
TOP_K = 4  # a template's default knowledge_top_k
INSERT_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    samples: int


async def _timed(calls: int, call: Callable[[int], Awaitable[object]]) -> Latency:
    seconds = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return Latency(
        p50_ms=1000 * seconds[len(seconds) // 2],
        p99_ms=1000 * seconds[min(len(seconds) - 1, math.ceil(0.99 * len(seconds)) - 1)],
        samples=len(seconds),
    )


def _unit_vectors(rng: np.random.Generator, n: int) -> list[list[float]]:
    vectors = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows: list[list[float]] = vectors.tolist()
    return rows


async def retrieval(chunks: int, queries: int, seed: int = 0) -> Latency:
    """Search latency in a knowledge base of ``chunks`` random unit vectors (the query
    embedding excluded), as a bot reads it: read-only, through the async API."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fmbot-kb-bench-") as folder:
        directory = Path(folder)
        writer = await KnowledgeBase.open(directory, "bench", create=True)
        try:
            for start in range(0, chunks, INSERT_BATCH):
                size = min(INSERT_BATCH, chunks - start)
                texts = [Chunk("Synthetic", f"chunk {start + i}") for i in range(size)]
                await writer.store_vectors(
                    f"batch-{start}",
                    texts,
                    _unit_vectors(rng, size),
                    embedder="synthetic",
                    dimension=DIMENSION,
                )
        finally:
            await writer.aclose()
        reader = await KnowledgeBase.open(directory, "bench", readonly=True)
        probes = _unit_vectors(rng, queries + 5)
        try:
            for probe in probes[:5]:  # warm: the first reads map the file
                await reader.search(probe, TOP_K)
            return await _timed(queries, lambda i: reader.search(probes[5 + i], TOP_K))
        finally:
            await reader.aclose()


QUESTIONS = (
    "How long is the warranty?",
    "Сколько дней идёт доставка?",
    "Can I return an item after a month?",
    "Как оплатить заказ картой?",
)


async def query_embedding(embedder: Embedder, queries: int) -> Latency:
    await embedder.embed_query("warm up")  # loading the model is not a query's cost
    return await _timed(
        queries, lambda i: embedder.embed_query(f"{QUESTIONS[i % len(QUESTIONS)]} {i}")
    )


def _document(paragraphs: int) -> str:
    lines = []
    for i in range(paragraphs):
        if i % 5 == 0:
            lines.append(f"## Section {i // 5}\n")
        lines.append(
            f"Paragraph {i} explains one policy of the shop: orders, delivery times, returns, "
            f"refunds and the warranty for item {i}, with the steps a customer takes and what "
            "support answers when something goes wrong on the way.\n"
        )
    return "# Handbook\n\n" + "\n".join(lines)


async def indexing(embedder: Embedder, paragraphs: int) -> tuple[int, float]:
    """(chunks, chunks per second) of ``fmbot kb add`` on a generated Markdown handbook: read,
    chunk, embed, store."""
    with tempfile.TemporaryDirectory(prefix="fmbot-kb-bench-") as folder:
        directory = Path(folder)
        doc = directory / "handbook.md"
        doc.write_text(_document(paragraphs), encoding="utf-8")
        kb = await KnowledgeBase.open(directory / "kb", "bench", create=True)
        try:
            summary = await kb.add([doc], embedder)
        finally:
            await kb.aclose()
    return summary.chunks, summary.chunks / summary.seconds


def parse_sizes(text: str) -> Sequence[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(text)
    return sizes
