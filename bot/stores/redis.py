"""Redis store (``redis://host:port/db``, Sentinel or Cluster), for production and many processes.

Key layout (``P`` is the key prefix, ``fmbot`` by default; ``{chat}`` is a Redis Cluster hash tag so
every key of one chat lives in one slot):

    P:{chat}:turns   list of JSON turns, oldest first
    P:{chat}:state   hash: the chat's small state (mode, ...)
    P:chats          sorted set of chat ids scored by last update (for listing)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from bot.errors import StoreError
from bot.redis import REDIS_ERRORS, RedisClient, connect
from bot.stores.base import ChatInfo, DialogStore, Turn


class RedisStore(DialogStore):
    """History in Redis: one server, Sentinel's master or a Cluster (see :mod:`bot.redis`).

    Every key of a chat carries the ``{chat}`` hash tag; the ``P:chats`` index, in another slot,
    is only ever written in non-transactional pipelines, which a cluster client splits by node.
    """

    def __init__(self, client: RedisClient, prefix: str = "fmbot") -> None:
        self._r = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "fmbot") -> RedisStore:
        """A store on one server (``redis://``, ``rediss://``): its own pool of 64 connections,
        built as every fmbot client is (:func:`bot.redis.connect.connect`)."""
        # Blocking: under load callers wait (up to 20 s) for a free connection instead of
        # failing with "Too many connections" (seen in the benchmark with 1,000 chats).
        client = connect(url, max_connections=64, timeout=20, socket_connect_timeout=None)
        return cls(client, prefix)

    @property
    def client(self) -> RedisClient:
        """The connection pool, for other per-process users of the same Redis (limits)."""
        return self._r

    def _key(self, chat: str, part: str) -> str:
        return f"{self.prefix}:{{{chat}}}:{part}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:chats"

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        try:
            # One round trip: one RPUSH carries all turns, so they land together; the index
            # update rides along outside any transaction (it lives in another cluster slot).
            async with self._r.pipeline(transaction=False) as pipe:
                self._queue_append(pipe, chat, turns, counters)
                pipe.zadd(self._index, {chat: time.time()})
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not save the conversation to Redis: {exc}") from exc

    def _queue_append(
        self,
        pipe: Any,
        chat: str,
        turns: Sequence[Turn],
        counters: Mapping[str, int] | None,
    ) -> None:
        """Queue the commands of an append on ``pipe`` (the queue's journal does the same in Lua:
        bot.queue.scripts.APPEND_TURNS)."""
        payload = encode_turns(turns)
        turns_key = self._key(chat, "turns")
        pipe.rpush(turns_key, *payload)
        if self.max_turns is not None:
            pipe.ltrim(turns_key, -self.max_turns, -1)
        for key, amount in (counters or {}).items():
            pipe.hincrby(self._key(chat, "state"), key, amount)
        self._expire_later(pipe, chat)

    def _expire_later(self, pipe: Any, chat: str) -> None:
        """Queue TTL refreshes for the chat's keys (Redis expires them; nothing to sweep)."""
        if self.ttl is not None:
            seconds = max(1, int(self.ttl))
            pipe.expire(self._key(chat, "turns"), seconds)
            pipe.expire(self._key(chat, "state"), seconds)

    async def read(self, chat: str, last: int | None = None) -> list[Turn]:
        start = -last if last else 0
        try:
            raw = await self._r.lrange(self._key(chat, "turns"), start, -1)
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not read the conversation from Redis: {exc}") from exc
        return decode_turns(cast(list[str], raw))

    async def load(self, chat: str, last: int | None = None) -> tuple[dict[str, str], list[Turn]]:
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._key(chat, "state"))
                pipe.lrange(self._key(chat, "turns"), -last if last else 0, -1)
                state, raw = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not read the conversation from Redis: {exc}") from exc
        return cast(dict[str, str], state), decode_turns(raw)

    async def reset(self, chat: str) -> None:
        await self._run(
            lambda p: (p.delete(self._key(chat, "turns")), p.zadd(self._index, {chat: time.time()}))
        )

    async def delete(self, chat: str) -> None:
        await self._run(lambda p: self._queue_delete(p, chat))

    def _queue_delete(self, pipe: Any, chat: str) -> None:
        """Queue the commands of :meth:`delete` on ``pipe``."""
        pipe.delete(self._key(chat, "turns"), self._key(chat, "state"))  # one {chat} slot
        pipe.zrem(self._index, chat)

    async def chats(self) -> list[ChatInfo]:
        try:
            if self.ttl is not None:
                # The index is not a per-chat key, so expired chats are swept from it here.
                await self._r.zremrangebyscore(self._index, "-inf", time.time() - self.ttl)
            entries = cast(
                list[tuple[str, float]],
                await self._r.zrevrange(self._index, 0, -1, withscores=True),
            )
            async with self._r.pipeline(transaction=False) as pipe:
                for chat, _ in entries:
                    pipe.llen(self._key(chat, "turns"))
                counts = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not list conversations in Redis: {exc}") from exc
        return [ChatInfo(c, n, s) for (c, s), n in zip(entries, counts, strict=True)]

    async def get_state(self, chat: str) -> dict[str, str]:
        try:
            return cast(dict[str, str], await self._r.hgetall(self._key(chat, "state")))
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not read chat state from Redis: {exc}") from exc

    async def set_state(self, chat: str, **values: str) -> None:
        def build(p: Any) -> None:
            p.hset(self._key(chat, "state"), mapping=dict(values))
            self._expire_later(p, chat)
            p.zadd(self._index, {chat: time.time()})

        await self._run(build)

    async def increment(self, chat: str, **amounts: int) -> None:
        def build(p: Any) -> None:
            for key, amount in amounts.items():
                p.hincrby(self._key(chat, "state"), key, amount)
            self._expire_later(p, chat)

        await self._run(build)

    async def _run(self, build: Callable[[Any], object]) -> None:
        """Queue commands with ``build`` and send them in one round trip."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                build(pipe)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis is unavailable: {exc}") from exc

    async def aclose(self) -> None:
        await self._r.aclose()


def encode_turns(turns: Sequence[Turn]) -> list[str]:
    """Turns as the JSON strings stored in ``P:{chat}:turns``."""
    return [
        json.dumps(
            {"role": t.role, "text": t.text, "at": t.created_at, "meta": t.meta},
            ensure_ascii=False,
        )
        for t in turns
    ]


def decode_turns(raw: Sequence[str]) -> list[Turn]:
    """Turns from the JSON strings of ``P:{chat}:turns``."""
    turns = []
    for item in raw:
        d = json.loads(item)
        turns.append(Turn(d["role"], d["text"], d["at"], d.get("meta", {})))
    return turns
