"""Embedded store on a SQLite file (``sqlite:///path/to/fmbot.db``), the default: no server needed.

WAL mode and a busy timeout let a console and a bot process share one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiosqlite

from bot.errors import StoreError
from bot.stores.base import ChatInfo, DialogStore, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    chat TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS turns_by_chat ON turns (chat, id);
"""

_TOUCH = (
    "INSERT INTO chats (chat, updated_at) VALUES (?, ?) "
    "ON CONFLICT(chat) DO UPDATE SET updated_at = excluded.updated_at"
)


class SQLiteStore(DialogStore):
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # One connection serves every coroutine of the process; without this lock two writers'
        # statements interleave inside one transaction (the contract's concurrency test saw it).
        self._write_lock = asyncio.Lock()
        self._last_sweep = 0.0

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                # IMMEDIATE takes the write lock up front, so other processes wait (busy_timeout)
                # instead of failing halfway through.
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.commit()
            except BaseException as exc:
                # Also on cancellation: an open transaction would break every later write.
                # Unconditional, and queued on aiosqlite's thread: a cancelled BEGIN may still
                # run there after we were cancelled, so checking in_transaction here would race.
                await asyncio.shield(self._db.rollback())
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"Could not {what} in {self.path}: {exc}") from exc
                raise

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, timeout=30, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=30000")
            await db.executescript(_SCHEMA)
            await db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"Cannot open the SQLite store at {path}: {exc}") from exc
        return cls(db, path)

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        rows = [(chat, t.role, t.text, t.created_at, json.dumps(t.meta)) for t in turns]
        # One transaction: the turns land together or not at all.
        async with self._transaction("save the conversation") as db:
            await db.executemany(
                "INSERT INTO turns (chat, role, text, created_at, meta) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            if self.max_turns is not None:
                await db.execute(
                    "DELETE FROM turns WHERE chat = ? AND id NOT IN "
                    "(SELECT id FROM turns WHERE chat = ? ORDER BY id DESC LIMIT ?)",
                    (chat, chat, self.max_turns),
                )
            await db.execute(_TOUCH, (chat, time.time()))
            if counters:
                await self._add_counters(db, chat, counters)

    async def _expire(self) -> None:
        """Delete chats idle for longer than ``ttl`` (cheap: one indexed-by-PK scan of chats)."""
        if self.ttl is None:
            return
        now = time.time()
        # A write transaction per read would contend with other processes: sweep at most every
        # few seconds (a chat may outlive its TTL by that much).
        if now - self._last_sweep < min(60.0, self.ttl / 10):
            return
        self._last_sweep = now
        cutoff = now - self.ttl
        async with self._transaction("expire old conversations") as db:
            await db.execute(
                "DELETE FROM turns WHERE chat IN (SELECT chat FROM chats WHERE updated_at < ?)",
                (cutoff,),
            )
            await db.execute("DELETE FROM chats WHERE updated_at < ?", (cutoff,))

    async def read(self, chat: str, last: int | None = None) -> list[Turn]:
        await self._expire()
        query = "SELECT role, text, created_at, meta FROM turns WHERE chat = ? ORDER BY id DESC"
        params: tuple[object, ...] = (chat,)
        if last:
            query += " LIMIT ?"
            params = (chat, last)
        async with self._db.execute(query, params) as cursor:
            rows = list(await cursor.fetchall())
        rows.reverse()
        return [Turn(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def reset(self, chat: str) -> None:
        async with self._transaction("reset the conversation") as db:
            await db.execute("DELETE FROM turns WHERE chat = ?", (chat,))
            await db.execute(_TOUCH, (chat, time.time()))

    async def delete(self, chat: str) -> None:
        async with self._transaction("delete the conversation") as db:
            await db.execute("DELETE FROM turns WHERE chat = ?", (chat,))
            await db.execute("DELETE FROM chats WHERE chat = ?", (chat,))

    async def chats(self) -> list[ChatInfo]:
        await self._expire()
        query = (
            "SELECT c.chat, COUNT(t.id), c.updated_at FROM chats c "
            "LEFT JOIN turns t ON t.chat = c.chat GROUP BY c.chat ORDER BY c.updated_at DESC"
        )
        async with self._db.execute(query) as cursor:
            return [ChatInfo(r[0], r[1], r[2]) for r in await cursor.fetchall()]

    async def get_state(self, chat: str) -> dict[str, str]:
        await self._expire()
        async with self._db.execute("SELECT state FROM chats WHERE chat = ?", (chat,)) as cursor:
            row = await cursor.fetchone()
        return dict(json.loads(row[0])) if row else {}

    async def set_state(self, chat: str, **values: str) -> None:
        # json_patch merges inside SQLite, so writers in other processes cannot lose keys either.
        async with self._transaction("save the chat state") as db:
            await db.execute(
                "INSERT INTO chats (chat, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(chat) DO UPDATE SET state = json_patch(chats.state, excluded.state), "
                "updated_at = excluded.updated_at",
                (chat, json.dumps(values), time.time()),
            )

    async def increment(self, chat: str, **amounts: int) -> None:
        async with self._transaction("update usage counters") as db:
            await self._add_counters(db, chat, amounts)

    @staticmethod
    async def _add_counters(
        db: aiosqlite.Connection, chat: str, amounts: Mapping[str, int]
    ) -> None:
        """Inside a write transaction: add to integer counters in the chat's state."""
        async with db.execute("SELECT state FROM chats WHERE chat = ?", (chat,)) as cursor:
            row = await cursor.fetchone()
        state = dict(json.loads(row[0])) if row else {}
        for key, amount in amounts.items():
            state[key] = str(int(state.get(key, "0")) + amount)
        await db.execute(
            "INSERT INTO chats (chat, state, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(chat) DO UPDATE SET state = excluded.state, "
            "updated_at = excluded.updated_at",
            (chat, json.dumps(state), time.time()),
        )

    async def aclose(self) -> None:
        await self._db.close()
