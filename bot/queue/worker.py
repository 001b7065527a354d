"""The consumer side: any number of worker processes sharing one Redis, each chat in strict order.

Design (Redis is the broker; this module only decides who reads which stream):

* Jobs live in ``P`` partitions, streams ``P:{q:N}:jobs``; a chat always maps to the same
  partition (``crc32(chat) % P``), so its jobs are totally ordered by stream entry id.
* A partition is processed by one worker at a time: the holder of its lease ``P:{q:N}:lease``
  (``SET NX PX`` via the CLAIM script, renewed by the same script only while the token is still
  ours, given up by RELEASE only if it is). Inside a partition chats run concurrently, each chat
  in its own FIFO lane (see :mod:`bot.queue.partition`). A partition rather than a per-chat
  lease keeps Redis work independent of the number of chats: one lease renewal per partition per
  heartbeat, one blocking read per owned partition, no per-chat lock round trips.
* Membership: every ``heartbeat`` seconds a worker runs HEARTBEAT (a deadline in the sorted set
  ``P:q:workers`` on the Redis clock; expired members are dropped), gets the sorted list of live
  workers and wants the partitions ``p`` with ``live[p % len(live)] == me`` — an even share.
  It claims those, and drains then releases the ones it holds but no longer wants (a worker
  joined): the new owner can only take a lease after the old owner finished its running jobs.
* Failure: a worker that dies stops renewing; its leases and membership expire after
  ``lease_ms`` and the survivors take its partitions over at the next heartbeat. The new owner
  replays the consumer group's pending entries (XAUTOCLAIM) before reading new ones; a replayed
  job has ``attempt > 1`` so the handler can check whether it was already answered
  (:mod:`bot.queue.journal`). Jobs are acknowledged (XACK + XDEL) only after their handler
  returned.
* A worker that cannot renew a lease in time (Redis unreachable, event loop stalled) stops that
  partition's jobs itself once ``0.8 × lease_ms`` has passed since the last renewal was sent, before
  anyone else can take it over. (A process paused longer than that between two checks — a
  stopped VM — can still overlap with the new owner: leases are not fencing tokens.)
* Redis unreachable: every loop catches the connection errors, backs off with jitter and
  resumes on its own; running handlers are retried in place. No process exits.

Plugging a channel in (the Telegram adapter's ``--role``):

* ingress (``fmbot telegram --role ingress``): for each update, ``await ingress.enqueue(chat,
  update.model_dump(mode="json", exclude_none=True), dedupe=str(update.update_id))`` *before*
  confirming it — polling: before the next getUpdates offset passes it; webhook: before
  answering 200. On :class:`~bot.errors.StoreError` do not confirm (Telegram redelivers). ``chat``
  must be the key the conversation is ordered by (chat id, plus topic id in forum groups).
* worker (``fmbot telegram --role worker``): ``Worker(redis, handler).run()`` with ``async def
  handler(job): await dispatcher.feed_update(bot, Update.model_validate(job.payload))``, the
  manager built on :class:`~bot.queue.journal.JournaledRedisStore` and, for ``job.redelivered``,
  a check of ``store.replay(chat_key, job.id)`` before running the turn (skip it when
  ``answered``; send ``reply`` if there is one). ``immediate`` may
  let ``/stop`` and callback queries bypass their chat's lane so they reach a running turn.
  On SIGTERM call ``await worker.stop(grace)``.
* all (``--role all``): both in one process.

Within one chat the worker runs jobs one at a time. For the dialog manager's busy policies
``merge`` and ``interrupt``, which act on messages that arrive while a turn runs, pass
``Tuning(overlap=True)``: a chat's next job then starts as soon as the previous one has reached
the manager, and acknowledgements stay in entry order (see :mod:`bot.queue.partition`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from bot.observe import metrics
from bot.queue import scripts
from bot.queue.backoff import TRANSIENT, Backoff, trouble
from bot.queue.ingress import check_partitions
from bot.queue.keys import QueueKeys
from bot.queue.partition import Handler, PartitionRunner, Tuning
from bot.redis import RedisClient

log = logging.getLogger(__name__)

LEASE_MS = 10_000
HEARTBEAT = 2.0
RENEW_MARGIN = 0.8  # a lease is trusted for this share of its TTL after the renewal was sent
# Turns a worker runs at once (the Telegram worker's too): a real model's turn mostly waits for
# tokens, so many run side by side.
CONCURRENCY = 256


@dataclass(slots=True)
class _Owned:
    runner: PartitionRunner
    deadline: float  # loop time after which we no longer trust the lease
    releasing: asyncio.Task[None] | None = None


class Worker:
    """Runs ``handler(job)`` for every enqueued job, one chat at a time, until :meth:`stop`."""

    def __init__(
        self,
        redis: RedisClient,
        handler: Handler,
        *,
        keys: QueueKeys | None = None,
        name: str | None = None,
        lease_ms: int = LEASE_MS,
        heartbeat: float = HEARTBEAT,
        concurrency: int = CONCURRENCY,
        tuning: Tuning | None = None,
    ) -> None:
        self.redis = redis
        self.handler = handler
        self.keys = keys or QueueKeys()
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease_ms = lease_ms
        self.heartbeat = min(heartbeat, lease_ms / 3000)  # at least 3 renewals per lease
        self.tuning = tuning or Tuning()
        self.grace = 30.0
        self._limit = asyncio.Semaphore(concurrency)
        self._owned: dict[int, _Owned] = {}
        self._members: list[str] = []
        self._stopping = asyncio.Event()
        self._aborting: set[asyncio.Task[None]] = set()  # runners stopped by _drop_untrusted
        self._stopped = asyncio.Event()
        self._running = False
        self._handled_before = 0
        self._claim = redis.register_script(scripts.CLAIM)
        self._release = redis.register_script(scripts.RELEASE)
        self._heartbeat = redis.register_script(scripts.HEARTBEAT)

    @property
    def partitions(self) -> list[int]:
        """Partitions this worker processes right now."""
        return sorted(self._owned)

    @property
    def members(self) -> list[str]:
        """Live workers as of the last heartbeat."""
        return list(self._members)

    @property
    def handled(self) -> int:
        """Jobs this worker has finished (handler returned or job buried)."""
        return self._handled_before + sum(o.runner.handled for o in self._owned.values())

    async def run(self) -> None:
        """Work until :meth:`stop`; survives Redis outages. Raises ConfigError only."""
        self._running = True
        backoff = Backoff()
        checked = False
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                delay = self.heartbeat
                try:
                    if not checked:
                        await check_partitions(self.redis, self.keys)
                        checked = True
                    # Bounded: a stalled connection must not keep us from dropping old leases.
                    await asyncio.wait_for(self._round(), timeout=self.lease_ms / 2000)
                    if metrics.enabled():
                        await self._sample()
                    backoff.reset()
                except TRANSIENT as exc:
                    delay = backoff.next()
                    log.warning(
                        "worker %s: %s (%s); retry in %.1fs", self.name, trouble(exc), exc, delay
                    )
                self._drop_untrusted(loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), timeout=min(delay, self.heartbeat)
                    )
        finally:
            try:
                await self._shutdown()
            finally:
                self._stopped.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Finish running jobs (up to ``grace`` s), hand the partitions over, and return."""
        self.grace = grace
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    # --- membership and leases ---

    async def _round(self) -> None:
        members = await self._heartbeat(
            keys=[self.keys.workers], args=[self.name, self.lease_ms, "0"]
        )
        self._members = sorted(str(m) for m in members)
        n = len(self._members)
        wanted = {p for p in range(self.keys.partitions) if self._members[p % n] == self.name}
        # Renew what we hold (also while draining it), take what we want.
        await self._renew(sorted(wanted | set(self._owned)), wanted)
        for p, owned in list(self._owned.items()):
            if p not in wanted and owned.releasing is None:
                owned.releasing = asyncio.create_task(self._hand_over(p))

    async def _renew(self, partitions: list[int], wanted: set[int]) -> None:
        """Renew the leases of ``partitions`` we hold; take the free ones that are ``wanted``."""
        sent = asyncio.get_running_loop().time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                await self._claim(
                    keys=[self.keys.lease(p)],
                    args=[self.name, self.lease_ms],
                    client=pipe,  # type: ignore[arg-type]
                )
            results = await pipe.execute()
        give_back: list[int] = []
        for p, held in zip(partitions, results, strict=True):
            owned = self._owned.get(p)
            if held == 2 and owned is not None:
                # Our lease lapsed or Redis lost it, and we took it again: another worker may
                # have run its chats meanwhile, or Redis lost their data. Start a new tenure.
                log.warning("worker %s: lease of partition %s had lapsed; restarting", self.name, p)
                metrics.count(metrics.QUEUE_LEASE_LOSSES, 1, "lapsed")
                await self._forget(p, abort=True)
                owned = None
            if not held:
                if owned is not None:
                    log.warning("worker %s: lost the lease of partition %s", self.name, p)
                    metrics.count(metrics.QUEUE_LEASE_LOSSES, 1, "taken")
                    await self._forget(p, abort=True)
            elif owned is not None:
                owned.deadline = sent + RENEW_MARGIN * self.lease_ms / 1000
            elif p in wanted:
                self._take(p, sent)
            else:  # a hand-over released it while this renewal was on its way: give it back
                give_back.append(p)
        if give_back:  # after every result was acted on; if this fails the leases expire
            with contextlib.suppress(*TRANSIENT):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for p in give_back:
                        lease = [self.keys.lease(p)]
                        await self._release(keys=lease, args=[self.name], client=pipe)  # type: ignore[arg-type]
                    await pipe.execute()

    async def _sample(self) -> None:
        """The backlog gauges of the partitions we own: TIME, then one pipelined round trip
        (keyless TIME on its own: a Cluster pipeline needs keys). Never fails the round."""
        owned = sorted(self._owned)
        try:
            async with asyncio.timeout(self.lease_ms / 2000):
                now = await self.redis.time()
                async with self.redis.pipeline(transaction=False) as pipe:
                    for p in owned:
                        pipe.xlen(self.keys.jobs(p))
                        pipe.xrange(self.keys.jobs(p), count=1)  # acknowledged jobs are deleted
                    replies = await pipe.execute()
        except Exception as exc:  # only gauges are missed; the next heartbeat samples again
            log.debug("worker %s: backlog not sampled (%s)", self.name, exc)
            return
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        for i, p in enumerate(owned):
            pending, first = replies[2 * i], replies[2 * i + 1]
            oldest = _ms_of(first[0][0]) if first else now_ms
            metrics.backlog(p, int(pending), max(0, now_ms - oldest) / 1000)

    def _take(self, p: int, sent: float) -> None:
        runner = PartitionRunner(
            self.redis, self.keys, p, self.name, self.handler, self.tuning, self._limit
        )
        self._owned[p] = _Owned(runner, sent + RENEW_MARGIN * self.lease_ms / 1000)
        runner.start()
        metrics.owned_partitions(len(self._owned))
        log.info("worker %s: took partition %s", self.name, p)

    async def _hand_over(self, p: int) -> None:
        """Another worker should own ``p`` now: finish its running jobs, then release it."""
        owned = self._owned[p]
        await owned.runner.drain(self.grace)
        if self._owned.get(p) is not owned:
            return  # dropped meanwhile (lease lost or not renewed in time): not ours to release
        self._forget_runner(p)
        with contextlib.suppress(*TRANSIENT):  # if this fails the lease simply expires
            await self._release(keys=[self.keys.lease(p)], args=[self.name])
        log.info("worker %s: handed partition %s over", self.name, p)

    async def _forget(self, p: int, *, abort: bool) -> None:
        owned = self._owned.get(p)
        if owned is None:
            return
        if owned.releasing is not None:
            owned.releasing.cancel()
        if abort:
            await owned.runner.abort()
        self._forget_runner(p)

    def _forget_runner(self, p: int) -> None:
        owned = self._owned.pop(p, None)
        if owned is not None:
            self._handled_before += owned.runner.handled
            metrics.owned_partitions(len(self._owned))
            metrics.forget_partition(p)

    def _drop_untrusted(self, now: float) -> None:
        # Also partitions being handed over: their running jobs must stop before the lease can
        # pass to the new owner, however long they would still take.
        for p, owned in list(self._owned.items()):
            if now > owned.deadline:
                log.warning(
                    "worker %s: could not renew partition %s in time; stopping it", self.name, p
                )
                metrics.count(metrics.QUEUE_LEASE_LOSSES, 1, "not_renewed")
                if owned.releasing is not None:
                    owned.releasing.cancel()
                owned.runner.tenure.ended = True  # now, before any of its jobs writes again
                self._forget_runner(p)
                abort = asyncio.create_task(owned.runner.abort())
                self._aborting.add(abort)
                abort.add_done_callback(self._aborting.discard)

    async def _shutdown(self) -> None:
        """Leave, finish the running jobs (up to ``grace`` s) and release the partitions.

        The leases are renewed until each partition is released, so a reply that takes longer
        than a lease is not taken over (and answered twice) while it is still being finished.
        """
        loop = asyncio.get_running_loop()
        with contextlib.suppress(*TRANSIENT):
            # Out of the membership first: the others plan to take our partitions, and can as
            # soon as each is released.
            await self._heartbeat(keys=[self.keys.workers], args=[self.name, self.lease_ms, "1"])
        for p, owned in self._owned.items():
            if owned.releasing is None:
                owned.releasing = asyncio.create_task(self._hand_over(p))
        backoff = Backoff()
        while releasing := [o.releasing for o in self._owned.values() if o.releasing]:
            delay = self.heartbeat
            try:
                await asyncio.wait_for(
                    self._renew(sorted(self._owned), set()), timeout=self.lease_ms / 2000
                )
                backoff.reset()
            except TRANSIENT as exc:  # a lease we cannot renew is dropped by its deadline
                delay = min(delay, backoff.next())
                log.warning("worker %s: %s while stopping (%s)", self.name, trouble(exc), exc)
            self._drop_untrusted(loop.time())
            await asyncio.wait(releasing, timeout=delay)
        if self._aborting:
            await asyncio.wait(set(self._aborting))
        log.info("worker %s: stopped", self.name)


def _ms_of(entry_id: bytes | str) -> int:
    """The Redis clock time (ms) in a stream entry id ``MS-SEQ``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])
