"""Processing one partition while this worker holds its lease: read, run in per-chat order, ack.

Reading: first every entry still pending in the consumer group (XAUTOCLAIM from ``0-0``: jobs a
dead or departed owner had read but not acknowledged, in entry-id order), then new entries
(XREADGROUP ``>``) in batches.

Order: each chat has a lane, a FIFO run by one task, so a chat's jobs run one at a time in entry
order while different chats of the partition run concurrently (with ``Tuning.overlap`` a job
starts once its predecessor has reached the dialog manager, for the busy policies merge and
interrupt). A chat's acknowledged jobs are always older than its unacknowledged ones, so a new
owner that replays the pending entries in id order resumes every chat exactly where it stopped.

Acknowledging: finished ids are collected and sent as one MULTI (XACK + XDEL, so the stream does
not grow) per flush; under load many jobs share one round trip. A handler that fails is retried;
after ``max_attempts`` the job is copied to ``P:{q:N}:dead`` and acknowledged, so one poisonous
message cannot block its chat for ever. Redis being unreachable is not a failure of the job: the
handler (or the ack) is retried, in place, until Redis answers or the lease is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ResponseError

from bot.busy import arrival_hook
from bot.errors import GivenUpError, NotSavedError
from bot.observe import messaging, metrics
from bot.queue.backoff import TRANSIENT, Backoff, trouble
from bot.queue.job import Job, Tenure, current_job
from bot.queue.keys import GROUP, QueueKeys
from bot.redis import RedisClient

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]
DEAD_MAX = 10_000  # newest failed jobs kept per partition (approximately: XADD MAXLEN ~)
Entries = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Tuning:
    """How a worker reads and runs jobs; the defaults suit chat bots (see Worker)."""

    block_ms: int = 1000  # longest wait of one XREADGROUP: bounds how long stopping takes
    batch: int = 100  # entries per read
    max_queued: int = 1000  # read-ahead per partition (backpressure)
    max_attempts: int = 3  # handler failures before a job goes to the dead stream
    immediate: Callable[[Job], bool] | None = None  # jobs that skip their chat's lane
    #: Let a chat's jobs overlap (each starts once the previous reached the dialog manager):
    #: for the busy policies merge and interrupt. Acknowledgements stay in order.
    overlap: bool = False


@dataclass(eq=False, slots=True)
class _Lane:
    """A chat's jobs not yet started, in entry order; ``wake`` is set when one is added."""

    jobs: collections.deque[Job]
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class PartitionRunner:
    def __init__(
        self,
        redis: RedisClient,
        keys: QueueKeys,
        index: int,
        consumer: str,
        handler: Handler,
        tuning: Tuning,
        limit: asyncio.Semaphore,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.index = index
        self.stream = keys.jobs(index)
        self.consumer = consumer
        self.handler = handler
        self.tuning = tuning
        self.limit = limit
        self.handled = 0
        self.tenure = Tenure()  # this runner's hold on the lease (Job.tenure)
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued = 0
        self._room = asyncio.Event()
        self._room.set()
        self._draining = False
        self._acks: list[str] = []
        self._ack_ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name=f"queue-read-{self.index}")
        self._acker = asyncio.create_task(self._ack_loop(), name=f"queue-ack-{self.index}")

    # --- reading ---

    async def _read_loop(self) -> None:
        backoff = Backoff()
        reclaimed = False
        while not self._draining:
            try:
                if not reclaimed:
                    await self._ensure_group()
                    await self._reclaim()
                    reclaimed = True
                await self._room.wait()
                if self._draining:
                    break
                reply = await self.redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.tuning.batch,
                    block=self.tuning.block_ms,
                )
                for _stream, entries in cast(list[tuple[str, Entries]], reply or []):
                    for entry_id, fields in entries:
                        self._dispatch(self._job(entry_id, fields, attempt=1))
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.error("partition %s: %s", self.index, exc)
                    await asyncio.sleep(backoff.next())
                    continue
                # Redis lost the group (restarted without persistence): recreate, replay. Its
                # data may be gone too: what this worker cached of the chats is not to be trusted.
                log.warning("partition %s: consumer group missing, recreating", self.index)
                self.tenure = Tenure()
                reclaimed = False
            except TRANSIENT as exc:
                delay = backoff.next()
                log.warning(
                    "partition %s: %s (%s); retry in %.1fs", self.index, trouble(exc), exc, delay
                )
                await asyncio.sleep(delay)
            except Exception:  # a bug or an unexpected reply: keep the worker alive, say so
                log.exception("partition %s: reading failed", self.index)
                await asyncio.sleep(backoff.next())

    async def _ensure_group(self) -> None:
        try:
            # From 0, not $: entries enqueued before any worker existed are jobs too.
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _reclaim(self) -> None:
        """Take over every pending entry of the group, oldest first, and queue it."""
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.stream,
                GROUP,
                self.consumer,
                min_idle_time=0,
                start_id=cursor,
                count=self.tuning.batch,
            )
            cursor, entries = str(reply[0]), cast(Entries, reply[1])
            if entries:
                pending = await self.redis.xpending_range(
                    self.stream,
                    GROUP,
                    min=entries[0][0],
                    max=entries[-1][0],
                    count=len(entries),
                    consumername=self.consumer,
                )
                times = {str(p["message_id"]): int(p["times_delivered"]) for p in pending}
                for entry_id, fields in entries:
                    if fields:  # deleted entries come back empty
                        self._dispatch(self._job(entry_id, fields, times.get(entry_id, 2)))
                        metrics.count(metrics.QUEUE_REDELIVERED)
                log.info("partition %s: took over %d pending jobs", self.index, len(entries))
            if cursor == "0-0":
                return

    def _job(self, entry_id: str, fields: dict[str, str], attempt: int) -> Job:
        try:
            payload = json.loads(fields.get("payload", "{}"))
        except ValueError:
            payload = {"raw": fields.get("payload", "")}
        chat = fields.get("chat", "")
        trace = messaging.context_of(fields)
        return Job(entry_id, chat, payload, self.index, attempt, tenure=self.tenure, trace=trace)

    # --- running ---

    def _dispatch(self, job: Job) -> None:
        self._queued += 1
        if self._queued >= self.tuning.max_queued:
            self._room.clear()
        immediate = self.tuning.immediate
        if immediate is not None and immediate(job):
            self._spawn(self._run_alone(dataclasses.replace(job, ordered=False)))
            return
        lane = self._lanes.get(job.chat)
        if lane is not None:
            lane.jobs.append(job)
            lane.wake.set()
            return
        lane = self._lanes[job.chat] = _Lane(collections.deque([job]))
        run = self._run_overlapping if self.tuning.overlap else self._run_lane
        self._spawn(run(job.chat, lane))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        """Start a task the partition waits for when draining and cancels when aborted."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_lane(self, chat: str, lane: _Lane) -> None:
        """One job at a time, in entry order."""
        try:
            while lane.jobs and not self._draining:
                job = lane.jobs[0]
                await self._run(job)
                lane.jobs.popleft()
                self._finished(job)
        finally:
            if self._lanes.get(chat) is lane:
                del self._lanes[chat]

    async def _run_overlapping(self, chat: str, lane: _Lane) -> None:
        """Start each job once its predecessor reached the dialog manager, acknowledge in order.

        The busy policies ``merge`` and ``interrupt`` act on messages that arrive while the
        chat's turn runs, so the chat's next job must reach the manager then: it is started as
        soon as the previous one has taken its place in the manager's queue for the chat
        (:data:`bot.busy.arrival_hook`) or has finished, which keeps arrival order. A job is
        acknowledged only when every earlier job of the chat has finished as well, so a merged
        message is never acknowledged before the turn that answers it is stored. The lane's jobs
        share one of the worker's ``concurrency`` permits: a burst in one chat waits on its
        chat's turn, not on other chats.
        """
        started: collections.deque[tuple[Job, asyncio.Task[None]]] = collections.deque()
        arrived = asyncio.Event()
        arrived.set()
        waiters: set[asyncio.Future[Any]] = set()
        try:
            async with self.limit:
                while True:
                    while started and started[0][1].done():
                        job, _ = started.popleft()
                        self._finished(job)
                    can_start = lane.jobs and not self._draining
                    if can_start and (arrived.is_set() or not started or started[-1][1].done()):
                        job = lane.jobs.popleft()
                        arrived = asyncio.Event()
                        task = self._spawn(self._run(job, arrived.set, limited=False))
                        started.append((job, task))
                        continue
                    if not started:
                        return
                    lane.wake.clear()
                    waiters = {asyncio.ensure_future(lane.wake.wait())}
                    if not arrived.is_set():
                        waiters.add(asyncio.ensure_future(arrived.wait()))
                    tasks = {started[0][1], started[-1][1]}
                    await asyncio.wait(tasks | waiters, return_when=asyncio.FIRST_COMPLETED)
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            for waiter in waiters:
                waiter.cancel()
            # Started jobs are the partition's tasks: drain() waits for them, abort() cancels.
            if self._lanes.get(chat) is lane:
                del self._lanes[chat]

    async def _run_alone(self, job: Job) -> None:
        await self._run(job)
        self._finished(job)

    def _finished(self, job: Job) -> None:
        """The job's handler returned (or it was buried): acknowledge it, make room."""
        self.handled += 1
        if job.tenure is None or not job.tenure.ended:
            # Given up, it is the next owner's: unacknowledged, it is replayed (and skipped
            # there if its turn was stored).
            self._acks.append(job.id)
            self._ack_ready.set()
        self._queued -= 1
        if self._queued < self.tuning.max_queued:
            self._room.set()

    async def _run(
        self, job: Job, on_arrival: Callable[[], None] | None = None, *, limited: bool = True
    ) -> None:
        """Run the handler until it returns; retry transient failures in place, bury a job that
        keeps failing. Never raises but CancelledError. A retry is a redelivery (``attempt``
        + 1), so the handler checks the journal before answering again."""
        async with self.limit if limited else contextlib.nullcontext():
            hook = arrival_hook.set(on_arrival)
            try:
                await self._attempts(job)
            finally:
                arrival_hook.reset(hook)

    async def _attempts(self, job: Job) -> None:
        backoff = Backoff()
        failures = 0
        while True:
            token = current_job.set(job)
            try:
                with self._processing(job):
                    await self.handler(job)
                return
            except GivenUpError:
                raise  # the lease is gone: the partition's next owner answers the job
            except NotSavedError as exc:
                # Answered, but Redis refused to store the turn (OOM, MISCONF): running it again
                # would answer twice. Kept in the dead stream for the operator, not dropped.
                log.error("job %s (chat %s): %s; moved to the dead stream", job.id, job.chat, exc)
                await self._bury(job)
                return
            except TRANSIENT as exc:  # Redis down: not the job's fault; keep order
                delay = backoff.next()
                log.warning("job %s: %s (%s); retry in %.1fs", job.id, trouble(exc), exc, delay)
            except Exception:
                failures += 1
                log.exception("job %s (chat %s) failed, attempt %d", job.id, job.chat, failures)
                if failures >= self.tuning.max_attempts:
                    await self._bury(job)
                    return
                delay = backoff.next()
            finally:
                current_job.reset(token)
            await asyncio.sleep(delay)
            if job.tenure is not None and job.tenure.ended:
                raise GivenUpError(f"job {job.id} was given up with its partition")
            # The failed attempt may have stored its turn before failing (or, with overlapping
            # jobs, a later job may have stored one since): run it as the redelivery it is.
            job = dataclasses.replace(job, attempt=job.attempt + 1)
            metrics.count(metrics.QUEUE_REDELIVERED)

    def _processing(self, job: Job) -> contextlib.AbstractContextManager[None]:
        """The job's process span, a child of its enqueue's, while tracing is on."""
        return messaging.processing(
            job.trace,
            destination=self.stream,
            template=self.keys.jobs_template,
            partition=self.index,
            entry_id=job.id,
            group=GROUP,
            attempt=job.attempt,
        )

    async def _bury(self, job: Job) -> None:
        metrics.count(metrics.QUEUE_DEAD)
        fields: dict[Any, Any] = {
            "id": job.id,
            "chat": job.chat,
            "payload": json.dumps(job.payload, ensure_ascii=False),
            **(job.trace or {}),  # the operator finds the job's trace
        }
        try:
            # Bounded: a bug that fails every job must not fill Redis with copies.
            await self.redis.xadd(self.keys.dead(self.index), fields, maxlen=DEAD_MAX)
        except Exception as exc:  # the job is acknowledged anyway: keep it in the log at least
            log.error(
                "job %s could not be copied to the dead stream (%s); it was: %s",
                job.id,
                exc,
                fields,
            )

    # --- acknowledging ---

    async def _ack_loop(self) -> None:
        backoff = Backoff()
        while True:
            if not self._acks:
                if self._draining and not self._tasks:
                    return
                self._ack_ready.clear()
                await self._ack_ready.wait()
                continue
            ids, self._acks = self._acks, []
            while True:
                try:
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.xack(self.stream, GROUP, *ids)
                        pipe.xdel(self.stream, *ids)
                        await pipe.execute()
                    metrics.count(metrics.QUEUE_ACKED, len(ids))
                    backoff.reset()
                    break
                except TRANSIENT as exc:
                    delay = backoff.next()
                    log.warning(
                        "partition %s: ack failed (%s); retry in %.1fs", self.index, exc, delay
                    )
                    await asyncio.sleep(delay)

    # --- stopping ---

    async def drain(self, grace: float) -> None:
        """Stop reading, let running jobs finish (up to ``grace`` s), acknowledge them.

        Jobs read but not started stay pending in the group: the next owner replays them.
        """
        self._draining = True
        self._room.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._reader is not None:
            # The reader notices within one block; cancelling instead could lose a batch in
            # flight (it would stay pending, which is safe, but needs a takeover to replay).
            await _wait_or_cancel({self._reader}, self.tuning.block_ms / 1000 + 5)
        if self._tasks:
            _done, late = await asyncio.wait(
                set(self._tasks), timeout=max(0.0, deadline - loop.time())
            )
            if late:
                self.tenure.ended = True  # cut off: the next owner answers them in full
            await _wait_or_cancel(late, 0)
        self._ack_ready.set()
        if self._acker is not None:
            await _wait_or_cancel({self._acker}, max(1.0, deadline - loop.time()))

    async def abort(self) -> None:
        """The lease is gone: stop at once; every unacknowledged job is the new owner's."""
        self._draining = True
        self.tenure.ended = True
        tasks = {t for t in (self._reader, self._acker) if t is not None} | self._tasks
        await _wait_or_cancel(tasks, 0)


async def _wait_or_cancel(tasks: set[asyncio.Task[None]], seconds: float) -> None:
    """Wait up to ``seconds`` for ``tasks``, cancel the rest and wait for them to end. Their
    errors are not ours; our own cancellation is (asyncio.wait raises it, awaiting a cancelled
    task would hide it)."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=seconds) if seconds > 0 else (set(), tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved (each task logs its own failures)
