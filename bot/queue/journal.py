"""Answering a redelivered job once: the turn and "answered up to job X" are one MULTI.

A worker can die after the dialog manager stored a turn but before the job was acknowledged;
the job is then delivered again. :class:`JournaledRedisStore` is the Redis store whose
``append`` — when it runs inside a job's handler (:data:`bot.queue.job.current_job`) — also sets
``P:{chat}:answered`` to the job's entry id in the same MULTI/EXEC as the turns (same ``{chat}``
slot, so it is atomic on Cluster too). A chat's jobs run one after another in entry-id order, so
``answered >= X`` means job X's handler finished (X, or a later job of the chat, stored its
turn); a handler of a redelivered job asks :meth:`answered` first and skips the job then. One
small key per chat, whatever the number of turns; history never holds a turn twice.

What stays at-least-once / at-most-once (README "Scaling out on Redis"): side effects outside
Redis. If a worker dies after the turn was stored but before the channel delivered the final
reply, the redelivered job is skipped and the reply is not sent again (at most once); a job that
stores no turn (a command) is run again (at least once).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from redis.exceptions import RedisError

from bot.errors import StoreError
from bot.queue.job import current_job
from bot.queue.keys import QueueKeys
from bot.stores.base import Turn
from bot.stores.redis import RedisStore

MARKER_TTL = 7 * 24 * 3600  # seconds; a job is redelivered within minutes, a week is generous


def _entry(job_id: str) -> tuple[int, int]:
    ms, _, seq = job_id.partition("-")
    return int(ms), int(seq or 0)


class JournaledRedisStore(RedisStore):
    marker_ttl: int = MARKER_TTL

    @classmethod
    def wrap(cls, store: RedisStore) -> JournaledRedisStore:
        """The same connection pool, prefix and retention as ``store``."""
        journaled = cls(store.client, store.prefix)
        journaled.max_turns = store.max_turns
        journaled.ttl = store.ttl
        return journaled

    def _marker(self, chat: str) -> str:
        return QueueKeys(self.prefix).answered(chat)

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        job = current_job.get()
        if job is None or not job.ordered:
            await super().append(chat, *turns, counters=counters)
            return
        try:
            # One round trip, as RedisStore.append; MULTI makes turns + marker all-or-nothing.
            # (The index lives in another slot: on Cluster send it outside the transaction.)
            async with self._r.pipeline(transaction=True) as pipe:
                self._queue_append(pipe, chat, turns, counters)
                pipe.set(self._marker(chat), job.id, ex=self.marker_ttl)
                pipe.zadd(self._index, {chat: time.time()})
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"Could not save the conversation to Redis: {exc}") from exc

    async def answered(self, chat: str, job_id: str) -> bool:
        """Whether job ``job_id`` (or a later job of ``chat``) has stored its turn."""
        try:
            last = await self._r.get(self._marker(chat))
        except RedisError as exc:
            raise StoreError(f"Could not read the conversation from Redis: {exc}") from exc
        if last is None:
            return False
        text = last.decode() if isinstance(last, bytes) else str(last)
        return _entry(text) >= _entry(job_id)
