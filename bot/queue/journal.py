"""Answering a redelivered job once: the turn and "answered up to job X" are written together.

A worker can die after the dialog manager stored a turn but before the job was acknowledged;
the job is then delivered again. :class:`JournaledRedisStore` is the Redis store whose
``append`` — when it runs inside a job's handler (:data:`bot.queue.job.current_job`) — also sets
``P:{chat}:answered`` to the job's entry id in the same atomic step as the turns: one Lua script
(:data:`bot.queue.scripts.APPEND_TURNS`) over the chat's keys only (same ``{chat}`` slot, so it
is atomic on Cluster too). The ``P:chats`` index lives in another slot, so it is updated next to
the script in the same non-transactional pipeline: one round trip on one server, one request per
node on a Cluster. A chat's jobs run one after another in entry-id order, so
``answered >= X`` means job X's handler finished (X, or a later job of the chat, stored its
turn); a handler of a redelivered job asks :meth:`replay` first and skips the job then. One
small key per chat, whatever the number of turns; history never holds a turn twice.

Side effects outside Redis (README "Scaling out on Redis"): the handler that delivered a turn's
reply marks it delivered (:meth:`JournaledRedisStore.delivered`, ``P:{chat}:delivered``), naming
the job the turn was stored as (:meth:`JournaledRedisStore.stored_as`): a job that delivered
nothing marks nothing, so with overlapping jobs (busy policies merge, interrupt) one finishing
cannot mark another's reply that is stored but still being sent. If a worker dies after the turn
was stored but before that mark, the redelivered job sends the stored reply
(:meth:`JournaledRedisStore.replay`) instead of running the turn again: at least once, and
twice only if it died between the channel's send and the mark. A job that stores no turn (a
command) is run again (at least once). The marks of all chats issued within
:data:`DELIVERED_WINDOW` go to Redis in one request (:class:`~bot.queue.batch.Batcher`), so a
delivered turn costs at most one round trip beyond the journaled append, and under load a share
of one. The channel's handler returns (and its job is acknowledged) only once its mark is
written, so the window only widens the gap between send and mark by a few milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    TimeoutError,
    TryAgainError,
)

from bot.errors import GivenUpError, StoreError
from bot.observe import metrics
from bot.queue.batch import Batcher, Command
from bot.queue.cache import ChatCache
from bot.queue.job import Job, current_job
from bot.queue.keys import QueueKeys
from bot.queue.scripts import APPEND_TURNS, MARK_DELIVERED
from bot.redis import REDIS_ERRORS, RedisClient, is_cluster
from bot.stores.base import Turn
from bot.stores.redis import RedisStore, decode_turns, encode_turns

log = logging.getLogger(__name__)

MARKER_TTL = 7 * 24 * 3600  # seconds; a job is redelivered within minutes, a week is generous
# A turn's store write that meets an outage is tried again this often (doubling) while the worker
# holds its lease: a Redis restart costs the turn seconds, not its place in the history.
OUTAGE_WAIT_FIRST = 0.1
OUTAGE_WAIT_MAX = 1.0
# Redis away or changing hands, as opposed to refusing the write (WRONGTYPE, OOM, MISCONF), which
# waiting does not cure.
OUTAGE_ERRORS = (ConnectionError, TimeoutError, ReadOnlyError, ClusterDownError, TryAgainError)
DEAD_PAGE = 500  # dead-stream entries read per request by /forget
APPEND_SHA = hashlib.sha1(APPEND_TURNS.encode()).hexdigest()
# How long the first delivered mark of a batch waits for others: marks follow the channel's
# network replies, which arrive spread over a few steps of the event loop.
DELIVERED_WINDOW = 0.002
# Turns stored but not yet marked delivered that this process remembers the job ids of (see
# stored_as); a turn whose delivery failed is forgotten after this many newer ones.
STORED_AS_MAX = 10_000


_T = TypeVar("_T")
Entries = list[tuple[Any, Mapping[Any, Any]]]  # XRANGE's reply, str or bytes by client


def _entry(job_id: str) -> tuple[int, int]:
    ms, _, seq = job_id.partition("-")
    return int(ms), int(seq or 0)


class JournaledRedisStore(RedisStore):
    """The queue workers' store: journaled appends, and reads answered from the worker's copy of
    the chats whose lease it holds (:mod:`bot.queue.cache`) when the job is in its chat's lane."""

    marker_ttl: int = MARKER_TTL

    def __init__(
        self, client: RedisClient, prefix: str = "fmbot", *, cache: ChatCache | None = None
    ) -> None:
        super().__init__(client, prefix)
        self.cache = cache if cache is not None else ChatCache()
        self._batch = Batcher(client)
        self._marks = Batcher(client, window=DELIVERED_WINDOW)
        self._stored_as: dict[str, str] = {}  # turn id (meta "turn") -> job id it is stored as

    @classmethod
    def wrap(cls, store: RedisStore) -> JournaledRedisStore:
        """The same connection pool, prefix and retention as ``store``."""
        journaled = cls(store.client, store.prefix)
        journaled.max_turns = store.max_turns
        journaled.ttl = store.ttl
        return journaled

    def _marker(self, chat: str) -> str:
        return QueueKeys(self.prefix).answered(chat)

    def _delivered(self, chat: str) -> str:
        return QueueKeys(self.prefix).delivered(chat)

    def _lane_job(self, chat: str) -> Job | None:
        """The job running this call in its chat's lane, if any: only then is the copy used."""
        job = current_job.get()
        if job is None or not job.ordered or job.chat != chat:
            return None
        return job

    async def load(self, chat: str, last: int | None = None) -> tuple[dict[str, str], list[Turn]]:
        job = self._lane_job(chat)
        if job is None or job.tenure is None:
            return await super().load(chat, last)
        cached = self.cache.get(chat, job.tenure, last)
        if cached is not None:
            return cached
        epoch = self.cache.epoch
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._key(chat, "state"))
                pipe.lrange(self._key(chat, "turns"), -last if last else 0, -1)
                pipe.llen(self._key(chat, "turns"))  # what the copy must match later
                state, raw, length = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not read the conversation from Redis: {exc}") from exc
        turns = decode_turns(raw)
        self.cache.fill(chat, job.tenure, state, turns, last, self.ttl, epoch, int(length))
        return state, turns

    async def append(
        self, chat: str, *turns: Turn, counters: Mapping[str, int] | None = None
    ) -> None:
        job = self._lane_job(chat)
        if job is None:
            await self._changed(chat, super().append(chat, *turns, counters=counters))
            return
        keys = [self._key(chat, "turns"), self._key(chat, "state"), self._marker(chat)]
        ttl = max(1, int(self.ttl)) if self.ttl is not None else 0
        args: list[str | int] = [job.id, self.marker_ttl, self.max_turns or 0, ttl, len(turns)]
        args += encode_turns(turns)
        for name, amount in (counters or {}).items():
            args += [name, amount]
        sent = time.monotonic()
        existed, length = await self._held(
            job, chat, "save the conversation", lambda: self._append_once(chat, keys, args)
        )
        if int(length) < 0:  # this job (or a later one) had stored its turn: nothing written
            log.info("job %s of chat %s was already stored; not stored again", job.id, chat)
            self.cache.drop(chat)
            return
        self._remember(turns, job.id)
        self.cache.appended(
            chat,
            job.tenure,
            turns,
            counters,
            max_turns=self.max_turns,
            ttl=self.ttl,
            existed=bool(int(existed)),
            length=int(length),
            sent=sent,
        )

    def _remember(self, turns: tuple[Turn, ...], job_id: str) -> None:
        for turn in turns:
            turn_id = turn.meta.get("turn")  # the dialog manager's id of the turn, on its reply
            if turn.role == "assistant" and isinstance(turn_id, str):
                self._stored_as[turn_id] = job_id
        while len(self._stored_as) > STORED_AS_MAX:
            del self._stored_as[next(iter(self._stored_as))]

    def stored_as(self, turn_id: str) -> str | None:
        """The job id the turn ``turn_id`` (``TurnInfo.id``, its reply's meta ``turn``) was
        journaled as by this process, once: what the handler that delivered it passes to
        :meth:`delivered`. For a merged turn that is its newest message's job, whichever job's
        handler delivered it. None if it was not stored here (not stored at all, or a later job
        of the chat had stored its turn first)."""
        return self._stored_as.pop(turn_id, None)

    async def _held(self, job: Job, chat: str, what: str, write: Callable[[], Awaitable[_T]]) -> _T:
        """``write()``, tried again through a Redis outage while the job's worker holds its lease.

        Redis briefly away (a restart, a failover) is not the turn's failure: while the lease
        holds the job is this worker's to finish, so the write waits for Redis instead of the
        user being told "not saved". Both writes that use this are safe to send twice (the
        append script refuses a second write of the job's entry; the delivered mark never moves
        back). If the lease lapses meanwhile the tenure ends and :class:`GivenUpError` says so:
        the next owner answers the job."""
        wait = OUTAGE_WAIT_FIRST
        while True:
            if job.tenure is not None and job.tenure.ended:
                raise _given_up(job)
            try:
                return await write()
            except asyncio.CancelledError:
                self.cache.drop(chat)  # the write may or may not have happened
                raise
            except REDIS_ERRORS as exc:
                self.cache.drop(chat)  # the write may or may not have happened
                if job.tenure is None or not isinstance(exc, OUTAGE_ERRORS):
                    raise StoreError(f"Could not {what} in Redis: {exc}") from exc
                if job.tenure.ended:
                    raise _given_up(job) from exc
                metrics.redis_error(exc)  # waited out here: no caller sees it
                log.warning(
                    "job %s of chat %s: Redis unavailable (%s); trying to %s again in %.1f s",
                    job.id,
                    chat,
                    exc,
                    what,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, OUTAGE_WAIT_MAX)

    async def _append_once(
        self, chat: str, keys: list[str], args: list[str | int]
    ) -> tuple[int, int]:
        """One journaled write: the script's reply (existed, length); Redis errors raised."""
        # redis-py refuses EVALSHA in cluster pipelines (it could not load a missing script).
        script = ("EVAL", APPEND_TURNS) if is_cluster(self._r) else ("EVALSHA", APPEND_SHA)
        for attempt in (1, 2):
            # One request, shared with the other turns that end in this step of the event
            # loop (bot.queue.batch). The index is in another slot: it rides along outside
            # the script (a cluster pipeline splits them by node).
            reply, indexed = await self._batch.run(
                (*script, len(keys), *keys, *args), ("ZADD", self._index, time.time(), chat)
            )
            if isinstance(reply, NoScriptError) and attempt == 1:
                # First use on this server (or it restarted): load, retry.
                await self._r.script_load(APPEND_TURNS)
                continue
            for result in (reply, indexed):
                if isinstance(result, Exception):
                    raise result
            existed, length = reply
            return int(existed), int(length)
        raise AssertionError("unreachable: the second attempt returns or raises")

    # Writes the cache does not model: drop the chat's entry before and after (see cache).

    async def reset(self, chat: str) -> None:
        await self._changed(chat, super().reset(chat))

    async def delete(self, chat: str) -> None:
        """``/forget``: the chat's turns, state, index entry, ``delivered`` marker, reply outbox
        and failed jobs (in the dead stream) go. ``P:{chat}:answered`` stays until its TTL (at
        most :data:`MARKER_TTL`): a job of the chat stored before the ``/forget`` but not yet
        acknowledged (the worker died) would otherwise be answered, and its message stored,
        again when redelivered. It holds only a stream entry id (the time the message was
        queued)."""
        keys = QueueKeys(self.prefix)

        def build(p: Any) -> None:
            self._queue_delete(p, chat)
            p.delete(keys.delivered(chat), keys.replies(chat))  # one {chat} slot

        await self._changed(chat, self._run(build))
        await self._delete_dead_letters(chat)

    async def _delete_dead_letters(self, chat: str) -> None:
        """Remove the chat's jobs from its partition's dead stream (they hold its messages).

        The partition count is the one the queue recorded (``P:q:partitions``): the store is
        not told it, and a queue that never ran has no dead stream."""
        try:
            recorded = await self._r.get(QueueKeys(self.prefix).config)
            if recorded is None:
                return
            keys = QueueKeys(self.prefix, int(_text(recorded)))
            dead = keys.dead(keys.partition(chat))
            start = "-"
            while True:
                page = cast(Entries, await self._r.xrange(dead, min=start, count=DEAD_PAGE))
                ids = [_text(i) for i, fields in page if _field(fields, "chat") == chat]
                if ids:
                    await self._r.xdel(dead, *ids)
                if len(page) < DEAD_PAGE:
                    return
                start = "(" + _text(page[-1][0])
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not delete the chat's failed jobs in Redis: {exc}") from exc

    def kept_after_delete(self) -> str:
        days = self.marker_ttl // 86400
        span = f"{days} days" if days > 1 else f"{self.marker_ttl // 3600} hours"
        return (
            "Kept for the message queue: the id of this chat's last answered message (the time "
            "it was queued, no text) and, for an album (pictures sent as one message), those of "
            f"its first and last pictures, for at most {span}, so that a message redelivered "
            "after a crash is not answered twice."
        )

    async def set_state(self, chat: str, **values: str) -> None:
        await self._changed(chat, super().set_state(chat, **values))

    async def increment(self, chat: str, **amounts: int) -> None:
        await self._changed(chat, super().increment(chat, **amounts))

    async def _changed(self, chat: str, write: Awaitable[None]) -> None:
        self.cache.drop(chat)
        try:
            await write
        finally:
            self.cache.drop(chat)

    async def replay(self, chat: str, job_id: str) -> Replay:
        """What a redelivered job finds, in one request: whether its turn is stored (it, or a
        later job of the chat, stored one), and if so the stored reply that answers it when no
        channel confirmed delivering it (the worker stopped in between) and it can be sent again
        as text."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.get(self._marker(chat))
                pipe.get(self._delivered(chat))
                pipe.lrange(self._key(chat, "turns"), -1, -1)
                answered, delivered, last = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not read the conversation from Redis: {exc}") from exc
        if answered is None or _entry(_text(answered)) < _entry(job_id):
            return Replay(answered=False)  # not stored: the job runs its turn
        if delivered is not None and _entry(_text(delivered)) >= _entry(_text(answered)):
            return Replay(answered=True)
        turns = decode_turns(last)
        if not turns or turns[0].role != "assistant" or not turns[0].text:
            return Replay(answered=True)  # e.g. interrupted before its first word: nothing to send
        if turns[0].meta.get("kind") == "image":
            return Replay(answered=True)  # the picture itself is not stored: it cannot be resent
        return Replay(answered=True, reply=turns[0], stored_as=_text(answered))

    async def delivered(self, chat: str, job_id: str) -> None:
        """Record that a channel delivered the reply of the turn stored as job ``job_id``
        (:meth:`stored_as`, or :attr:`Replay.stored_as` for a stored reply sent again); the
        mark never moves back.

        The mark shares one request with the other chats' marks issued within
        :data:`DELIVERED_WINDOW`. In its chat's lane it waits out a Redis outage like the turn's
        write: a job whose mark is missing when its partition is replayed has its reply sent
        again."""
        job = self._lane_job(chat)
        if job is not None:
            await self._held(
                job, chat, "record the delivery", lambda: self._send_marks(self.mark(chat, job_id))
            )
            return
        try:
            await self._send_marks(self.mark(chat, job_id))
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not record the delivery in Redis: {exc}") from exc

    async def publish(self, *commands: Command) -> None:
        """A channel's own writes of a reply (e.g. a list its reader polls), usually ending
        with :meth:`mark`, sent with the delivered marks of other chats (one request). Not
        retried: StoreError when Redis fails them."""
        try:
            await self._send_marks(*commands)
        except REDIS_ERRORS as exc:
            raise StoreError(f"Could not publish the reply to Redis: {exc}") from exc

    def mark(self, chat: str, job_id: str) -> Command:
        """:meth:`delivered` as a command for :meth:`publish`. EVAL, not EVALSHA: the script is
        short, and a server that lost it (a restart) needs no second request."""
        return ("EVAL", MARK_DELIVERED, 1, self._delivered(chat), job_id, self.marker_ttl)

    async def _send_marks(self, *commands: Command) -> None:
        for reply in await self._marks.run(*commands):
            if isinstance(reply, Exception):
                raise reply


@dataclass(frozen=True, slots=True)
class Replay:
    """See :meth:`JournaledRedisStore.replay`."""

    answered: bool
    reply: Turn | None = None  # stored but not delivered: send this instead of skipping
    #: The job ``reply`` is stored as (the answered marker): to mark once it was sent again.
    stored_as: str | None = None

    @property
    def complete(self) -> bool:
        """Whether ``reply`` is a whole answer (not one the user stopped)."""
        return self.reply is not None and self.reply.meta.get("status", "complete") == "complete"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(fields: Mapping[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else _text(value)


def _given_up(job: Job) -> GivenUpError:
    return GivenUpError(f"job {job.id} was given up; the worker that takes it over answers it")
