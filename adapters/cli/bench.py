"""``fmbot bench``: the dialog manager and the Redis queue under load, with the instant echo model.

Many chats send their messages at once: an ingress in a process of its own (as ``--role
ingress`` is deployed) enqueues every chat's messages without waiting for replies, so each chat
has a backlog whose order the queue must keep. A first worker in this process warms up (it
answers a few jobs, so the Redis connections and the manager are in use) and is stopped: it
releases its partitions and leaves the membership set. The ingress then enqueues the whole
backlog with no worker running, and a second worker on the same Redis clients and manager (warm
connection pools), the only live member, takes every partition at once and answers the backlog
through the real :class:`~bot.dialog.DialogManager` on the real Redis, running ``concurrency``
turns at once. ``--no-queue`` drives the manager directly instead (each chat awaits its turns
one by one).

Printed figures:

* throughput: turns answered per second, from the moment the second worker starts to the last
  answer: everything the worker does is inside, from taking the partitions to reading the
  backlog (XREADGROUP), decoding and dispatching it, running the turns and acknowledging them.
  Enqueueing is timed on its own, before: three busy processes on a small machine would
  otherwise measure CPU sharing;
* manager time per turn: wall time of one ``DialogManager.handle`` (the model is instant, so this
  is the manager's overhead, including its Redis round trips and waiting for the event loop,
  which grows with the number of turns run at once);
* Redis round trips per turn, counted by a connection class that counts every write of a
  command batch to a socket: a single command is one round trip, a pipeline or MULTI block is
  one, however many commands it carries (``INFO commandstats`` would count commands instead, and
  would include other clients of a shared Redis). Counted separately for the dialog store
  (history), the worker (ordering: reads, acks, leases) and the ingress (enqueue).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio as aioredis

from bot.app import open_prompts
from bot.dialog import DialogManager
from bot.errors import FmbotError
from bot.events import Incoming
from bot.models.echo import EchoModel
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.redis import REDIS_ERRORS, connect
from bot.redis.connect import MAX_CONNECTIONS
from bot.runtime import loop_name, run_server
from bot.settings import Settings
from bot.urls import mask_url

log = logging.getLogger(__name__)


class BenchError(FmbotError):
    """The benchmark could not run (its ingress process died, Redis is unreachable, ...)."""


@dataclass
class RoundTrips:
    count: int = 0


def counting_client(url: str, counter: RoundTrips) -> aioredis.Redis:
    """A client whose connections add one to ``counter`` per request sent to Redis."""

    class Counting(aioredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await super().send_packed_command(command, check_health)

    # Built as every fmbot client is, but with no timeouts or health checks.
    client = connect(
        url, connection_class=Counting, socket_connect_timeout=None, health_check_interval=0
    )
    assert isinstance(client, aioredis.Redis)  # a plain URL: one server
    return client


@dataclass
class BenchResult:
    chats: int
    turns: int
    answered: int
    seconds: float
    manager_ms: list[float]
    history_trips: int
    queue_trips: int
    enqueue_trips: int
    out_of_order: int = 0
    duplicates: int = 0
    partitions: int | None = None
    enqueue_seconds: float = 0.0
    concurrency: int = 0
    notes: list[str] = field(default_factory=list)

    def report(self, url: str) -> str:
        ms = sorted(self.manager_ms) or [0.0]
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        per = max(1, self.answered)
        history, queue = self.history_trips / per, self.queue_trips / per
        how = f"queue with {self.partitions} partitions" if self.partitions else "no queue"
        lines = [
            f"fmbot bench: {self.chats} chats, {self.turns} turns, {how}, echo model, "
            f"Redis {mask_url(url)}",
            f"setup         {self.concurrency} turns at once, {loop_name()} event loop",
            f"answered      {self.answered}/{self.turns} turns "
            f"(out of order: {self.out_of_order}, answered twice: {self.duplicates})",
            f"throughput    {self.answered / self.seconds:.0f} turns/s ({self.seconds:.2f} s)",
            f"manager       p50 {p50:.2f} ms, p99 {p99:.2f} ms per turn",
            f"round trips   {history + queue:.2f} per turn: history {history:.2f} (dialog store)"
            f" + ordering {queue:.2f} (worker: read, ack, leases); "
            f"enqueue {self.enqueue_trips / per:.2f} (ingress)",
        ]
        if self.partitions and self.enqueue_seconds:
            lines.insert(
                2,
                f"ingress       {self.turns / self.enqueue_seconds:.0f} messages/s enqueued by "
                f"its own process ({self.enqueue_seconds:.2f} s) with no worker running, "
                "before the clock starts",
            )
        return "\n".join(lines + self.notes)


async def run_bench(
    settings: Settings,
    url: str,
    *,
    chats: int,
    turns: int,
    partitions: int = 16,
    concurrency: int = 8,
    queue: bool = True,
) -> BenchResult:
    """Run the benchmark under a fresh key prefix, delete its keys afterwards."""
    prefix = f"fmbot-bench-{uuid.uuid4().hex[:8]}"
    history, ordering, enqueue = RoundTrips(), RoundTrips(), RoundTrips()
    store_client = counting_client(url, history)
    store = JournaledRedisStore(store_client, prefix)
    store.max_turns = settings.history_messages
    model = EchoModel(context_window=settings.context_tokens)
    manager = DialogManager(
        store,
        model,
        open_prompts(settings),
        default_mode=settings.default_mode,
        history_turns=settings.history_messages,
    )
    plan = plan_messages(chats, turns)
    timings: list[float] = []
    try:
        if queue:
            counters = (history, ordering, enqueue)
            result = await _through_queue(
                manager, url, prefix, plan, partitions, concurrency, timings, counters
            )
        else:
            result = await _direct(manager, plan, concurrency, timings)
            result.history_trips = history.count
        result.concurrency = concurrency
        return result
    finally:
        try:
            await _delete_prefix(store_client, prefix)
        except REDIS_ERRORS as exc:  # e.g. Redis unreachable: do not hide why the bench failed
            log.warning("could not delete the benchmark's keys %s*: %s", prefix, exc)
        finally:
            await manager.aclose()


async def _direct(
    manager: DialogManager, plan: list[list[str]], concurrency: int, timings: list[float]
) -> BenchResult:
    answered = 0
    limit = asyncio.Semaphore(concurrency)  # as a worker's: at most this many turns at once

    async def chat(c: int, messages: list[str]) -> None:
        nonlocal answered
        for text in messages:
            async with limit:
                started = time.perf_counter()
                incoming = Incoming(f"c{c}", text)
                async with contextlib.aclosing(manager.handle(incoming)) as events:
                    async for _ in events:
                        pass
                timings.append((time.perf_counter() - started) * 1000)
            answered += 1

    started = time.perf_counter()
    await asyncio.gather(*(chat(c, m) for c, m in enumerate(plan)))
    seconds = time.perf_counter() - started
    total = sum(len(m) for m in plan)
    return BenchResult(len(plan), total, answered, seconds, timings, 0, 0, 0)


@dataclass
class _Phase:
    """A phase of the queue benchmark: it waits for ``target`` answers, the last at ``finished``."""

    target: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: float = 0.0


async def _through_queue(
    manager: DialogManager,
    url: str,
    prefix: str,
    plan: list[list[str]],
    partitions: int,
    concurrency: int,
    timings: list[float],
    counters: tuple[RoundTrips, RoundTrips, RoundTrips],
) -> BenchResult:
    history, ordering, _ = counters
    keys = QueueKeys(prefix, partitions)
    total = sum(len(m) for m in plan)
    handler = DialogHandler(manager, keys, publish=False)
    next_n: dict[str, int] = {}
    seen: set[tuple[int, str]] = set()  # entry ids are unique per stream, not across them
    stats = {"out_of_order": 0, "duplicates": 0}
    warm_up = [f"bench-warmup-{i}" for i in range(2 * concurrency)]
    phase = _Phase(len(warm_up))

    async def timed(job: Job) -> None:
        started = time.perf_counter()
        await handler(job)
        finished = time.perf_counter()
        timings.append((finished - started) * 1000)
        n = int(job.payload["n"])
        if n != next_n.get(job.chat, 0):
            stats["out_of_order"] += 1
        next_n[job.chat] = n + 1
        if (job.partition, job.id) in seen:
            stats["duplicates"] += 1
        seen.add((job.partition, job.id))
        if len(timings) >= phase.target and not phase.done.is_set():
            phase.finished = finished
            phase.done.set()

    def new_worker() -> Worker:
        return Worker(queue_client, timed, keys=keys, concurrency=concurrency)

    queue_client = counting_client(url, ordering)
    worker: Worker | None = None
    running: asyncio.Task[None] | None = None
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(queue_client.aclose)

        async def stop_worker() -> None:
            nonlocal worker, running
            if worker is not None and running is not None:
                await worker.stop(10)
                await running
            worker = running = None

        cleanup.push_async_callback(stop_worker)  # runs before queue_client.aclose
        # The ingress runs in a process of its own, as in a deployment (`--role ingress`): this
        # process is the worker, and its figures are the worker's.
        producer = Producer(url, prefix, partitions, [len(m) for m in plan])
        cleanup.push_async_callback(producer.close)  # runs first: no enqueueing after a failure
        await producer.ready()

        # Warm up as a running worker is: its Redis connections open, the manager's too.
        worker = new_worker()
        running = asyncio.create_task(worker.run())
        warmup = Ingress(queue_client, keys)
        for chat in warm_up:
            await warmup.enqueue(chat, {"n": 0, "text": "warm up"})
        await asyncio.wait_for(phase.done.wait(), 30)
        # ... then stopped: it releases its partitions and leaves the membership set, so the
        # worker that answers the backlog takes every partition in its first round.
        await stop_worker()
        await _check_released(queue_client, keys)

        # The backlog, every chat's messages, queued with no worker running: enqueuing next to
        # the worker would measure three processes sharing the CPU (two cores here) rather than
        # the worker. The ingress times itself.
        producer.go()
        enqueue_trips, enqueue_seconds = await producer.result()

        # A new worker on the same clients and manager (warm connection pools) answers the
        # backlog against the clock: taking the partitions, reading, decoding, running, acking.
        timings.clear()
        seen.clear()
        next_n.clear()
        phase = _Phase(total)
        history.count = ordering.count = 0
        worker = new_worker()
        started = time.perf_counter()
        running = asyncio.create_task(worker.run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.done.wait(), timeout=60 + total / 100)
        seconds = (phase.finished or time.perf_counter()) - started
        trips, history_trips = ordering.count, history.count
    return BenchResult(
        len(plan),
        total,
        len(timings),
        seconds,
        timings,
        history_trips,
        trips,
        enqueue_trips,
        out_of_order=stats["out_of_order"],
        duplicates=stats["duplicates"],
        partitions=partitions,
        enqueue_seconds=enqueue_seconds,
    )


async def _check_released(client: aioredis.Redis, keys: QueueKeys) -> None:
    """The stopped warm-up worker left no lease and no membership that would slow the next one."""
    left = await client.exists(*(keys.lease(p) for p in range(keys.partitions)), keys.workers)
    if left:
        raise BenchError(
            f"the benchmark's warm-up worker left {left} lease or membership keys behind"
        )


def plan_messages(chats: int, turns: int) -> list[list[str]]:
    """``turns`` messages spread over ``chats`` chats: message n of chat c is "chat-c message n"."""
    return [
        [f"chat-{c} message {n}" for n in range(turns // chats + (c < turns % chats))]
        for c in range(chats)
    ]


class Producer:
    """The benchmark's ingress, in a child process: every chat enqueues its messages in order.

    The child connects and says it is ready; :meth:`go` starts it; :meth:`result` is its count
    of Redis round trips and its time. Every wait on the child also watches the process, so a
    child that dies (Redis unreachable, an import error) is reported at once with its exit code.
    The child waits for :meth:`go` in short steps and leaves if :meth:`close` aborts it or this
    process goes away, so it never outlives the benchmark.
    """

    def __init__(self, url: str, prefix: str, partitions: int, counts: list[int]) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with a running loop
        self._go = ctx.Event()
        self._abort = ctx.Event()
        self._out, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_producer_main,
            args=(url, prefix, partitions, counts, self._go, self._abort, child_end, os.getpid()),
            name="fmbot-bench-ingress",
            daemon=True,
        )
        try:
            self._process.start()
        finally:
            # Only the child may hold the writing end: when it dies, reading ends (EOF).
            child_end.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    async def ready(self) -> None:
        """Wait until the child has connected to Redis."""
        await self._receive("ready", within=60)

    def go(self) -> None:
        self._go.set()

    async def result(self) -> tuple[int, float]:
        """Round trips and seconds the ingress took to enqueue every message."""
        _, trips, seconds = await self._receive("done", within=300)
        return int(trips), float(seconds)

    async def _receive(self, expected: str, *, within: float) -> tuple[Any, ...]:
        """The child's next message, which must be ``expected``; raise if the child died."""
        waiting: list[Any] = [self._out, self._process.sentinel]
        ready: list[Any] = await asyncio.to_thread(_wait, waiting, within)
        message: tuple[Any, ...] = ()
        if self._out in ready:
            with contextlib.suppress(EOFError, OSError):  # EOF: the child is gone
                message = self._out.recv()
        elif not ready:
            raise BenchError(
                f"the benchmark's ingress process (pid {self._process.pid}) sent no "
                f"{expected!r} within {within:.0f} s"
            )
        if message and message[0] == expected:
            return message
        await asyncio.to_thread(self._process.join, 5)
        why = f": {message[1]}" if message and message[0] == "error" else ""
        raise BenchError(
            f"the benchmark's ingress process exited with code {self._process.exitcode} "
            f"before it was {expected}{why}"
        )

    async def close(self) -> None:
        """Stop the child (it enqueues nothing more if it has not started) and reap it."""
        self._abort.set()
        self._out.close()
        if self._process.is_alive():  # it notices the abort within a second
            await asyncio.to_thread(self._process.join, 3)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 2)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 2)
        with contextlib.suppress(ValueError):  # still running after SIGKILL: leave it be
            self._process.close()


def _wait(objects: list[Any], seconds: float) -> list[Any]:
    """Those of ``objects`` (connections, process sentinels) that are ready within ``seconds``."""
    return multiprocessing.connection.wait(objects, seconds)


def _producer_main(
    url: str,
    prefix: str,
    partitions: int,
    counts: list[int],
    go: Any,
    abort: Any,
    out: Connection,
    parent: int,
) -> None:
    def released() -> bool:
        """Wait for go; False when aborted or orphaned (the parent's pid is no longer ours)."""
        while not go.wait(1):
            if abort.is_set() or os.getppid() != parent:
                return False
        return not abort.is_set()

    async def produce() -> tuple[int, float] | None:
        trips = RoundTrips()
        client = counting_client(url, trips)
        try:
            ingress = Ingress(client, QueueKeys(prefix, partitions))
            await client.ping()
            out.send(("ready",))
            if not await asyncio.to_thread(released):
                return None
            trips.count = 0
            started = time.perf_counter()

            # Chats at once: one coroutine per chat would, at 20,000 chats, wait longer for a
            # pooled connection than the pool allows ("No connection available").
            limit = asyncio.Semaphore(MAX_CONNECTIONS // 2)

            async def chat(c: int, count: int) -> None:
                async with limit:
                    for n in range(count):
                        text = f"chat-{c} message {n}"
                        await ingress.enqueue(f"c{c}", {"n": n, "text": text})

            await asyncio.gather(*(chat(c, count) for c, count in enumerate(counts)))
            return trips.count, time.perf_counter() - started
        finally:
            await client.aclose()

    try:
        result = run_server(produce())
    except Exception as exc:
        with contextlib.suppress(OSError):  # the parent may be gone
            out.send(("error", f"{type(exc).__name__}: {exc}"))
        sys.exit(1)  # the parent reports it, in one line
    if result is not None:
        with contextlib.suppress(OSError):
            out.send(("done", *result))


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    batch: list[str] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch.clear()
    if batch:
        await client.delete(*batch)


def profiled(run: Callable[[], Awaitable[BenchResult]], top: int = 25) -> tuple[BenchResult, str]:
    """Run under cProfile; the result and the ``top`` functions by own time."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = run_server(_await(run))
    finally:
        profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    return result, out.getvalue()


async def _await(run: Callable[[], Awaitable[BenchResult]]) -> BenchResult:
    return await run()
