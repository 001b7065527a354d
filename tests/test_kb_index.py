"""Knowledge-base documents and index: real files, real SQLite + sqlite-vec, the real e5 model."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import KnowledgeError
from bot.kb.documents import (
    CHUNK_TOKENS,
    Block,
    chunk_blocks,
    read_blocks,
    tokens,
)
from bot.kb.embedders import Embedder, LocalE5Embedder, create_embedder
from bot.kb.index import KnowledgeBase, delete, list_names
from bot.kb.readers import Readers
from bot.settings import Settings
from tests.fakes import FakeOpenAI
from tests.kb_files import RETURNS_HTML, make_pdf, write_russian_docs, write_shop_docs


@pytest.fixture(scope="module")
async def e5() -> AsyncIterator[Embedder]:
    embedder = LocalE5Embedder()
    yield embedder
    await embedder.aclose()


# --- documents -----------------------------------------------------------------------------------


def test_markdown_keeps_the_heading_path_and_plain_words(tmp_path: Path) -> None:
    doc = tmp_path / "guide.md"
    doc.write_text(
        "Guide\n=====\n\nIntro with a [link](http://x.example) and `code`.\n\n"
        "## Setup\n\n### Linux\n\nRun it.\n\n```sh\n# not a heading\nmake\n```\n\n"
        "Setup again\n-----------\n\nSecond level.\n",
        encoding="utf-8",
    )
    blocks = read_blocks(doc)
    assert blocks == [
        Block(("Guide",), "Intro with a link and code."),
        Block(("Guide", "Setup", "Linux"), "Run it."),
        Block(("Guide", "Setup", "Linux"), "```sh\n# not a heading\nmake\n```"),
        Block(("Guide", "Setup again"), "Second level."),
    ]


def test_rst_titles_take_levels_from_their_underlines(tmp_path: Path) -> None:
    doc = tmp_path / "manual.rst"
    doc.write_text(
        "=====\nTitle\n=====\n\nTop text.\n\nPart\n----\n\nPart text.\n\n"
        "Other\n-----\n\nOther text.\n",
        encoding="utf-8",
    )
    assert read_blocks(doc) == [
        Block(("Title",), "Top text."),
        Block(("Title", "Part"), "Part text."),
        Block(("Title", "Other"), "Other text."),
    ]


def test_html_is_text_only_with_headings(tmp_path: Path) -> None:
    doc = tmp_path / "returns.htm"
    doc.write_text(RETURNS_HTML, encoding="utf-8")
    blocks = read_blocks(doc)
    assert blocks == [
        Block(("Returns",), "You can return an item within thirty days for a full refund.")
    ]
    assert "script" not in repr(blocks) and "color" not in repr(blocks)


def test_pdf_text_layer_page_by_page(tmp_path: Path) -> None:
    doc = tmp_path / "care.pdf"
    doc.write_bytes(make_pdf(["First page words.", "Second page words."]))
    assert read_blocks(doc) == [
        Block(("page 1",), "First page words."),
        Block(("page 2",), "Second page words."),
    ]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.txt", b"\xff\xfe\x00bad", "is not UTF-8 text"),
        ("broken.pdf", b"%PDF-1.4 this is not a pdf", "is not a PDF pypdf can read"),
        ("image.png", b"\x89PNG", "not a supported type"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    doc = tmp_path / name
    doc.write_bytes(content)
    with pytest.raises(KnowledgeError, match=reason):
        read_blocks(doc)


def test_chunks_keep_the_budget_overlap_and_never_cross_a_heading() -> None:
    sentences = [f"Sentence number {i} tells one small fact about the kettle." for i in range(60)]
    blocks = [
        Block(("Manual", "Care"), " ".join(sentences[:30])),
        Block(("Manual", "Care"), " ".join(sentences[30:])),
        Block(("Manual", "Safety"), "Unplug it first."),
    ]
    chunks = chunk_blocks(blocks, budget=80, overlap=20)
    care = [c for c in chunks if c.heading == "Manual > Care"]
    assert chunks[-1].heading == "Manual > Safety" and chunks[-1].text == "Unplug it first."
    assert len(care) > 3
    assert all(tokens(c.text) <= 80 + 20 for c in care)
    for before, after in itertools.pairwise(care):
        # The next chunk starts with the last sentence of the one before.
        last = before.text.replace("\n\n", " ").split(". ")[-1]
        assert after.text.startswith(last.rstrip(".")), (before.text, after.text)
    every = " ".join(c.text for c in care)
    assert all(s in every for s in sentences)  # nothing lost
    assert chunks[0].embedded_text.startswith("Manual > Care\n")


def test_one_huge_word_is_cut_to_the_budget() -> None:
    chunks = chunk_blocks([Block((), "x" * 10_000)])
    assert all(tokens(c.text) <= CHUNK_TOKENS for c in chunks)


# --- the index -----------------------------------------------------------------------------------


async def test_add_search_and_incremental_updates(tmp_path: Path, e5: Embedder) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff")  # not a document: left out of a folder
    (docs / ".hidden.md").write_text("# Secret\n\nnot indexed", encoding="utf-8")
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    kb = await KnowledgeBase.open(tmp_path / "kb", "shop", create=True)
    try:
        first = await kb.add([docs, tmp_path / "missing.md"], e5)
        assert (first.added, first.updated, first.unchanged) == (3, 0, 0)
        assert sorted(Path(p).name for p, _ in first.skipped) == ["latin1.txt", "missing.md"]
        assert first.line() == "3 added, 0 updated, 0 unchanged, 2 skipped"

        # Russian questions, English passages.
        for question, source, heading in (
            ("Сколько дней идёт доставка посылки?", "warranty.md", "Delivery"),
            ("Как вернуть товар и получить деньги?", "returns.html", "Returns"),
            ("Чем чистить чайник?", "care.pdf", "page 1"),
            ("Куда отправить фото поломки?", "warranty.md", "Warranty > Claims"),
        ):
            hits = await kb.search(await e5.embed_query(question), 3)
            assert (hits[0].source, hits[0].heading) == (source, heading), (question, hits)
            assert hits[0].score > hits[1].score > hits[2].score

        again = await kb.add([docs], e5)
        assert again.line() == "0 added, 0 updated, 3 unchanged, 1 skipped"

        (docs / "warranty.md").write_text(
            "# Warranty\n\nThe warranty now lasts five years.\n", encoding="utf-8"
        )
        changed = await kb.add([docs], e5)
        assert (changed.added, changed.updated, changed.unchanged) == (0, 1, 2)
        query_vector = await e5.embed_query("parcel delivery days")
        hits = await kb.search(query_vector, 10)
        texts = " ".join(h.text for h in hits if h.source == "warranty.md")
        assert texts == "The warranty now lasts five years."  # the old chunks are gone
        info = await kb.info()
        assert (info.embedder, info.dimension, info.files) == ("local:e5", 384, 3)

        (docs / "returns.html").unlink()  # a folder added again is mirrored
        pruned = await kb.add([docs], e5)
        assert pruned.line() == "0 added, 0 updated, 2 unchanged, 1 skipped, 1 removed"
        assert "returns.html" not in {h.source for h in await kb.search(query_vector, 10)}
        (docs / "returns.html").write_text(RETURNS_HTML, encoding="utf-8")
        assert (await kb.add([docs], e5)).added == 1

        assert await kb.remove([docs / "care.pdf"]) == [str((docs / "care.pdf").resolve())]
        assert (await kb.info()).files == 2
        assert len(await kb.remove([docs])) == 2
        assert (await kb.info()).chunks == 0
    finally:
        await kb.aclose()
    assert list_names(tmp_path / "kb") == ["shop"]


async def test_english_questions_find_russian_passages(tmp_path: Path, e5: Embedder) -> None:
    kb = await KnowledgeBase.open(tmp_path, "ru", create=True)
    try:
        await kb.add([write_russian_docs(tmp_path / "ru")], e5)
        for question, source in (
            ("How can I pay, by card or cash?", "payment.txt"),
            ("Do I get a receipt by email?", "payment.txt"),
            ("When will the courier bring my order in Moscow?", "delivery.md"),
        ):
            hits = await kb.search(await e5.embed_query(question), 3)
            assert hits[0].source == source, (question, hits)
    finally:
        await kb.aclose()


async def test_the_index_file_is_sqlite_with_a_vec0_table(tmp_path: Path, e5: Embedder) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    kb = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await kb.add([docs], e5)
    await kb.aclose()
    with sqlite3.connect(tmp_path / "shop.sqlite") as db:
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchone()[0]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert "USING vec0" in sql and "float[384]" in sql and "distance_metric=cosine" in sql
    assert meta["embedder"] == "local:e5" and meta["dimension"] == "384"


async def test_unknown_knowledge_base_and_bad_names_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match=r"no knowledge base 'shop'.*fmbot kb add shop"):
        await KnowledgeBase.open(tmp_path, "shop", readonly=True)
    with pytest.raises(KnowledgeError, match="not a knowledge base name"):
        await KnowledgeBase.open(tmp_path, "../etc/passwd", create=True)


async def test_another_embedder_is_refused_naming_both(tmp_path: Path, e5: Embedder) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    kb = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await kb.add([docs / "warranty.md"], e5)
    async with FakeOpenAI() as fake:
        other = create_embedder(
            Settings(
                FMBOT_EMBED_MODEL="openai:embed-test",
                OPENAI_BASE_URL=fake.base_url,
                OPENAI_API_KEY=fake.api_key,
            )
        )
        try:
            with pytest.raises(KnowledgeError) as caught:
                await kb.add([docs / "returns.html"], other)
            await kb.check_embedder(e5, 384)  # the right one passes
        finally:
            await other.aclose()
            await kb.aclose()
    message = str(caught.value)
    assert "local:e5 (384 dimensions)" in message and "openai:embed-test" in message
    assert "FMBOT_EMBED_MODEL=local:e5" in message
    assert fake.requests == []  # refused before any document was embedded


async def test_a_reader_sees_updates_and_a_rebuilt_file_without_reopening(
    tmp_path: Path, e5: Embedder
) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    writer = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await writer.add([docs / "warranty.md"], e5)
    reader = await KnowledgeBase.open(tmp_path, "shop", readonly=True)
    query = await e5.embed_query("return an item for a refund")
    try:
        assert {h.source for h in await reader.search(query, 5)} == {"warranty.md"}
        await writer.add([docs / "returns.html"], e5)
        assert (await reader.search(query, 1))[0].source == "returns.html"
        await writer.aclose()

        assert delete(tmp_path, "shop")  # built again from other documents
        assert not delete(tmp_path, "shop")
        assert list(tmp_path.glob("shop.sqlite*")) == []
        rebuilt = await KnowledgeBase.open(tmp_path, "shop", create=True)
        await rebuilt.add([docs / "care.pdf"], e5)
        await rebuilt.aclose()
        assert {h.source for h in await reader.search(query, 5)} == {"care.pdf"}
    finally:
        await reader.aclose()


async def test_searches_run_concurrently_with_indexing(tmp_path: Path, e5: Embedder) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    writer = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await writer.add([docs / "warranty.md"], e5)
    reader = await KnowledgeBase.open(tmp_path, "shop", readonly=True)
    query = await e5.embed_query("warranty")
    try:
        async with asyncio.timeout(60):
            summary, *results = await asyncio.gather(
                writer.add([docs], e5), *(reader.search(query, 2) for _ in range(20))
            )
        assert (summary.added, summary.unchanged) == (2, 1)
        assert all(r and r[0].heading.startswith("Warranty") for r in results)
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_a_closed_knowledge_base_is_a_knowledge_error_and_opens_nothing(
    tmp_path: Path, e5: Embedder
) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    writer = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await writer.add([docs / "warranty.md"], e5)
    await writer.aclose()
    reader = await KnowledgeBase.open(tmp_path, "shop", readonly=True)
    query = await e5.embed_query("warranty")
    assert await reader.search(query, 1)
    await reader.aclose()
    # A turn searching as the bot stops: a notice for the chat, not a bare RuntimeError.
    with pytest.raises(KnowledgeError, match="was closed"):
        await reader.search(query, 1)

    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{tmp_path / 'shop.sqlite'}?mode=ro", uri=True)
        opened.append(conn)
        return conn

    readers = Readers(tmp_path / "shop.sqlite", connect, lambda: KnowledgeError("gone"))
    readers.close()
    # A search that checked a connection out before close() goes on to the vectors: no new
    # refresher connection may be opened then, as nothing would close it.
    with pytest.raises(KnowledgeError, match="was closed"):
        readers.vectors(384)
    with pytest.raises(KnowledgeError, match="was closed"):
        readers.checkout()
    assert opened == []


def test_docx_headings_and_paragraphs(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Handbook", level=1)
    document.add_paragraph("Welcome to the shop.")
    document.add_heading("Returns", level=2)
    document.add_paragraph("Thirty days, with the receipt.")
    document.add_heading("Payment", level=1)
    document.add_paragraph("Cards and cash.")
    document.save(str(tmp_path / "handbook.docx"))
    assert read_blocks(tmp_path / "handbook.docx") == [
        Block(("Handbook",), "Welcome to the shop."),
        Block(("Handbook", "Returns"), "Thirty days, with the receipt."),
        Block(("Payment",), "Cards and cash."),
    ]
    (tmp_path / "fake.docx").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(KnowledgeError, match="not a Word document"):
        read_blocks(tmp_path / "fake.docx")


async def test_a_damaged_index_is_one_clear_error(tmp_path: Path, e5: Embedder) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    kb = await KnowledgeBase.open(tmp_path, "shop", create=True)
    await kb.add([docs / "warranty.md"], e5)
    await kb.aclose()
    path = tmp_path / "shop.sqlite"
    data = bytearray(path.read_bytes())
    data[4096:] = b"\x00garbage" * ((len(data) - 4096) // 8) + b"\x00" * ((len(data) - 4096) % 8)
    path.write_bytes(bytes(data))
    with pytest.raises(KnowledgeError, match=r"'shop'.*fmbot kb remove shop"):
        reader = await KnowledgeBase.open(tmp_path, "shop", readonly=True)
        try:
            await reader.search(await e5.embed_query("warranty"), 2)
        finally:
            await reader.aclose()
