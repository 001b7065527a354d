"""A knowledge base's vectors in memory, for searches in milliseconds.

``vec0`` compares the query with every stored vector in plain C loops: about 140 ms at 100,000
chunks on a small machine. A reader instead holds the vectors as one float32 matrix (unit rows,
so a dot product is the cosine) and, next to it, one bit per dimension: the sign of each
vector minus the mean of all of them (centred, because e5's vectors share a large common
direction and their raw signs differ little).

Up to :data:`EXACT_UP_TO` vectors a search is one matrix product: exact. Beyond, reading the
whole matrix costs more than the latency target (150 MB a query at 100,000 chunks: memory
bandwidth, not arithmetic), so the Hamming distance between bit vectors, 48 bytes each, picks
:data:`CANDIDATE_SHARE` of the vectors and only those are scored exactly. The scores returned
are always exact cosines; only a passage that the bits ranked too low can be missed.
``fmbot kb bench`` measures how often (recall against the exact scan) on random vectors, the
worst case, and on real e5 vectors.

The SQLite file stays the source of truth: a snapshot is built from it and brought up to date,
file by file, when another connection has committed (``PRAGMA data_version``).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Up to this many vectors every one is compared (a few milliseconds).
EXACT_UP_TO = 30_000
#: Beyond, the share of vectors the bits keep for exact scoring, and at least k times this many.
CANDIDATE_SHARE = 0.03
OVERSAMPLE = 20
#: The mean is taken again when the rows have grown or shrunk by this share since it was taken;
#: in between, only new rows get bits (an update then costs copying the matrix, no more).
RECENTRE_AFTER = 0.2

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
Versions = dict[str, tuple[str, float]]  # file path -> (content hash, indexed at)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The vectors of the indexed files as of one read of the file. Never changed in place:
    a refresh makes a new one, so a search in progress keeps a consistent view."""

    ids: IdArray  # chunk ids, one per row
    matrix: FloatArray  # (rows, dimension), unit rows
    bits: npt.NDArray[np.uint64]  # (words, rows): signs of the centred rows, 64 a word
    mean: FloatArray
    versions: Versions
    files: dict[str, IdArray]  # file path -> its chunk ids
    basis: int  # rows the mean was taken over

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def search(
        self, query: FloatArray, k: int, candidates: int | None = None
    ) -> tuple[IdArray, FloatArray]:
        """Chunk ids and cosine similarities of the ``k`` nearest rows, best first.
        ``candidates``: how many rows the bits keep (default: exact up to EXACT_UP_TO rows,
        else CANDIDATE_SHARE of them); ``0`` compares every row."""
        n = self.size
        k = min(k, n)
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q = unit(query)
        if candidates is None:
            candidates = 0 if n <= EXACT_UP_TO else default_candidates(n, k)
        if candidates and candidates < n:
            rows = _nearest(self.hamming(q), candidates, 64 * self.bits.shape[0])
            scores = _dot(self.matrix[rows], q)
        else:
            rows = None
            scores = _dot(self.matrix, q)
        best = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
        best = best[np.argsort(-scores[best], kind="stable")]
        picked = best if rows is None else rows[best]
        return self.ids[picked], scores[best]

    def hamming(self, query: FloatArray) -> npt.NDArray[np.uint16]:
        """Bits differing between each row and ``query`` (a unit vector)."""
        code = sign_bits((query - self.mean)[np.newaxis, :])[:, 0]
        # Word by word over the transposed bits: each pass is one contiguous sweep.
        total: npt.NDArray[np.uint16] = np.bitwise_count(self.bits[0] ^ code[0]).astype(np.uint16)
        for word in range(1, self.bits.shape[0]):
            total += np.bitwise_count(self.bits[word] ^ code[word])
        return total


def _nearest(distances: npt.NDArray[np.uint16], count: int, most: int) -> IdArray:
    """Positions of the ``count`` smallest ``distances`` (each at most ``most``), in no order:
    the cut-off distance from a histogram, then the rows under it and as many at it as fit.
    A few times quicker than ``argpartition`` over 100,000 rows."""
    cumulative = np.cumsum(np.bincount(distances, minlength=most + 1))
    cutoff = int(np.searchsorted(cumulative, count))
    below = np.flatnonzero(distances < cutoff)
    at = np.flatnonzero(distances == cutoff)[: count - below.shape[0]]
    return np.concatenate([below, at])


def _dot(matrix: FloatArray, query: FloatArray) -> FloatArray:
    """Each row's dot product with ``query``, in the calling thread: BLAS (``@``) would hand
    it to threads of its own, whose wake-up on a busy machine costs more than the product."""
    out: FloatArray = np.einsum("ij,j->i", matrix, query)
    return out


def default_candidates(n: int, k: int) -> int:
    return min(n, max(k * OVERSAMPLE, math.ceil(n * CANDIDATE_SHARE)))


def unit(vector: npt.ArrayLike) -> FloatArray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def unit_rows(matrix: FloatArray) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero: similarity 0 to everything
    out: FloatArray = (matrix / norms).astype(np.float32, copy=False)
    return out


def sign_bits(rows: FloatArray) -> npt.NDArray[np.uint64]:
    """(words, rows): bit j of a row is set when its dimension j is positive."""
    packed = np.packbits(rows > 0, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed.view(np.uint64).T)


def empty(dimension: int) -> Snapshot:
    return _build(np.empty(0, np.int64), np.empty((0, dimension), np.float32), {}, {})


def of_rows(rows: npt.ArrayLike) -> Snapshot:
    """A snapshot of vectors not from a file (a benchmark's): ids are row numbers."""
    matrix = unit_rows(np.asarray(rows, dtype=np.float32))
    return _build(np.arange(matrix.shape[0], dtype=np.int64), matrix, {}, {})


def _build(
    ids: IdArray,
    matrix: FloatArray,
    versions: Versions,
    files: dict[str, IdArray],
    centred_on: tuple[FloatArray, npt.NDArray[np.uint64], int] | None = None,
) -> Snapshot:
    """A snapshot of ``matrix``. ``centred_on``: (mean, bits of the first rows, how many rows
    the mean was taken over) to extend rather than recompute, while the rows have not grown or
    shrunk much since the mean was taken."""
    n = matrix.shape[0]
    if centred_on is not None:
        mean, bits, basis = centred_on
        if basis * (1 - RECENTRE_AFTER) <= n <= basis * (1 + RECENTRE_AFTER):
            fresh = sign_bits(matrix[bits.shape[1] :] - mean)
            return Snapshot(ids, matrix, np.hstack([bits, fresh]), mean, versions, files, basis)
    mean = (matrix.mean(axis=0) if n else np.zeros(matrix.shape[1])).astype(np.float32)
    return Snapshot(ids, matrix, sign_bits(matrix - mean), mean, versions, files, n)


def refresh(db: sqlite3.Connection, old: Snapshot) -> Snapshot:
    """``old`` brought up to what ``db`` holds: the rows of files gone or changed dropped, the
    rows of new or changed files read. Call inside one read transaction."""
    versions: Versions = {
        str(path): (str(digest), float(at))
        for path, digest, at in db.execute("SELECT path, hash, indexed_at FROM files")
    }
    stale = [p for p, v in old.versions.items() if versions.get(p) != v]
    fresh = [p for p, v in versions.items() if old.versions.get(p) != v]
    if not stale and not fresh:
        return old
    files = {p: ids for p, ids in old.files.items() if p not in set(stale)}
    keep = np.ones(old.size, dtype=bool)
    if stale:
        keep = ~np.isin(old.ids, np.concatenate([old.files[p] for p in stale]))
    new_ids, new_rows = _read(db, fresh, old.dimension, whole=not files)
    for path, ids in _ids_by_file(db, fresh).items():
        files[path] = ids
    ids = np.concatenate([old.ids[keep], new_ids])
    matrix = np.concatenate([old.matrix[keep], unit_rows(new_rows)])
    return _build(ids, matrix, versions, files, (old.mean, old.bits[:, keep], old.basis))


def _ids_by_file(db: sqlite3.Connection, paths: Iterable[str]) -> dict[str, IdArray]:
    out: dict[str, IdArray] = {}
    for path in paths:
        rows = db.execute("SELECT id FROM chunks WHERE path = ?", (path,)).fetchall()
        out[path] = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    return out


def _read(
    db: sqlite3.Connection, paths: list[str], dimension: int, *, whole: bool
) -> tuple[IdArray, FloatArray]:
    """Chunk ids and vectors of the files ``paths``; ``whole``: they are every file, so one
    sweep of the vectors beats a lookup per chunk."""
    if whole:
        rows = db.execute("SELECT rowid, embedding FROM vectors").fetchall()
    else:
        rows = []
        for path in paths:
            rows += db.execute(
                "SELECT v.rowid, v.embedding FROM chunks c JOIN vectors v ON v.rowid = c.id "
                "WHERE c.path = ?",
                (path,),
            ).fetchall()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    data = b"".join(r[1] for r in rows)
    return ids, np.frombuffer(data, dtype=np.float32).reshape(len(rows), dimension)
