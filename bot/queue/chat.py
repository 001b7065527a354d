"""A ready-made job handler: feed a job to the dialog manager, publish its replies to Redis.

Jobs carry ``{"text": ..., "user": ..., "admin": false}``. Channels with their own reply path
(Telegram) use their own handler; this one serves ``python -m bot.queue.worker_main``, the
benchmark and the multi-process tests, and is a complete channel for a producer that can read
Redis: replies go to the list ``P:{chat}:replies`` as JSON ``{"job": ID, "events": [...]}``.
When tracing, publishing a reply is its ``fmbot deliver`` span (``fmbot.channel`` ``queue``), a
child of the turn's span (of the job's for a stored reply published again).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from bot.app import make_limits
from bot.dialog import DialogManager, stored_sources
from bot.errors import ConfigError, NotSavedError
from bot.events import FinalText, ImageReply, Incoming, Notice, sources_line
from bot.observe import metrics, tracing
from bot.queue.batch import Command
from bot.queue.cache import ChatCache
from bot.queue.job import Job
from bot.queue.journal import JournaledRedisStore
from bot.queue.keys import QueueKeys
from bot.settings import Settings
from bot.stores.redis import RedisStore
from bot.urls import mask_url

REPLIES_TTL = 24 * 3600  # seconds a reader has to collect replies


class DialogHandler:
    """``await handler(job)``: one turn of the manager per job, answered once (see journal)."""

    def __init__(self, manager: DialogManager, keys: QueueKeys, *, publish: bool = True) -> None:
        if not isinstance(manager.store, JournaledRedisStore):
            raise TypeError("DialogHandler needs a manager on a JournaledRedisStore")
        self.manager = manager
        manager.channel = "queue"  # the generic channel: replies published to Redis
        self.store: JournaledRedisStore = manager.store
        manager.raise_store_errors = True  # the job stays queued and is run again (see Worker)
        self.keys = keys
        self.publish = publish
        self.skipped = 0  # redelivered jobs whose turn was already stored

    async def __call__(self, job: Job) -> None:
        if job.redelivered and (replay := await self.store.replay(job.chat, job.id)).answered:
            self.skipped += 1
            # Stored, but the worker stopped before publishing it: publish the stored reply.
            if replay.reply is not None and self.publish:
                reply = replay.reply
                sources = sources_line(stored_sources(reply))
                stored = final_event(reply.text, replay.complete, sources)
                await self._publish(job, [stored], None, "redelivered", replay.stored_as)
            return
        p = job.payload
        incoming = Incoming(
            job.chat, str(p.get("text", "")), p.get("user"), admin=bool(p.get("admin", False))
        )
        events: list[dict[str, Any]] = []
        turn: metrics.TurnInfo | None = None
        try:
            async with contextlib.aclosing(self.manager.handle(incoming)) as stream:
                async for event in stream:
                    turn = turn or metrics.current_turn.get()  # for the delivery's span
                    if isinstance(event, FinalText):
                        line = sources_line(event.sources)
                        events.append(final_event(event.text, event.complete, line))
                    elif isinstance(event, Notice):
                        events.append({"kind": "notice", "text": event.text, "level": event.kind})
                    elif isinstance(event, ImageReply):
                        events.append({"kind": "image", "prompt": event.prompt})
        except NotSavedError:
            if self.publish:  # the reply, and the notice that it was not saved, still go out
                await self._publish(job, events, turn)
            raise
        if self.publish:
            # Marked delivered as the job the turn is stored as (a merged turn: its newest
            # message's); a job that answered nothing (merged into another's turn) marks nothing.
            stored_as = self.store.stored_as(turn.id) if turn is not None else None
            await self._publish(job, events, turn, stored_as=stored_as)

    async def _publish(
        self,
        job: Job,
        events: list[dict[str, Any]],
        turn: metrics.TurnInfo | None,
        how: str | None = None,
        stored_as: str | None = None,
    ) -> None:
        """``how``: the ``fmbot.reply`` of the delivery's span (else from the final event);
        ``stored_as``: the job the published turn is stored as, marked delivered with it."""
        body = json.dumps({"job": job.id, "events": events}, ensure_ascii=False)
        key = self.keys.replies(job.chat)
        commands: list[Command] = [("RPUSH", key, body), ("EXPIRE", key, REPLIES_TTL)]
        delivery: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if any(e["kind"] in ("final", "image") for e in events):  # a turn's reply: traced
            if stored_as is not None:
                commands.append(self.store.mark(job.chat, stored_as))
            if how is None:
                how = "partial" if any(e.get("complete") is False for e in events) else "complete"
            turn_span = turn.span if turn is not None else None
            delivery = tracing.deliver(turn_span, "queue", how, kind_of=metrics.redis_error_kind)
        with delivery:
            # With the other chats' replies and marks of the moment: one request for all of them.
            await self.store.publish(*commands)


def final_event(text: str, complete: bool, sources: str = "") -> dict[str, Any]:
    event: dict[str, Any] = {"kind": "final", "text": text, "complete": complete}
    if sources:
        event["sources"] = sources
    return event


def journal_manager(manager: DialogManager, settings: Settings, prefix: str) -> None:
    """Put ``manager`` on a :class:`JournaledRedisStore` with key prefix ``prefix``.

    ``build_manager`` opens a plain RedisStore (prefix FMBOT_REDIS_PREFIX); this swaps in the
    journaled store on the same connection pool (and rebuilds the limits, which key by prefix).
    """
    store = manager.store
    if not isinstance(store, RedisStore):
        raise ConfigError(
            "FMBOT_STORE",
            mask_url(settings.store_url),
            "queue workers need redis://HOST:PORT/DB (or redis+sentinel://, redis+cluster://)",
        )
    journaled = JournaledRedisStore.wrap(store)
    journaled.cache = ChatCache(settings.worker_cache_mb * 2**20)
    journaled.prefix = prefix
    manager.store = journaled
    manager.limits = make_limits(settings, journaled)
