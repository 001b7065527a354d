"""``fmbot kb bench``: retrieval latency on synthetic vectors and the recall of its prefilter
(on synthetic and real vectors), query embedding time, indexing throughput. Figures for the
README; every number is measured here, none assumed."""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.kb import bench_corpus, vectors
from bot.kb.bench_corpus import Passage, Question
from bot.kb.documents import Chunk
from bot.kb.embedders import Embedder
from bot.kb.index import KnowledgeBase, sqlite_module
from bot.kb.vectors import FloatArray

DIMENSION = 384  # multilingual-e5-small's
TOP_K = 4  # a template's default knowledge_top_k
INSERT_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float
    samples: int
    #: The process's CPU time per call (median): the work itself. On a machine busy with other
    #: work the wall-clock p99 also holds the waits for a core.
    cpu_ms: float = 0.0


async def _timed(calls: int, call: Callable[[int], Awaitable[object]]) -> Latency:
    seconds = []
    cpu = []
    for i in range(calls):
        started, cpu_started = time.perf_counter(), time.process_time()
        await call(i)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    seconds.sort()
    cpu.sort()
    return Latency(
        p50_ms=1000 * seconds[len(seconds) // 2],
        p99_ms=1000 * seconds[min(len(seconds) - 1, math.ceil(0.99 * len(seconds)) - 1)],
        samples=len(seconds),
        cpu_ms=1000 * cpu[len(cpu) // 2],
    )


def _unit_vectors(rng: np.random.Generator, n: int) -> list[list[float]]:
    vectors = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows: list[list[float]] = vectors.tolist()
    return rows


@dataclass(frozen=True, slots=True)
class Retrieval:
    chunks: int
    latency: Latency  # searches as a bot runs them
    candidates: int  # vectors the bits kept for exact scoring; 0: every vector compared
    recall: float  # of the k found, the share the exact scan finds too
    exact: Latency | None  # the exact scan, when the search is not one
    load_s: float  # the first search: reading the vectors into memory


async def retrieval(chunks: int, queries: int, seed: int = 0) -> Retrieval:
    """Search latency in a knowledge base of ``chunks`` random unit vectors (the query
    embedding excluded), as a bot reads it: read-only, through the async API; and the recall
    of its bit prefilter against every vector compared."""
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
            started = time.perf_counter()
            await reader.search(probes[0], TOP_K)  # reads the vectors into memory
            load_s = time.perf_counter() - started
            for probe in probes[1:5]:
                await reader.search(probe, TOP_K)
            found: list[list[int]] = []

            async def search(i: int) -> None:
                found.append([h.chunk_id for h in await reader.search(probes[5 + i], TOP_K)])

            latency = await _timed(queries, search)
            candidates = 0 if chunks <= vectors.EXACT_UP_TO else default_candidates(chunks)
            if not candidates:
                return Retrieval(chunks, latency, 0, 1.0, None, load_s)
            truth: list[list[int]] = []

            async def exact(i: int) -> None:
                hits = await reader.search(probes[5 + i], TOP_K, candidates=0)
                truth.append([h.chunk_id for h in hits])

            exact_latency = await _timed(queries, exact)
            recall = _recall(found, truth)
            return Retrieval(chunks, latency, candidates, recall, exact_latency, load_s)
        finally:
            await reader.aclose()


def default_candidates(chunks: int) -> int:
    return vectors.default_candidates(chunks, TOP_K)


def _recall(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> float:
    shared = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return shared / max(1, sum(len(t) for t in truth))


#: Shares of the vectors the bits keep in :func:`real_recall`.
REAL_SHARES = (0.05, 0.1, 0.2)


@dataclass(frozen=True, slots=True)
class RealRecall:
    passages: int
    questions: int
    candidates: tuple[int, ...]  # the bits keep these many passages (REAL_SHARES of them)
    recall: tuple[float, ...]  # on the embedder's vectors of the shop's passages
    random_recall: tuple[float, ...]  # on random vectors of the same number, same candidates


def real_recall(passages: FloatArray, questions: FloatArray, seed: int = 0) -> RealRecall:
    """Recall@k of the bit prefilter against the exact scan on real vectors and on random
    vectors of the same size, keeping REAL_SHARES of them. A few hundred vectors are too few
    to keep the share used at 100,000 chunks (it would keep hardly more than k): the
    comparison with random vectors, whose recall at 100,000 chunks the latency lines show,
    is what carries over."""
    n = passages.shape[0]
    candidates = tuple(max(TOP_K, math.ceil(n * share)) for share in REAL_SHARES)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(passages.shape).astype(np.float32)
    probes = rng.standard_normal(questions.shape).astype(np.float32)
    return RealRecall(
        passages=n,
        questions=questions.shape[0],
        candidates=candidates,
        recall=tuple(_bits_recall(passages, questions, c) for c in candidates),
        random_recall=tuple(_bits_recall(noise, probes, c) for c in candidates),
    )


def _bits_recall(rows: FloatArray, queries: FloatArray, candidates: int) -> float:
    snapshot = vectors.of_rows(rows)
    found = [snapshot.search(q, TOP_K, candidates)[0].tolist() for q in queries]
    truth = [snapshot.search(q, TOP_K, 0)[0].tolist() for q in queries]
    return _recall(found, truth)


@dataclass(frozen=True, slots=True)
class Corpus:
    passages: list[Passage]
    vectors: FloatArray  # one row a passage
    questions: list[Question]
    query_vectors: FloatArray


async def embed_corpus(embedder: Embedder, questions: int) -> Corpus:
    """The shop's passages (bot/kb/bench_corpus.py) and its first ``questions`` questions,
    embedded as ``fmbot kb add`` and a turn would."""
    passages = bench_corpus.passages()
    asked = list(bench_corpus.QUESTIONS[:questions])
    texts = [Chunk(p.heading, p.text).embedded_text for p in passages]
    rows = await embedder.embed_documents(texts)
    queries = [await embedder.embed_query(q.text) for q in asked]
    return Corpus(passages, np.asarray(rows, np.float32), asked, np.asarray(queries, np.float32))


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


#: Reciprocal rank fusion's constant (Cormack et al. 2009): a hit's share is 1 / (RRF_K + rank).
RRF_K = 60
FUSED_DEPTH = 20  # hits of each ranking fused


@dataclass(frozen=True, slots=True)
class HybridRecall:
    """Recall@k on the labelled questions, by kind: (questions, vectors only, hybrid)."""

    kinds: dict[str, tuple[int, float, float]]


def hybrid_recall(corpus: Corpus) -> HybridRecall:
    """Would keyword search (SQLite FTS5, bm25) fused with the vectors by reciprocal rank
    fusion find more of the relevant passages than the vectors alone? Measured on the shop's
    labelled questions; recall@k is the share of a question's relevant passages (at most k)
    in its first k."""
    db = sqlite_module().connect(":memory:")
    try:
        db.execute(
            "CREATE VIRTUAL TABLE passages USING fts5(heading, text, "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        db.executemany(
            "INSERT INTO passages(rowid, heading, text) VALUES (?, ?, ?)",
            [(i, p.heading, p.text) for i, p in enumerate(corpus.passages)],
        )
        snapshot = vectors.of_rows(corpus.vectors)
        keys = [p.key for p in corpus.passages]
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for question, query in zip(corpus.questions, corpus.query_vectors, strict=True):
            by_vector = snapshot.search(query, FUSED_DEPTH, 0)[0].tolist()
            by_words = _keyword_ranking(db, question.text)
            fused = _fuse([by_vector, by_words])
            pair = (
                _relevant_share(by_vector, keys, question.relevant),
                _relevant_share(fused, keys, question.relevant),
            )
            by_kind.setdefault(question.kind, []).append(pair)
    finally:
        db.close()
    by_kind["all"] = [pair for pairs in list(by_kind.values()) for pair in pairs]
    return HybridRecall(
        {
            kind: (
                len(pairs),
                float(np.mean([p[0] for p in pairs])),
                float(np.mean([p[1] for p in pairs])),
            )
            for kind, pairs in by_kind.items()
        }
    )


def _keyword_ranking(db: Any, text: str) -> list[int]:
    """bm25's ranking of the passages for any of the question's words."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return []
    match = " OR ".join(f'"{word}"' for word in words)
    rows = db.execute(
        "SELECT rowid FROM passages WHERE passages MATCH ? ORDER BY bm25(passages) LIMIT ?",
        (match, FUSED_DEPTH),
    ).fetchall()
    return [int(row[0]) for row in rows]


def _fuse(rankings: Sequence[Sequence[int]]) -> list[int]:
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, 1):
            score[row] = score.get(row, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(score, key=lambda row: -score[row])


def _relevant_share(ranking: Sequence[int], keys: Sequence[str], relevant: frozenset[str]) -> float:
    found = {keys[row] for row in ranking[:TOP_K]}
    return len(found & relevant) / min(TOP_K, len(relevant))
