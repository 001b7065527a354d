"""Read-only connections to one knowledge-base file, and the vectors they share.

A bot's turns search at the same time: each search borrows a connection of its own (SQLite
connections must not be used by two threads at once) and gives it back, so searches run in
parallel and no connection is opened per search. The file may be built again under a bot
(``fmbot kb remove``, ``fmbot kb add``): a new file is a new inode, and connections to the old
one are dropped as they are next borrowed.

The vectors live in memory (:mod:`bot.kb.vectors`), one snapshot shared by every search. A
connection of its own, used under a lock, keeps it up to date: ``PRAGMA data_version`` changes
when another connection has committed, and each refresh reads in a fresh transaction, so the
snapshot only ever moves forward.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bot.errors import KnowledgeError
from bot.kb import vectors
from bot.kb.vectors import Snapshot

log = logging.getLogger(__name__)

Identity = tuple[int, int]


def identity(path: Path) -> Identity | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Readers:
    def __init__(
        self, path: Path, connect: Callable[[], sqlite3.Connection], gone: Callable[[], Exception]
    ) -> None:
        self.path = path
        self._connect = connect  # opens the file read-only, raising a KnowledgeError on failure
        self._gone = gone  # the error when the file was removed
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._identity: dict[sqlite3.Connection, Identity | None] = {}
        self._closed = False
        self._refresh_lock = threading.Lock()
        self._refresher: sqlite3.Connection | None = None
        self._snapshot: Snapshot | None = None
        self._seen: tuple[Identity | None, int] | None = None  # (file, data_version) it reflects

    def _closed_error(self) -> KnowledgeError:
        # A search racing the bot's shutdown: a notice in the chat, not a traceback.
        return KnowledgeError(
            f"The knowledge base {self.path} was closed (the bot is stopping); "
            "send the message again once it is running."
        )

    def _open(self) -> sqlite3.Connection:
        current = identity(self.path)
        if current is None:
            raise self._gone()
        if self._closed:
            raise self._closed_error()
        conn = self._connect()
        conn.isolation_level = None  # transactions only where asked for (a refresh)
        with self._lock:
            closed = self._closed
            if not closed:
                self._identity[conn] = current
        if closed:  # closed while it was opened: close() cannot see it, so it goes here
            conn.close()
            raise self._closed_error()
        return conn

    def _drop(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._identity.pop(conn, None)
        conn.close()

    def checkout(self) -> sqlite3.Connection:
        """An idle connection to the current file, or a new one."""
        current = identity(self.path)
        while True:
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                conn = self._idle.pop() if self._idle else None
                known = self._identity.get(conn) if conn is not None else None
            if conn is None:
                return self._open()
            if known == current:
                return conn
            self._drop(conn)  # the file was built again: its old connections go

    def checkin(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed and self._identity.get(conn) == identity(self.path):
                self._idle.append(conn)
                return
        self._drop(conn)

    def vectors(self, dimension: int) -> Snapshot:
        """The vectors as last committed; read again only what changed since the last call."""
        with self._refresh_lock:
            if self._closed:  # a new refresher now would never be closed
                raise self._closed_error()
            current = identity(self.path)
            if self._refresher is not None and self._identity.get(self._refresher) != current:
                self._drop(self._refresher)
                self._refresher, self._snapshot = None, None
            if self._refresher is None:
                self._refresher = self._open()
            db = self._refresher
            db.execute("BEGIN")
            try:
                version = int(db.execute("PRAGMA data_version").fetchone()[0])
                seen = (current, version)
                if self._snapshot is None or self._snapshot.dimension != dimension:
                    started = time.perf_counter()
                    self._snapshot = vectors.refresh(db, vectors.empty(dimension))
                    # Seconds at 100,000 chunks: worth a line, as what a bot's start or a
                    # rebuilt file costs the search that waits for it.
                    log.info(
                        "knowledge base %s: %d vectors read in %.2f s",
                        self.path.stem,
                        self._snapshot.size,
                        time.perf_counter() - started,
                    )
                elif seen != self._seen:
                    self._snapshot = vectors.refresh(db, self._snapshot)
                self._seen = seen
            finally:
                db.execute("COMMIT")
            return self._snapshot

    def close(self) -> None:
        with self._refresh_lock, self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            refresher, self._refresher, self._snapshot = self._refresher, None, None
        for conn in [*idle, *([refresher] if refresher else [])]:
            self._drop(conn)
