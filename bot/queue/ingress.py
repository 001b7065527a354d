"""The producer side: a channel hands each update to :meth:`Ingress.enqueue` before confirming it.

``enqueue`` returns only after Redis has stored the job (XADD answered), so a channel that
acknowledges its update afterwards (Telegram: the next getUpdates offset, or the webhook's 200)
never loses one; if Redis cannot be reached it raises :class:`~bot.errors.StoreError` and the
channel must not acknowledge, so the update is delivered to it again. Durability across a Redis
crash is Redis's: run it with ``appendonly yes`` (docker-compose.yml does).

A channel that may deliver one update twice (a crash after enqueue, before acknowledging) passes
its update id as ``dedupe``: the first job is kept and its entry id returned again.
"""

from __future__ import annotations

import json
from typing import Any

from bot.errors import ConfigError, StoreError
from bot.observe import messaging, metrics, tracing
from bot.queue import scripts
from bot.queue.keys import QueueKeys
from bot.redis import REDIS_ERRORS, RedisClient

DEDUPE_TTL_MS = 24 * 3600 * 1000  # Telegram keeps unconfirmed updates for 24 hours


class Ingress:
    def __init__(
        self,
        redis: RedisClient,
        keys: QueueKeys | None = None,
        *,
        dedupe_ttl_ms: int = DEDUPE_TTL_MS,
    ) -> None:
        self.redis = redis
        self.keys = keys or QueueKeys()
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self._enqueue_once = redis.register_script(scripts.ENQUEUE_ONCE)
        self._checked = False

    async def enqueue(
        self, chat: str, payload: dict[str, Any], *, dedupe: str | None = None
    ) -> str:
        """Store a job for ``chat``; return its entry id once Redis has it.

        Raises StoreError when Redis is unreachable (the caller must not acknowledge the update)
        and ConfigError when workers were deployed with another partition count.
        """
        p = self.keys.partition(chat)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        span = None
        fields: dict[Any, Any] = {"chat": chat, "payload": body}
        if tracing.enabled():  # the trace context rides along as fields of the entry
            span = messaging.start_send(self.keys.jobs(p), self.keys.jobs_template, p)
            fields.update(messaging.headers(span))
        try:
            entry, duplicate = await self._add(p, fields, dedupe)
        except REDIS_ERRORS as exc:
            metrics.redis_error(exc)
            if span is not None:
                messaging.end_send(span, None, error=metrics.redis_error_kind(exc))
            raise StoreError(f"Could not queue the message in Redis: {exc}") from exc
        except BaseException as exc:  # ConfigError, cancellation: the span ends all the same
            if span is not None:
                messaging.end_send(span, None, error=type(exc).__name__)
            raise
        if span is not None:
            messaging.end_send(span, entry, duplicate=duplicate)
        if not duplicate:
            metrics.count(metrics.QUEUE_ENQUEUED)
        return entry

    async def _add(self, p: int, fields: dict[Any, Any], dedupe: str | None) -> tuple[str, bool]:
        """XADD (or ENQUEUE_ONCE under ``dedupe``): the entry id, and whether it was queued
        before (a duplicate update keeps its first entry)."""
        if not self._checked:
            await check_partitions(self.redis, self.keys)
            self._checked = True
        if dedupe is None:
            return str(await self.redis.xadd(self.keys.jobs(p), fields)), False
        keys = [self.keys.jobs(p), self.keys.seen(p, dedupe)]
        more = [x for k, v in fields.items() if k not in messaging.JOB_FIELDS for x in (k, v)]
        entry = await self._enqueue_once(
            keys, [fields["chat"], fields["payload"], self.dedupe_ttl_ms, *more]
        )
        if isinstance(entry, list):  # queued before: ENQUEUE_ONCE's known id
            metrics.count(metrics.INGRESS_UPDATES, 1, "duplicate")
            return str(entry[0]), True
        metrics.count(metrics.INGRESS_UPDATES, 1, "queued")
        return str(entry), False


async def check_partitions(redis: RedisClient, keys: QueueKeys) -> None:
    """Record the partition count on first use; refuse a process configured with another one.

    Chats are mapped to partitions by ``crc32 % count``, so processes that disagree would break
    per-chat order. Changing the count means draining the queue first (stop ingress, wait for
    empty streams, delete ``P:q:partitions``).
    """
    await redis.set(keys.config, keys.partitions, nx=True)
    raw = await redis.get(keys.config)
    stored = raw.decode() if isinstance(raw, bytes) else raw
    if stored is not None and int(stored) != keys.partitions:
        raise ConfigError(
            "FMBOT_QUEUE_PARTITIONS",
            keys.partitions,
            f"this Redis queue was created with {stored} partitions; use {stored} in every "
            "process (changing it needs an empty queue and deleting the key " + keys.config + ")",
        )
