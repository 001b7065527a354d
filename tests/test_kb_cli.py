"""``fmbot kb`` through the real command line: real files, real SQLite + sqlite-vec, real e5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kb_files import write_russian_docs, write_shop_docs

FMBOT = str(Path(sys.executable).parent / "fmbot")
ROOT = Path(__file__).resolve().parents[1]


def run_fmbot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "OPENAI_"))}
    # PYTHONPATH: the entry point runs this tree's code, not the installed checkout's.
    full = base | {"FMBOT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)} | env
    return subprocess.run([FMBOT, *args], env=full, capture_output=True, text=True, timeout=120)


def fmbot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``fmbot kb ARGS``."""
    return run_fmbot(tmp_path, "kb", *args, **env)


def one_line_error(done: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_add_list_search_remove_on_real_files(tmp_path: Path) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")

    done = fmbot(tmp_path, "add", "shop", str(docs))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 added, 0 updated, 0 unchanged, 1 skipped (")
    assert done.stderr.strip() == (
        f"skipped {docs / 'broken.pdf'}: is not a PDF pypdf can read (damaged or encrypted?)"
    )
    assert (tmp_path / "home" / "kb" / "shop.sqlite").is_file()  # FMBOT_HOME/kb by default

    again = fmbot(tmp_path, "add", "shop", str(docs / "warranty.md"), str(docs / "care.pdf"))
    assert again.stdout.startswith("0 added, 0 updated, 2 unchanged, 0 skipped")

    listed = fmbot(tmp_path, "list")
    assert listed.stdout.split("\t")[:3] == ["shop", "3 files", "6 chunks"]
    assert "local:e5 (384 dimensions)" in listed.stdout
    files = fmbot(tmp_path, "list", "shop").stdout.splitlines()
    assert [line.split("\t")[0] for line in files] == ["care.pdf", "returns.html", "warranty.md"]

    # A Russian question finds the English passage.
    found = fmbot(tmp_path, "search", "shop", "Как вернуть товар и получить деньги?", "-k", "2")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].startswith("[1] 0.")
    assert found.stdout.splitlines()[0].endswith("returns.html — Returns")
    assert "thirty days" in found.stdout.splitlines()[1]
    assert found.stdout.count("\n[") == 1  # two hits

    as_json = fmbot(tmp_path, "search", "shop", "Куда отправить фото поломки?", "--json")
    hits = json.loads(as_json.stdout)
    assert len(hits) == 4
    assert {"source", "heading", "text", "score"} <= set(hits[0])
    assert (hits[0]["source"], hits[0]["heading"]) == ("warranty.md", "Warranty > Claims")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    gone = fmbot(tmp_path, "remove", "shop", str(docs / "care.pdf"))
    assert gone.stdout.strip() == "Removed 1 file(s) from shop."
    assert "care.pdf" not in fmbot(tmp_path, "list", "shop").stdout
    assert fmbot(tmp_path, "remove", "shop").stdout.strip() == "Removed knowledge base shop."
    assert list((tmp_path / "home" / "kb").iterdir()) == []


def test_english_question_finds_a_russian_passage_in_a_shared_folder(tmp_path: Path) -> None:
    docs = write_russian_docs(tmp_path / "ru")
    kb_dir = tmp_path / "volume"
    done = fmbot(tmp_path, "add", "ru", str(docs), FMBOT_KB_DIR=str(kb_dir))
    assert done.returncode == 0, done.stderr
    assert (kb_dir / "ru.sqlite").is_file()
    found = fmbot(
        tmp_path, "search", "ru", "When will the courier bring my order?", "--json",
        FMBOT_KB_DIR=str(kb_dir),
    )  # fmt: skip
    assert json.loads(found.stdout)[0]["source"] == "delivery.md"


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (("search", "nope", "warranty"), ("no knowledge base 'nope'", "fmbot kb add nope")),
        (("search", "shop", "  "), ("query is empty",)),
        (("remove", "nope"), ("no knowledge base 'nope'",)),
        (("list", "nope"), ("no knowledge base 'nope'",)),
        (("add", "bad/name", "."), ("not a knowledge base name",)),
        (("add", "shop", "."), ("FMBOT_KB_DIR to a writable folder",)),
    ],
)
def test_mistakes_are_one_clear_line(
    tmp_path: Path, args: tuple[str, ...], parts: tuple[str]
) -> None:
    (tmp_path / "file").write_text("not a folder")  # FMBOT_KB_DIR cannot be created under it
    one_line_error(fmbot(tmp_path, *args, FMBOT_KB_DIR=str(tmp_path / "file" / "kb")), *parts)


def test_nothing_indexable_exits_non_zero_and_leaves_no_base(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"\xff\xfe not utf-8")
    done = fmbot(tmp_path, "add", "empty", str(tmp_path / "notes.txt"), str(tmp_path / "gone"))
    assert done.returncode == 1
    assert done.stdout.startswith("0 added, 0 updated, 0 unchanged, 2 skipped")
    assert "notes.txt: is not UTF-8 text" in done.stderr and "gone: no such file" in done.stderr
    assert not (tmp_path / "home" / "kb" / "empty.sqlite").exists()


def test_another_embedder_is_refused_naming_both(tmp_path: Path) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    assert fmbot(tmp_path, "add", "shop", str(docs / "warranty.md")).returncode == 0
    refused = fmbot(
        tmp_path, "search", "shop", "warranty", FMBOT_EMBED_MODEL="openai:text-embedding-3-small"
    )
    one_line_error(refused, "local:e5 (384 dimensions)", "openai:text-embedding-3-small")
    refused = fmbot(
        tmp_path, "add", "shop", str(docs), FMBOT_EMBED_MODEL="openai:text-embedding-3-small"
    )
    one_line_error(refused, "local:e5 (384 dimensions)", "FMBOT_EMBED_MODEL=local:e5")
    # A new base whose embedder fails (no server here) is not left behind empty.
    failed = fmbot(
        tmp_path, "add", "other", str(docs), FMBOT_EMBED_MODEL="openai:m",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )  # fmt: skip
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("fmbot: Could not reach")  # after retries
    assert not (tmp_path / "home" / "kb" / "other.sqlite").exists()
    bad = fmbot(tmp_path, "search", "shop", "warranty", FMBOT_EMBED_MODEL="word2vec")
    assert bad.returncode == 2
    one_line_error(bad, "FMBOT_EMBED_MODEL", "local:e5")


def test_prompts_render_shows_the_passages_and_where_they_go(tmp_path: Path) -> None:
    docs = write_shop_docs(tmp_path / "docs")
    assert fmbot(tmp_path, "add", "support", str(docs)).returncode == 0
    done = run_fmbot(
        tmp_path, "prompts", "render", "support", "-m", "Как вернуть товар и получить деньги?"
    )
    assert done.returncode == 0, done.stderr
    first, *_ = done.stdout.splitlines()
    assert first == (
        "# knowledge: 4 passage(s) from support for this message, in the user message, "
        "where the task places {{ knowledge }}"
    )
    user = done.stdout.split("[2] user\n", 1)[1]
    assert user.startswith("Passages:\n\n[1] returns.html — Returns\nYou can return an item")
    assert user.rstrip().endswith("Question: Как вернуть товар и получить деньги?")


def test_bench_prints_every_figure(tmp_path: Path) -> None:
    done = fmbot(
        tmp_path,
        "bench",
        *("--sizes", "600,31000", "--queries", "10", "--paragraphs", "5", "--questions", "6"),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("retrieval: k=4, 384 dimensions, synthetic unit vectors")
    figures = [line.split(":", 1)[0].strip() for line in lines[1:]]
    assert figures == [
        "600 chunks",
        "31,000 chunks",
        "prefilter recall@4, 165 shop passages, 6 questions, the bits keeping 9/17/33",
        "hybrid ranking (FTS5 bm25 fused with the vectors, reciprocal rank fusion), recall@4 "
        "vectors only/hybrid",
        "query embedding (local",
        "indexing (local",
    ]
    for line in lines[1:3]:
        latency = line.split(":", 1)[1].split(" (")[0]
        p50, p99 = (float(x.split()[-2]) for x in latency.split(","))
        assert 0 < p50 <= p99
    assert lines[1].endswith(" s)") and "; exact: every vector compared; loaded in " in lines[1]
    assert all(float(line.split("(CPU ")[1].split()[0]) > 0 for line in lines[1:3])
    recall = float(lines[2].split("recall@4 ")[1].split(";")[0])
    assert 0 < recall <= 1 and "the bits keep 930, " in lines[2] and "exact scan p50 " in lines[2]
    real, random = (part.split()[0].split("/") for part in lines[3].split(": ")[1].split(", "))
    assert len(real) == len(random) == 3 and all(0 <= float(x) <= 1 for x in real + random)
    assert lines[3].endswith("on random ones") and " on local:e5 vectors" in lines[3]
    kinds = [part.split() for part in lines[4].split(": ")[1].split(", ")]
    assert [(kind, n) for kind, _, n in kinds] == [("keyword", "(6)"), ("all", "(6)")]
    assert all(0 <= float(x) <= 1 for _, pair, _ in kinds for x in pair.split("/"))
    assert lines[-1].endswith(" chunks)") and "chunks/s" in lines[-1]
    assert not list((tmp_path / "home").glob("kb/*"))  # nothing left behind
    bad = fmbot(tmp_path, "bench", "--sizes", "ten")
    one_line_error(bad, "--sizes", "10000,100000")


def test_prompts_check_notes_knowledge_bases_not_built_yet(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "faq.yaml").write_text(
        "name: faq\ninstruction: x\nknowledge: [shop, faq]\n", encoding="utf-8"
    )
    docs = write_shop_docs(tmp_path / "docs")
    assert fmbot(tmp_path, "add", "shop", str(docs / "warranty.md")).returncode == 0
    done = run_fmbot(tmp_path, "prompts", "check", str(prompts))
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[1:] == [
        f"note: {prompts / 'faq.yaml'} uses knowledge base 'faq', not built in "
        f"{tmp_path / 'home' / 'kb'}; build it with: fmbot kb add faq PATH..."
    ]
    (prompts / "bad.yaml").write_text("name: bad\ninstruction: x\nknowledge: a/b\n")
    bad = run_fmbot(tmp_path, "prompts", "check", str(prompts))
    assert bad.returncode == 1 and "not a knowledge base name" in bad.stdout
