"""``fmbot kb``: build knowledge bases from documents, list, search and remove them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adapters.cli.prompts import json_safe
from bot.errors import KnowledgeError
from bot.settings import Settings, load_settings
from bot.text import terminal_safe

if TYPE_CHECKING:
    from bot.kb.bench import Retrieval
    from bot.kb.index import Hit

app = typer.Typer(
    help="Knowledge bases: index your documents, search them; templates use them with "
    "'knowledge: KB'.",
    no_args_is_help=True,
    add_completion=False,
)

KB_HELP = "Knowledge base name (letters, digits, _ . -), e.g. shop."
SHOWN_CHARS = 300  # of a passage in the human-readable search listing


def kb_settings() -> Settings:
    """Settings for commands that never call a chat model: a remote text, image or vision model
    without credentials at hand does not stop anyone from building a knowledge base."""
    default_model = Settings.model_fields["text_model"].default
    return load_settings(
        FMBOT_TEXT_MODEL=default_model, FMBOT_IMAGE_MODEL=None, FMBOT_VISION_MODEL=None
    )


def _echo(text: str, *, err: bool = False) -> None:
    typer.echo(terminal_safe(text), err=err)  # file names and passages may hold ESC sequences


@app.command()
def add(
    name: Annotated[str, typer.Argument(help=KB_HELP)],
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (read recursively).")],
) -> None:
    """Index .md, .txt, .rst, .html/.htm, .pdf and .docx files into knowledge base NAME.

    Unchanged files are skipped, changed ones indexed again. Exits 1 when nothing could be
    indexed.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bot.kb.embedders import create_embedder
    from bot.kb.index import KnowledgeBase, delete, kb_file

    settings = kb_settings()
    directory = settings.knowledge_dir
    new = not kb_file(directory, name).is_file()
    stderr = Console(stderr=True)
    # A bar for long runs on a terminal; nothing when output goes to a file or a pipe.
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    task = bar.add_task("indexing", total=None)

    def progress(done: int, total: int, source: str) -> None:
        bar.update(task, completed=done, total=total, description=terminal_safe(source)[-40:])

    async def go() -> None:
        embedder = create_embedder(settings)
        files: int | None = None  # known once the base is open
        try:
            kb = await KnowledgeBase.open(directory, name, create=True)
            try:
                with bar:
                    summary = await kb.add(paths, embedder, progress)
            finally:
                files = (await kb.info()).files
                await kb.aclose()
        finally:
            await embedder.aclose()
            if new and files == 0:
                delete(directory, name)  # leave no empty knowledge base behind, even on errors
        for path, reason in summary.skipped:
            _echo(f"skipped {path}: {reason}", err=True)
        indexed = summary.added + summary.updated + summary.unchanged
        _echo(f"{summary.line()} ({summary.chunks} chunks in {summary.seconds:.1f} s) -> {name}")
        if not indexed and not summary.removed:
            raise typer.Exit(1)

    asyncio.run(go())


@app.command("list")
def list_kbs(
    name: Annotated[str | None, typer.Argument(help=KB_HELP)] = None,
) -> None:
    """List the knowledge bases, or the files of knowledge base NAME."""
    from bot.kb.index import KnowledgeBase, list_names

    settings = kb_settings()
    directory = settings.knowledge_dir

    async def go() -> None:
        if name is not None:
            kb = await KnowledgeBase.open(directory, name, readonly=True)
            try:
                for source, path, chunks in await kb.files():
                    _echo(f"{source}\t{chunks} chunks\t{path}")
            finally:
                await kb.aclose()
            return
        names = list_names(directory)
        if not names:
            _echo(f"No knowledge bases in {directory} yet. Build one with: fmbot kb add NAME PATH")
        for each in names:
            kb = await KnowledgeBase.open(directory, each, readonly=True)
            try:
                info = await kb.info()
            finally:
                await kb.aclose()
            _echo(
                f"{info.name}\t{info.files} files\t{info.chunks} chunks\t{info.embedder} "
                f"({info.dimension} dimensions)\t{info.bytes / 1e6:.1f} MB"
            )

    asyncio.run(go())


@app.command()
def search(
    name: Annotated[str, typer.Argument(help=KB_HELP)],
    query: Annotated[str, typer.Argument(help="What to look for, in any language.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many passages.")] = 4,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON list: source, heading, text, score.")
    ] = False,
) -> None:
    """Passages of knowledge base NAME nearest to QUERY, best first."""
    if not query.strip():
        raise KnowledgeError("The query is empty: say what to look for, e.g. 'warranty'.")
    from bot.kb.retrieval import search_kbs

    settings = kb_settings()
    hits = asyncio.run(search_kbs(settings, [name], query, k))
    if as_json:
        typer.echo(json_safe(json.dumps([h.as_json() for h in hits], ensure_ascii=False)))
        return
    if not hits:
        _echo(f"Knowledge base {name!r} has no passages yet.")
    for n, hit in enumerate(hits, 1):
        _echo(_hit_lines(n, hit))


def _hit_lines(n: int, hit: Hit) -> str:
    where = f"{hit.source} — {hit.heading}" if hit.heading else hit.source
    text = " ".join(hit.text.split())
    if len(text) > SHOWN_CHARS:
        text = text[: SHOWN_CHARS - 1] + "…"
    return f"[{n}] {hit.score:.3f}  {where}\n    {text}"


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help=KB_HELP)],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or folders to forget; none: the whole knowledge base."),
    ] = None,
) -> None:
    """Forget files of knowledge base NAME, or remove it altogether."""
    from bot.kb.index import KnowledgeBase, delete

    settings = kb_settings()
    directory = settings.knowledge_dir

    async def go() -> None:
        kb = await KnowledgeBase.open(directory, name)  # KnowledgeError when unknown
        try:
            gone = await kb.remove(paths or [])
        finally:
            await kb.aclose()
        if not paths:
            delete(directory, name)
            _echo(f"Removed knowledge base {name}.")
            return
        if not gone:
            raise KnowledgeError(
                f"None of these are in knowledge base {name!r}; see its files with: "
                f"fmbot kb list {name}"
            )
        _echo(f"Removed {len(gone)} file(s) from {name}.")

    asyncio.run(go())


@app.command()
def bench(
    sizes: Annotated[
        str, typer.Option("--sizes", help="Knowledge base sizes to search, in chunks.")
    ] = "10000,100000",
    queries: Annotated[
        int, typer.Option("--queries", min=10, max=100_000, help="Searches per size.")
    ] = 200,
    paragraphs: Annotated[
        int, typer.Option("--paragraphs", min=1, help="Paragraphs indexed for throughput.")
    ] = 100,
    questions: Annotated[
        int,
        typer.Option(
            "--questions", min=1, max=100, help="Labelled questions asked of the shop's passages."
        ),
    ] = 100,
) -> None:
    """Retrieval latency (p50/p99, synthetic 384-dimension vectors, query embedding excluded)
    and recall, query embedding time and indexing throughput of FMBOT_EMBED_MODEL."""
    from bot.errors import ConfigError
    from bot.kb import bench as kb_bench
    from bot.kb.embedders import create_embedder

    try:
        chunk_counts = kb_bench.parse_sizes(sizes)
    except ValueError:
        raise ConfigError("--sizes", sizes, "give chunk counts, e.g. 10000,100000") from None
    settings = kb_settings()

    async def go() -> None:
        _echo(
            f"retrieval: k={kb_bench.TOP_K}, {kb_bench.DIMENSION} dimensions, synthetic unit "
            f"vectors, {queries} searches each, query embedding excluded"
        )
        for count in chunk_counts:
            _echo(_retrieval_line(await kb_bench.retrieval(count, queries)))
        embedder = create_embedder(settings)
        try:
            corpus = await kb_bench.embed_corpus(embedder, questions)
            real = kb_bench.real_recall(corpus.vectors, corpus.query_vectors)
            _echo(
                f"prefilter recall@{kb_bench.TOP_K}, {real.passages} shop passages, "
                f"{real.questions} questions, the bits keeping "
                f"{'/'.join(map(str, real.candidates))}: {_figures(real.recall)} on "
                f"{embedder.name} vectors, {_figures(real.random_recall)} on random ones"
            )
            hybrid = kb_bench.hybrid_recall(corpus)
            kinds = ", ".join(
                f"{kind} {vec:.3f}/{fused:.3f} ({n})"
                for kind, (n, vec, fused) in hybrid.kinds.items()
            )
            _echo(
                f"hybrid ranking (FTS5 bm25 fused with the vectors, reciprocal rank fusion), "
                f"recall@{kb_bench.TOP_K} vectors only/hybrid: {kinds}"
            )
            latency = await kb_bench.query_embedding(embedder, queries)
            _echo(
                f"query embedding ({embedder.name}): p50 {latency.p50_ms:.1f} ms, "
                f"p99 {latency.p99_ms:.1f} ms"
            )
            chunks, rate = await kb_bench.indexing(embedder, paragraphs)
            _echo(
                f"indexing ({embedder.name}; read, chunk, embed, store): {rate:.0f} chunks/s "
                f"({chunks} chunks)"
            )
        finally:
            await embedder.aclose()

    asyncio.run(go())


def _figures(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def _retrieval_line(r: Retrieval) -> str:
    line = (
        f"  {r.chunks:>9,} chunks: p50 {r.latency.p50_ms:.1f} ms, p99 {r.latency.p99_ms:.1f} ms"
        f" (CPU {r.latency.cpu_ms:.1f} ms"
    )
    if r.exact is None:
        return line + f"; exact: every vector compared; loaded in {r.load_s:.1f} s)"
    return line + (
        f"; the bits keep {r.candidates:,}, recall@4 {r.recall:.3f}; exact scan p50 "
        f"{r.exact.p50_ms:.1f} ms, p99 {r.exact.p99_ms:.1f} ms; loaded in {r.load_s:.1f} s)"
    )
