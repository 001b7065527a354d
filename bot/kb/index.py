"""A knowledge base: one SQLite file under FMBOT_KB_DIR with a ``sqlite-vec`` index.

Tables: ``meta`` (the embedder's name and dimension: another embedder is refused, naming both),
``files`` (path, content hash: unchanged files are skipped), ``chunks`` (source, heading path,
text) and ``vectors``, a ``vec0`` table of cosine distance whose rowids are the chunks'.

The file is the source of truth; searches run on its vectors held in memory
(:mod:`bot.kb.vectors`), brought up to date as the file changes. ``vec0``'s own KNN query, in
the ``k = N`` form (the ``LIMIT`` form needs SQLite 3.41, Debian 12 has 3.40), is the exact
reference the bench compares with.

The file is in WAL mode: bots read it (read-only) while ``fmbot kb add`` writes, and see each
file's chunks once its transaction commits. A knowledge base removed and built again is a new
file; a reader notices (another inode) and reopens it, so bots need no restart.

SQLite is blocking: every call runs in a worker thread. Reads borrow read-only connections of
their own and run in parallel (:mod:`bot.kb.readers`); the writer's calls run one at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from bot.errors import KnowledgeError
from bot.kb.documents import SUFFIXES, Chunk, chunk_blocks, read_blocks
from bot.kb.embedders import Embedder, check_vectors
from bot.kb.readers import Readers

log = logging.getLogger(__name__)

T = TypeVar("T")
SUFFIX = ".sqlite"
SCHEMA_VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_ACCEPTED = "give a name of letters, digits, '_', '.' and '-' (at most 64), e.g. shop"
#: How long a writer waits for another writer of the same file before giving up.
BUSY_TIMEOUT_S = 30.0
MMAP_BYTES = 1 << 30  # address space, not memory: only pages read are resident

Progress = Callable[[int, int, str], None]  # (files done, files in all, the file now)


def sqlite_module() -> Any:
    """The stdlib ``sqlite3`` when it can load extensions; else ``sqlean`` (the same API on a
    bundled SQLite), for Pythons built without loadable extensions (pyenv's default)."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    import sqlean

    return sqlean


@dataclass(frozen=True, slots=True)
class Hit:
    source: str
    heading: str
    text: str
    score: float  # cosine similarity: 1 is the same direction
    chunk_id: int
    kb: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kb": self.kb,
            "source": self.source,
            "heading": self.heading,
            "text": self.text,
            "score": round(self.score, 4),
        }


@dataclass(slots=True)
class AddSummary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    removed: int = 0  # indexed files gone from a folder given again
    chunks: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        line = (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.skipped)} skipped"
        )
        return line + (f", {self.removed} removed" if self.removed else "")


@dataclass(frozen=True, slots=True)
class KbInfo:
    name: str
    embedder: str
    dimension: int
    files: int
    chunks: int
    bytes: int


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path  # absolute: the key of the file
    source: str  # as shown in sources lines: relative to the folder given


def kb_file(directory: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise KnowledgeError(f"{name!r} is not a knowledge base name: {NAME_ACCEPTED}.")
    return directory / f"{name}{SUFFIX}"


def list_names(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name.removesuffix(SUFFIX) for p in directory.glob(f"*{SUFFIX}"))


def delete(directory: Path, name: str) -> bool:
    """Remove knowledge base ``name`` (its file and SQLite's WAL files); False if there was
    none. A bot reading it answers without it from its next turn."""
    path = kb_file(directory, name)
    existed = path.is_file()
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return existed


class KnowledgeBase:
    def __init__(self, name: str, path: Path, *, readonly: bool) -> None:
        self.name = name
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None  # the writer's
        self._lock = asyncio.Lock()  # the writer's connection serves one call at a time
        self._local = threading.local()  # the connection a reader's call borrowed
        # Searches (of a writer too) read through connections of their own.
        self._readers = Readers(path, partial(self._connect, readonly=True), self._gone)

    @classmethod
    async def open(
        cls, directory: Path, name: str, *, create: bool = False, readonly: bool = False
    ) -> KnowledgeBase:
        """Open knowledge base ``name``; KnowledgeError when it does not exist (unless
        ``create``), naming the command that builds it."""
        path = kb_file(directory, name)
        if not path.is_file() and not create:
            known = ", ".join(list_names(directory)) or "none yet"
            raise KnowledgeError(
                f"There is no knowledge base {name!r} in {directory} (known: {known}); "
                f"build it with: fmbot kb add {name} PATH..."
            )
        kb = cls(name, path, readonly=readonly)
        if readonly:
            await kb._read(lambda: None)  # fails now, not at the first search
        else:
            await kb._call(kb._connect_writer)
        return kb

    # --- threads and connections ---

    async def _call(self, fn: Callable[[], T]) -> T:
        """``fn`` in a worker thread: a reader's with a connection of its own (readers run in
        parallel), the writer's one at a time."""
        if self.readonly:
            return await self._read(fn)
        async with self._lock:
            return await self._mapped(asyncio.to_thread(fn))

    async def _read(self, fn: Callable[[], T]) -> T:
        """``fn`` in a worker thread with a read-only connection borrowed for the call: reads
        run in parallel (a bot's turns search at the same time), also beside the writer."""
        return await self._mapped(asyncio.to_thread(self._borrowing, fn))

    def _borrowing(self, fn: Callable[[], T]) -> T:
        conn = self._readers.checkout()
        self._local.conn = conn
        try:
            return fn()
        finally:
            self._local.conn = None
            self._readers.checkin(conn)

    async def _mapped(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except sqlite_module().Error as exc:
            # A damaged file, a full disk, a lock held too long: one line that says what to
            # do, never a traceback in a chat or a terminal.
            raise KnowledgeError(
                f"Knowledge base {self.name!r} ({self.path}) failed: {exc}. If it persists, "
                f"build it again: fmbot kb remove {self.name}, then fmbot kb add "
                f"{self.name} PATH..."
            ) from exc

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        module = sqlite_module()
        if readonly:
            target, uri = f"file:{self.path}?mode=ro", True
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KnowledgeError(
                    f"Cannot create {self.path.parent} for knowledge bases ({exc.strerror}): "
                    "set FMBOT_KB_DIR to a writable folder."
                ) from exc
            target, uri = str(self.path), False
        try:
            conn = cast(
                sqlite3.Connection,
                module.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, check_same_thread=False),
            )
            conn.enable_load_extension(True)
            import sqlite_vec

            sqlite_vec.load(conn)
            conn.enable_load_extension(False)
            if readonly:
                # Loading the vectors reads them all: map the file rather than copy its pages
                # through SQLite's small page cache; the pages are the OS's, shared by every
                # worker reading the same file.
                conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            else:
                conn.execute("PRAGMA journal_mode=WAL")
                _create_tables(conn)
        except module.Error as exc:
            raise KnowledgeError(
                f"Knowledge base {self.name!r} ({self.path}) cannot be opened: {exc}. "
                "Check the file, or remove it and build it again with fmbot kb add."
            ) from exc
        return conn

    def _connect_writer(self) -> None:
        self._conn = self._connect(readonly=False)

    def _gone(self) -> KnowledgeError:
        return KnowledgeError(
            f"Knowledge base {self.name!r} is gone ({self.path}); "
            f"build it again with: fmbot kb add {self.name} PATH..."
        )

    def _db(self) -> sqlite3.Connection:
        """The connection of this call: a borrowed read-only one, or the writer's."""
        borrowed: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if borrowed is not None:
            return borrowed
        assert self._conn is not None
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self._readers.close)
        if not self.readonly:
            await self._call(self._close)

    # --- the embedder ---

    def _meta(self) -> dict[str, str]:
        # The writer creates the tables as it opens the file: an error here is a damaged file.
        rows = self._db().execute("SELECT key, value FROM meta").fetchall()
        return {str(k): str(v) for k, v in rows}

    async def embedder_info(self) -> tuple[str, int] | None:
        """(name, dimension) the index was built with, None before its first file."""
        meta = await self._call(self._meta)
        if "embedder" not in meta:
            return None
        return meta["embedder"], int(meta["dimension"])

    async def check_embedder(self, embedder: Embedder, dimension: int | None = None) -> None:
        """KnowledgeError unless the index was built by ``embedder`` (or is empty)."""
        built = await self.embedder_info()
        if built is None:
            return
        name, dim = built
        if embedder.name != name or (dimension is not None and dimension != dim):
            theirs = f"{embedder.name}" + (f" ({dimension} dimensions)" if dimension else "")
            raise KnowledgeError(
                f"Knowledge base {self.name!r} was built with {name} ({dim} dimensions), "
                f"but FMBOT_EMBED_MODEL is {theirs}: set FMBOT_EMBED_MODEL={name}, or build it "
                f"again (fmbot kb remove {self.name}, then fmbot kb add {self.name} PATH...)."
            )

    # --- writing ---

    async def add(
        self, paths: Sequence[Path], embedder: Embedder, progress: Progress | None = None
    ) -> AddSummary:
        """Index files and folders (recursively). Unchanged files (same content hash) are
        skipped; a changed file's old chunks are replaced; an unreadable one is reported."""
        assert not self.readonly
        started = time.perf_counter()
        await self.check_embedder(embedder)
        summary = AddSummary()
        sources = list(_expand(paths, summary))
        dimension: int | None = None
        for done, item in enumerate(sources):
            if progress:
                progress(done, len(sources), item.source)
            try:
                data = await asyncio.to_thread(item.path.read_bytes)
            except OSError as exc:
                summary.skipped.append((str(item.path), f"cannot be read ({exc.strerror})"))
                continue
            digest = hashlib.sha256(data).hexdigest()
            known = await self._call(partial(self._hash_of, item.path))
            if known == digest:
                summary.unchanged += 1
                continue
            try:
                chunks = await asyncio.to_thread(_chunks_of, item.path)
            except KnowledgeError as exc:
                summary.skipped.append((str(item.path), str(exc)))
                continue
            if not chunks:
                scanned = item.path.suffix.lower() == ".pdf"
                reason = "has no text" + (" (a scanned PDF needs OCR first)" if scanned else "")
                summary.skipped.append((str(item.path), reason))
                continue
            vectors = await embedder.embed_documents([c.embedded_text for c in chunks])
            if dimension is None:
                dimension = await embedder.dimension()
                await self.check_embedder(embedder, dimension)
            check_vectors(vectors, dimension, embedder.name)
            await self._call(
                partial(self._store, item, chunks, vectors, digest, embedder.name, dimension)
            )
            summary.chunks += len(chunks)
            if known is None:
                summary.added += 1
            else:
                summary.updated += 1
        folders = [p for p in paths if p.is_dir()]
        summary.removed = len(await self._call(partial(self._prune, folders)))
        if progress:
            progress(len(sources), len(sources), "")
        summary.seconds = time.perf_counter() - started
        return summary

    async def store_vectors(
        self,
        source: str,
        chunks: list[Chunk],
        vectors: list[list[float]],
        *,
        embedder: str,
        dimension: int,
    ) -> None:
        """Store ``chunks`` with vectors computed elsewhere as one file named ``source`` (a
        benchmark's synthetic vectors); replaces what that name held."""
        item = _Source(Path("/") / "stored" / source, source)
        digest = hashlib.sha256(source.encode()).hexdigest()
        await self._call(partial(self._store, item, chunks, vectors, digest, embedder, dimension))

    def _hash_of(self, path: Path) -> str | None:
        row = self._db().execute("SELECT hash FROM files WHERE path = ?", (str(path),)).fetchone()
        return str(row[0]) if row else None

    def _store(
        self,
        item: _Source,
        chunks: list[Chunk],
        vectors: list[list[float]],
        digest: str,
        embedder: str,
        dimension: int,
    ) -> None:
        db = self._db()
        with db:  # one transaction: a reader sees the old chunks or the new, never a mix
            if not self._meta():
                db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("embedder", embedder), ("dimension", str(dimension)),
                     ("schema", SCHEMA_VERSION)],
                )  # fmt: skip
                db.execute(
                    f"CREATE VIRTUAL TABLE vectors USING vec0("
                    f"embedding float[{dimension}] distance_metric=cosine)"
                )
            self._delete_file(db, str(item.path))
            for chunk, vector in zip(chunks, vectors, strict=True):
                cursor = db.execute(
                    "INSERT INTO chunks(path, source, heading, text) VALUES (?, ?, ?, ?)",
                    (str(item.path), item.source, chunk.heading, chunk.text),
                )
                db.execute(
                    "INSERT INTO vectors(rowid, embedding) VALUES (?, ?)",
                    (cursor.lastrowid, _blob(vector)),
                )
            db.execute(
                "INSERT OR REPLACE INTO files(path, source, hash, indexed_at) VALUES (?, ?, ?, ?)",
                (str(item.path), item.source, digest, time.time()),
            )

    def _delete_file(self, db: sqlite3.Connection, path: str) -> None:
        ids = [row[0] for row in db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
        if ids and self._meta():
            db.executemany("DELETE FROM vectors WHERE rowid = ?", [(i,) for i in ids])
        db.execute("DELETE FROM chunks WHERE path = ?", (path,))
        db.execute("DELETE FROM files WHERE path = ?", (path,))

    def _indexed_under(self, db: sqlite3.Connection, given: Path) -> list[str]:
        """Indexed files that are ``given`` or under it."""
        target = str(given.resolve())
        rows = db.execute(
            "SELECT path FROM files WHERE path = ? OR path LIKE ? ESCAPE '\\'",
            (target, _like_prefix(target.rstrip(os.sep) + os.sep)),
        ).fetchall()
        return [str(path) for (path,) in rows]

    def _prune(self, folders: Sequence[Path]) -> list[str]:
        """Forget the files of ``folders`` deleted since they were indexed: a folder added
        again is mirrored."""
        db = self._db()
        with db:
            gone = [
                path
                for folder in folders
                for path in self._indexed_under(db, folder)
                if not Path(path).exists()
            ]
            for path in gone:
                self._delete_file(db, path)
        return gone

    async def remove(self, paths: Sequence[Path]) -> list[str]:
        """Forget files (a folder: every file under it); returns the paths forgotten."""

        def go() -> list[str]:
            db = self._db()
            with db:
                gone = [path for given in paths for path in self._indexed_under(db, given)]
                for path in gone:
                    self._delete_file(db, path)
            return gone

        return await self._call(go)

    # --- reading ---

    async def search(
        self, vector: Sequence[float], k: int, *, candidates: int | None = None
    ) -> list[Hit]:
        """The ``k`` chunks nearest to ``vector``, best first, from the vectors in memory
        (:mod:`bot.kb.vectors`; ``candidates`` as there). Searches run in parallel."""

        def go() -> list[Hit]:
            meta = self._meta()
            if not meta:
                return []
            snapshot = self._readers.vectors(int(meta["dimension"]))
            ids, scores = snapshot.search(np.asarray(vector, np.float32), k, candidates)
            return self._hits(self._db(), [int(i) for i in ids], [float(s) for s in scores])

        return await self._read(go)

    async def load_vectors(self) -> int:
        """Read the vectors into memory now (a bot as it starts) rather than at the first
        search, which then waits for this read if it is still going; how many there are."""

        def go() -> int:
            meta = self._meta()
            return self._readers.vectors(int(meta["dimension"])).size if meta else 0

        return await self._read(go)

    async def search_exact(self, vector: Sequence[float], k: int) -> list[Hit]:
        """The same through ``vec0``, which compares every stored vector in SQLite: the
        reference the bench measures recall against."""

        def go() -> list[Hit]:
            db = self._db()
            if not self._meta():
                return []
            rows = db.execute(
                "SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ?",
                (_blob(vector), k),
            ).fetchall()
            return self._hits(db, [int(i) for i, _ in rows], [1.0 - float(d) for _, d in rows])

        return await self._read(go)

    def _hits(self, db: sqlite3.Connection, ids: list[int], scores: list[float]) -> list[Hit]:
        marks = ",".join("?" * len(ids))
        rows = db.execute(
            f"SELECT id, source, heading, text FROM chunks WHERE id IN ({marks})", ids
        ).fetchall()
        found = {int(i): (str(src), str(head), str(text)) for i, src, head, text in rows}
        # A chunk removed since the vectors were read is left out.
        return [
            Hit(*found[i], score=score, chunk_id=i, kb=self.name)
            for i, score in zip(ids, scores, strict=True)
            if i in found
        ]

    async def chunk(self, chunk_id: int) -> Hit | None:
        """The chunk ``chunk_id`` (score 0), or None when it is gone."""

        def go() -> Hit | None:
            row = (
                self._db()
                .execute("SELECT source, heading, text FROM chunks WHERE id = ?", (chunk_id,))
                .fetchone()
            )
            if row is None:
                return None
            source, heading, text = row
            return Hit(str(source), str(heading), str(text), 0.0, chunk_id, self.name)

        return await self._call(go)

    async def files(self) -> list[tuple[str, str, int]]:
        """(source, path, chunks) of every file, by source."""

        def go() -> list[tuple[str, str, int]]:
            rows = self._db().execute(
                "SELECT f.source, f.path, count(c.id) FROM files f "
                "LEFT JOIN chunks c ON c.path = f.path GROUP BY f.path ORDER BY f.source"
            )
            return [(str(s), str(p), int(n)) for s, p, n in rows]

        return await self._call(go)

    async def info(self) -> KbInfo:
        def go() -> KbInfo:
            db = self._db()
            meta = self._meta()
            files = db.execute("SELECT count(*) FROM files").fetchone()[0]
            chunks = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            return KbInfo(
                name=self.name,
                embedder=meta.get("embedder", "-"),
                dimension=int(meta.get("dimension", 0)),
                files=int(files),
                chunks=int(chunks),
                bytes=self.path.stat().st_size,
            )

        return await self._call(go)


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS files (
            path TEXT PRIMARY KEY, source TEXT NOT NULL, hash TEXT NOT NULL,
            indexed_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS chunks (
            id INTEGER PRIMARY KEY, path TEXT NOT NULL, source TEXT NOT NULL,
            heading TEXT NOT NULL, text TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
        """
    )


def _blob(vector: Sequence[float]) -> bytes:
    return array("f", vector).tobytes()


def _like_prefix(prefix: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def _chunks_of(path: Path) -> list[Chunk]:
    return chunk_blocks(read_blocks(path))


def _expand(paths: Sequence[Path], summary: AddSummary) -> Iterator[_Source]:
    """Files to index: a file as given (its name as the source), a folder's supported files
    (hidden ones left out) with sources relative to it. A missing path is reported."""
    for given in paths:
        if given.is_dir():
            root = given.resolve()
            for path in sorted(root.rglob("*")):
                relative = path.relative_to(root)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if path.is_file() and path.suffix.lower() in SUFFIXES:
                    yield _Source(path, relative.as_posix())
        elif given.is_file():
            yield _Source(given.resolve(), given.name)
        else:
            summary.skipped.append((str(given), "no such file or folder"))
