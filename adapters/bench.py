"""``fmbot bench``: the dialog manager and the Redis queue under load, with the instant echo model.

Many chats send their messages at once: an ingress in a process of its own (as ``--role
ingress`` is deployed) enqueues every chat's messages without waiting for replies, so each chat
has a backlog whose order the queue must keep. One worker in this process, warmed up (partitions
taken, connections open), then answers the backlog through the real
:class:`~bot.dialog.DialogManager` on the real Redis, running ``concurrency`` turns at once.
``--no-queue`` drives the manager directly instead (each chat awaits its turns one by one).

Printed figures:

* throughput: turns answered per second, from the moment the backlog is released to the worker
  to the last answer (the worker reads ahead while the ingress enqueues; enqueueing is timed on
  its own: three busy processes on a small machine would otherwise measure CPU sharing);
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
import multiprocessing
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bot.app import open_prompts
from bot.dialog import DialogManager
from bot.events import Incoming
from bot.models.echo import EchoModel
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.runtime import loop_name, run_server
from bot.settings import Settings


@dataclass
class RoundTrips:
    count: int = 0


def counting_client(url: str, counter: RoundTrips) -> aioredis.Redis:
    """A client whose connections add one to ``counter`` per request sent to Redis."""

    class Counting(aioredis.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await super().send_packed_command(command, check_health)

    pool = aioredis.BlockingConnectionPool.from_url(
        url, connection_class=Counting, decode_responses=True, max_connections=256
    )
    return aioredis.Redis(connection_pool=pool)


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
            f"fmbot bench: {self.chats} chats, {self.turns} turns, {how}, echo model, Redis {url}",
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
                f"its own process ({self.enqueue_seconds:.2f} s), before the clock starts",
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
    store.max_turns = settings.history_turns
    model = EchoModel(context_window=settings.context_tokens)
    manager = DialogManager(
        store,
        model,
        open_prompts(settings),
        default_mode=settings.default_mode,
        history_turns=settings.history_turns,
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
        await _delete_prefix(store_client, prefix)
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
    all_done, warm = asyncio.Event(), asyncio.Event()
    warm_up = [f"bench-warmup-{i}" for i in range(2 * concurrency)]

    gate = asyncio.Event()
    gate.set()

    async def timed(job: Job) -> None:
        await gate.wait()
        started = time.perf_counter()
        await handler(job)
        timings.append((time.perf_counter() - started) * 1000)
        n = int(job.payload["n"])
        if n != next_n.get(job.chat, 0):
            stats["out_of_order"] += 1
        next_n[job.chat] = n + 1
        if (job.partition, job.id) in seen:
            stats["duplicates"] += 1
        seen.add((job.partition, job.id))
        if len(timings) >= len(warm_up):
            warm.set()
        if len(timings) >= total:
            all_done.set()

    # The ingress runs in a process of its own, as in a deployment (`--role ingress`): this
    # process is the worker, and its figures are the worker's.
    producer = Producer(url, prefix, partitions, [len(m) for m in plan])
    queue_client = counting_client(url, ordering)
    worker = Worker(queue_client, timed, keys=keys, concurrency=concurrency)
    running = asyncio.create_task(worker.run())
    try:
        # Warm up as a running worker is: partitions taken, its connections open.
        warmup = Ingress(queue_client, keys)
        for chat in warm_up:
            await warmup.enqueue(chat, {"n": 0, "text": "warm up"})
        await asyncio.wait_for(warm.wait(), 30)
        await producer.ready()
        timings.clear()
        seen.clear()
        next_n.clear()
        history.count = ordering.count = 0

        # The backlog first: every chat's messages queued (the worker reads ahead meanwhile),
        # then answered against the clock. Enqueuing at full speed next to the worker would
        # measure three processes sharing the CPU (two cores here) rather than the worker.
        gate.clear()
        producer.go()
        enqueue_trips, enqueue_seconds = await producer.result()
        started = time.perf_counter()
        gate.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), timeout=60 + total / 100)
        seconds = time.perf_counter() - started
        trips, history_trips = ordering.count, history.count
    finally:
        producer.close()
        await worker.stop(10)
        await running
        await queue_client.aclose()
    result = BenchResult(
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
    return result


def plan_messages(chats: int, turns: int) -> list[list[str]]:
    """``turns`` messages spread over ``chats`` chats: message n of chat c is "chat-c message n"."""
    return [
        [f"chat-{c} message {n}" for n in range(turns // chats + (c < turns % chats))]
        for c in range(chats)
    ]


class Producer:
    """The benchmark's ingress, in a child process: every chat enqueues its messages in order.

    The child connects and waits; :meth:`go` starts it; :meth:`result` is its count of Redis
    round trips.
    """

    def __init__(self, url: str, prefix: str, partitions: int, counts: list[int]) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with a running loop
        self._go = ctx.Event()
        self._ready = ctx.Event()
        self._out, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_producer_main,
            args=(url, prefix, partitions, counts, self._ready, self._go, child_end),
            name="fmbot-bench-ingress",
            daemon=True,
        )
        self._process.start()

    async def ready(self) -> None:
        if not await asyncio.to_thread(self._ready.wait, 60):
            raise RuntimeError("the benchmark's ingress process did not start")

    def go(self) -> None:
        self._go.set()

    async def result(self) -> tuple[int, float]:
        """Round trips and seconds the ingress took to enqueue every message."""
        if not await asyncio.to_thread(self._out.poll, 300):
            raise RuntimeError("the benchmark's ingress process did not report")
        trips, seconds = self._out.recv()
        return int(trips), float(seconds)

    def close(self) -> None:
        self._go.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _producer_main(
    url: str,
    prefix: str,
    partitions: int,
    counts: list[int],
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    async def produce() -> tuple[int, float]:
        trips = RoundTrips()
        client = counting_client(url, trips)
        ingress = Ingress(client, QueueKeys(prefix, partitions))
        await client.ping()
        ready.set()
        await asyncio.to_thread(go.wait)
        trips.count = 0
        started = time.perf_counter()

        async def chat(c: int, count: int) -> None:
            for n in range(count):
                await ingress.enqueue(f"c{c}", {"n": n, "text": f"chat-{c} message {n}"})

        await asyncio.gather(*(chat(c, count) for c, count in enumerate(counts)))
        seconds = time.perf_counter() - started
        await client.aclose()
        return trips.count, seconds

    out.send(run_server(produce()))


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
