"""Searches on the vectors held in memory: the same answers as ``vec0``'s exact scan, the bit
prefilter's recall, updates picked up file by file. Real SQLite + sqlite-vec, the real e5."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from bot.kb import bench_corpus, vectors
from bot.kb.bench import Corpus, _fuse, embed_corpus, hybrid_recall, real_recall
from bot.kb.documents import Chunk
from bot.kb.embedders import LocalE5Embedder
from bot.kb.index import KnowledgeBase

DIM = 384


def _rows(rng: np.random.Generator, n: int) -> list[list[float]]:
    rows: list[list[float]] = rng.standard_normal((n, DIM)).astype(np.float32).tolist()
    return rows


async def _store(kb: KnowledgeBase, source: str, rows: list[list[float]]) -> None:
    chunks = [Chunk("Synthetic", f"{source} {i}") for i in range(len(rows))]
    await kb.store_vectors(source, chunks, rows, embedder="synthetic", dimension=DIM)


async def test_searches_in_memory_find_what_vec0_finds(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    writer = await KnowledgeBase.open(tmp_path, "kb", create=True)
    for part in range(3):
        await _store(writer, f"part{part}", _rows(rng, 700))
    await writer.aclose()
    reader = await KnowledgeBase.open(tmp_path, "kb", readonly=True)
    try:
        for query in _rows(rng, 20):
            memory = await reader.search(query, 5)
            exact = await reader.search_exact(query, 5)
            assert [h.chunk_id for h in memory] == [h.chunk_id for h in exact]
            assert [h.text for h in memory] == [h.text for h in exact]
            assert [h.score for h in memory] == pytest.approx([h.score for h in exact], abs=1e-5)
    finally:
        await reader.aclose()


def test_the_prefilter_returns_exact_scores_and_keeps_near_neighbours() -> None:
    rng = np.random.default_rng(2)
    # Topics: 60 centres with 500 passages each around them, as real documents cluster.
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    rows = np.repeat(centres, 500, axis=0) + 0.9 * rng.standard_normal((30_000, DIM))
    snapshot = vectors.of_rows(np.vstack([rows, rng.standard_normal((1_000, DIM))]))
    assert snapshot.size > vectors.EXACT_UP_TO  # so the bits are used by default
    queries = centres[:20] + 0.9 * rng.standard_normal((20, DIM)).astype(np.float32)
    found = kept = 0
    for query in queries:
        ids, scores = snapshot.search(query, 10)
        exact_ids, _ = snapshot.search(query, 10, candidates=0)
        unit = query / np.linalg.norm(query)
        assert scores == pytest.approx(snapshot.matrix[ids] @ unit, abs=1e-5)  # exact cosines
        assert list(scores) == sorted(scores, reverse=True)
        found += len(set(ids.tolist()) & set(exact_ids.tolist()))
        kept += len(exact_ids)
    assert found / kept >= 0.95
    # Keeping every row is the exact scan.
    ids, _ = snapshot.search(queries[0], 10, candidates=snapshot.size)
    assert ids.tolist() == snapshot.search(queries[0], 10, candidates=0)[0].tolist()


@pytest.fixture(scope="module")
async def corpus() -> Corpus:
    embedder = LocalE5Embedder()
    try:
        return await embed_corpus(embedder, len(bench_corpus.QUESTIONS))
    finally:
        await embedder.aclose()


def test_on_real_e5_vectors_the_bits_keep_the_neighbours_better_than_on_random(
    corpus: Corpus,
) -> None:
    measured = real_recall(corpus.vectors, corpus.query_vectors)
    assert measured.passages == len(bench_corpus.passages()) >= 150
    assert all(r > n for r, n in zip(measured.recall, measured.random_recall, strict=True))
    assert measured.recall[0] >= measured.random_recall[0] + 0.3  # keeping a twentieth
    assert measured.recall[-1] >= 0.95  # keeping a fifth


def test_keyword_search_fused_with_the_vectors_finds_no_more(corpus: Corpus) -> None:
    measured = hybrid_recall(corpus).kinds
    assert list(measured) == ["keyword", "paraphrase", "cross-language", "all"]
    assert [n for n, _, _ in measured.values()] == [20, 20, 8, 48]
    # e5 reads product and error codes well; bm25 on any of a question's words pulls in
    # passages that share only common words. The README says so: keep it true.
    vector_only, hybrid = measured["all"][1:]
    assert vector_only >= hybrid and measured["keyword"][1] >= 0.9


def test_reciprocal_rank_fusion_favours_what_both_rankings_hold() -> None:
    assert _fuse([[1, 2, 3], [3, 4]]) == [3, 1, 2, 4]


async def test_a_reader_picks_up_changed_removed_and_added_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    writer = await KnowledgeBase.open(tmp_path, "kb", create=True)
    reader = await KnowledgeBase.open(tmp_path, "kb", readonly=True)
    try:
        first, last = _rows(rng, 50), _rows(rng, 50)
        await _store(writer, "first", first)
        await _store(writer, "last", last)
        assert (await reader.search(last[7], 1))[0].text == "last 7"
        # Stored again, "last" takes the same chunk ids with other vectors (SQLite reuses the
        # highest rowids): the reader must not keep the old vectors under them.
        again = _rows(rng, 50)
        await _store(writer, "last", again)
        hit = (await reader.search(again[3], 1))[0]
        assert (hit.text, hit.score) == ("last 3", pytest.approx(1.0, abs=1e-5))
        assert (await reader.search(last[7], 1))[0].score < 0.5

        await writer.remove([Path("/stored/first")])
        assert {h.text.split()[0] for h in await reader.search(first[0], 20)} == {"last"}
        await _store(writer, "new", first[:5])
        assert (await reader.search(first[2], 1))[0].text == "new 2"
        assert len(await reader.search(first[2], 100)) == 55
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_searches_of_one_knowledge_base_run_in_parallel(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    writer = await KnowledgeBase.open(tmp_path, "kb", create=True)
    rows = _rows(rng, 400)
    await _store(writer, "base", rows)
    reader = await KnowledgeBase.open(tmp_path, "kb", readonly=True)
    try:
        # A read that holds its connection until released: were reads one at a time, the
        # search below would wait for it, and the timeout would end the test.
        release = threading.Event()
        holding = asyncio.ensure_future(reader._read(lambda: release.wait(30)))
        await asyncio.sleep(0.05)
        async with asyncio.timeout(20):
            hits = await reader.search(rows[9], 1)
        release.set()
        assert await holding
        assert hits[0].text == "base 9"

        # Many at once, beside the writer: each gets the answer it gets alone, before the
        # writer's rows or after them (one transaction: a search sees all of them or none).
        queries = [rows[i] for i in range(0, 400, 25)]
        before = [[h.chunk_id for h in await reader.search(q, 3)] for q in queries]
        async with asyncio.timeout(60):
            _, *together = await asyncio.gather(
                _store(writer, "more", _rows(rng, 300)),
                *(reader.search(q, 3) for q in queries * 4),
            )
        after = [[h.chunk_id for h in await reader.search(q, 3)] for q in queries]
        assert before != after  # the writer's rows come into some answers: the test can tell
        for n, hits in enumerate(together):
            assert [h.chunk_id for h in hits] in (before[n % 16], after[n % 16]), n
        assert all(hits[0].score == pytest.approx(1.0, abs=1e-5) for hits in together)
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_an_index_written_by_the_first_version_reads_as_it_is(tmp_path: Path) -> None:
    """The layout fmbot wrote before searches moved into memory, written here by hand: a
    knowledge base built then must keep answering."""
    import sqlite_vec

    from bot.kb.index import sqlite_module

    rng = np.random.default_rng(5)
    rows = rng.standard_normal((30, DIM)).astype(np.float32)
    db = sqlite_module().connect(str(tmp_path / "old.sqlite"))
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE files (path TEXT PRIMARY KEY, source TEXT NOT NULL, hash TEXT NOT NULL,
            indexed_at REAL NOT NULL);
        CREATE TABLE chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, source TEXT NOT NULL,
            heading TEXT NOT NULL, text TEXT NOT NULL);
        CREATE INDEX chunks_path ON chunks(path);
        INSERT INTO meta VALUES ('embedder', 'synthetic'), ('dimension', '384'), ('schema', '1');
        CREATE VIRTUAL TABLE vectors USING vec0(embedding float[384] distance_metric=cosine);
        INSERT INTO files VALUES ('/docs/a.md', 'a.md', 'abc', 1.0);
        """
    )
    for i, row in enumerate(rows, 1):
        db.execute("INSERT INTO chunks VALUES (?, '/docs/a.md', 'a.md', 'A', ?)", (i, f"row {i}"))
        db.execute("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", (i, row.tobytes()))
    db.commit()
    db.close()

    kb = await KnowledgeBase.open(tmp_path, "old", readonly=True)
    try:
        hits = await kb.search(rows[11].tolist(), 2)
    finally:
        await kb.aclose()
    assert (hits[0].text, hits[0].score) == ("row 12", pytest.approx(1.0))
