"""``fmbot bench``: the dialog manager and the Redis queue under load, with the instant echo model.

One command, several runs, each under its own key prefix, so the best case is printed next to
what real use looks like:

* **best case**, **best case, metrics on** and **best case, metrics on and off**: an ingress in
  a process of its own (as ``--role ingress`` is deployed) queues every chat's messages while no
  worker runs; then a worker in this process answers the backlog against the clock,
  ``--concurrency`` turns at once, replies stored only; the second time with Prometheus metrics
  counted (as with ``FMBOT_METRICS_LISTEN``; one scrape at the end, its count of turns
  checked); the third time with metrics switched on and off every ``--toggle-ms``, which
  measures what they cost (adapters/cli/bench_cost.py);
* **steady state** and **many chats** (``--many-chats``, 20,000): every chat is answered once
  before the clock by the worker that then answers the backlog (it keeps its partitions, so its
  copy of the chats, and holds the backlog's jobs until the clock starts); then ``--turns`` turns
  with ``--chats`` chats and as many with ``--many-chats`` chats: the same work but for how many
  chats the worker's copy (``FMBOT_WORKER_CACHE_MB``) holds, so their ratio is what many chats
  cost;
* **real concurrency**: the backlog again at the workers' own concurrency (256, the Telegram
  worker's), each reply published and marked delivered as a channel does
  (:meth:`~bot.queue.journal.JournaledRedisStore.mark`);
* **live** (``--rate``): the worker runs first and the ingress sends ``--rate`` messages per
  second for ``--live-seconds``, at the real concurrency, replies published and marked
  delivered; throughput is what the worker achieved from the first message sent to the last
  reply.

Before each run a first worker warms up (it answers a few jobs, so the Redis connections and the
manager are in use); for the backlog runs it is stopped (it releases its partitions and leaves
the membership set) and a second worker on the same clients, the only live member, takes every
partition at once. ``--no-queue`` drives the manager directly instead (each chat awaits its
turns one by one).

Printed figures, per run:

* throughput: turns answered per second. Backlog runs: from the moment the second worker
  starts to the last answer (taking the partitions, reading the backlog, decoding, running the
  turns, acknowledging); enqueueing is timed on its own, before: three busy processes on a
  small machine would otherwise measure CPU sharing. Live: from the first message sent to the
  last reply;
* latency per turn, split: waiting (from the message's enqueueing — for a backlog, from the
  worker's start — until a worker's lane picks it up) and service (from there until the reply
  is stored, and published and marked delivered where the run does), p50/p95/p99 of each and
  of their sum; ``mean`` shows that the two add up;
* Redis round trips per turn, counted by a connection class that counts every write of a
  command batch to a socket: a single command is one round trip, a pipeline or MULTI block is
  one, however many commands it carries (``INFO commandstats`` would count commands instead, and
  would include other clients of a shared Redis). Counted separately for the dialog store
  (history, and the replies and delivered marks), the worker (ordering: reads, acks, leases)
  and the ingress (enqueue);
* for runs that mark replies delivered: on how many chats the delivered mark names the chat's
  last stored turn when the run ends (all of them, or a reply would be sent again after a
  crash);
* CPU time of this process (the worker) per turn, while the clock ran.

With ``--cost-rounds`` (0 by default), what metrics cost over whole runs too: shorter best-case
runs alternately without and with metrics, A B B A ..., the medians of both sides' throughput and
CPU time per turn compared (:class:`~adapters.cli.bench_cost.CostRounds`), then each round's B
against its A (paired).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import io
import logging
import math
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
from typing import Any, TypeVar

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from adapters.cli.bench_cost import TOGGLE, CostRounds, Toggled, Toggler, cost_order
from bot.app import open_prompts
from bot.dialog import DialogManager
from bot.errors import FmbotError
from bot.events import Incoming
from bot.models.echo import EchoModel
from bot.observe import metrics
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.queue.cache import ChatCache
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.queue.worker import CONCURRENCY
from bot.redis import REDIS_ERRORS, connect
from bot.redis.connect import MAX_CONNECTIONS
from bot.runtime import loop_name, run_server
from bot.settings import Settings
from bot.urls import mask_url

log = logging.getLogger(__name__)

_T = TypeVar("_T")


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


@dataclass(frozen=True)
class Run:
    """One run of the benchmark (see the module docstring)."""

    label: str
    chats: int
    turns: int
    concurrency: int
    #: Messages per second sent while the worker runs; 0: all queued before the clock starts.
    rate: float = 0.0
    #: Replies published and marked delivered, as a channel does; else only stored.
    publish: bool = False
    #: Prometheus metrics counted during the run (bot.observe.metrics).
    metrics: bool = False
    #: Steady state: every chat's first turn is answered before the clock (not counted in
    #: ``turns``) by the worker that then answers the backlog, so each chat is in its copy.
    steady: bool = False
    #: Seconds: metrics switched on and off this often while the clock runs (bench_cost.Toggler).
    toggle: float = 0.0

    def describe(self, queue: bool) -> str:
        if not queue:
            how = "the manager called directly"
        elif self.rate:
            how = f"sent at {self.rate:g} messages/s while the worker runs"
        elif self.steady:
            how = "queued while the worker holds every chat (each answered once before)"
        else:
            how = "queued before the clock starts"
        replies = "published and marked delivered" if self.publish else "stored"
        return (
            f"{self.chats} chats, {self.turns} turns {how}, {self.concurrency} turns at once, "
            f"replies {replies}"
        )


def plan_runs(
    *,
    chats: int,
    turns: int,
    concurrency: int,
    many_chats: int = 20_000,
    rate: float = 500.0,
    live_seconds: float = 10.0,
    toggle: float = TOGGLE,
) -> list[Run]:
    """The runs of one ``fmbot bench``: the best case first, then what real use adds."""
    runs = [
        Run("best case", chats, turns, concurrency),
        Run("best case, metrics on", chats, turns, concurrency, metrics=True),
        Run("best case, metrics on and off", chats, turns, concurrency, toggle=toggle),
    ]
    if many_chats:
        # The same number of turns with few and with many chats, each chat answered once before
        # the clock: what differs is only how many chats the worker keeps (FMBOT_WORKER_CACHE_MB).
        runs.append(Run("steady state", chats, turns, concurrency, steady=True))
        runs.append(Run("many chats", many_chats, max(turns, many_chats), concurrency, steady=True))
    runs.append(Run("real concurrency", chats, turns, CONCURRENCY, publish=True))
    if rate:
        live = max(1, round(rate * live_seconds))
        runs.append(Run("live", chats, live, CONCURRENCY, rate=rate, publish=True))
    return runs


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 (nearest rank) of ``values``; zeros when there are none."""
    if not values:
        return 0.0, 0.0, 0.0
    v = sorted(values)

    def rank(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return rank(0.5), rank(0.95), rank(0.99)


@dataclass
class BenchResult:
    run: Run
    answered: int
    seconds: float
    history_trips: int
    queue_trips: int
    enqueue_trips: int
    #: Per answered turn, ms: waiting for a worker, service (the handler), and both.
    waiting_ms: list[float] = field(default_factory=list)
    service_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    out_of_order: int = 0
    duplicates: int = 0
    partitions: int | None = None
    enqueue_seconds: float = 0.0
    #: Chats whose delivered mark names their last stored turn, of the chats (publishing runs).
    delivered: tuple[int, int] | None = None
    #: Turns whose history came from the worker's copy of the chat, and those read from Redis.
    cache: tuple[int, int] | None = None
    #: Metrics runs: turns counted in fmbot_turns_total, and one scrape's size at the end.
    exposition: tuple[int, int] | None = None
    #: Toggled runs: the stretches with metrics on and off.
    toggled: Toggled | None = None
    #: CPU time of this process (the worker: handlers, event loop, Redis client) while the
    #: clock ran; unlike wall time it does not grow when other processes take the cores.
    cpu_seconds: float = 0.0

    @property
    def chats(self) -> int:
        return self.run.chats

    @property
    def turns(self) -> int:
        return self.run.turns

    @property
    def rate(self) -> float:
        """Turns answered per second."""
        return self.answered / max(self.seconds, 1e-9)

    @property
    def cpu_per_turn(self) -> float:
        """Seconds of this process's CPU per answered turn."""
        return self.cpu_seconds / max(1, self.answered)

    def report(self) -> str:
        per = max(1, self.answered)
        history, queue = self.history_trips / per, self.queue_trips / per

        def split(name: str, values: list[float]) -> str:
            p50, p95, p99 = percentiles(values)
            return f"{name} p50 {p50:.2f}, p95 {p95:.2f}, p99 {p99:.2f}"

        mean = [statistics.fmean(v) if v else 0.0 for v in (self.waiting_ms, self.service_ms)]
        total = statistics.fmean(self.total_ms) if self.total_ms else 0.0
        lines = [
            f"{self.run.label}: {self.run.describe(self.partitions is not None)}",
            f"  answered      {self.answered}/{self.turns} turns "
            f"(out of order: {self.out_of_order}, answered twice: {self.duplicates})",
            f"  throughput    {self.rate:.0f} turns/s ({self.seconds:.2f} s); CPU "
            f"{self.cpu_per_turn * 1e6:.1f} µs per turn (this process: the worker)",
            f"  latency ms    {split('waiting', self.waiting_ms)}; "
            f"{split('service', self.service_ms)}; {split('total', self.total_ms)}",
            f"  mean ms       waiting {mean[0]:.2f} + service {mean[1]:.2f} = total {total:.2f} "
            f"over {len(self.total_ms)} turns",
            f"  round trips   {history + queue:.2f} per turn: history {history:.2f} (dialog store"
            f"{', replies, delivered marks' if self.run.publish else ''}) + ordering "
            f"{queue:.2f} (worker: read, ack, leases); enqueue {self.enqueue_trips / per:.2f} "
            "(ingress)",
        ]
        if self.cache is not None:
            hits, misses = self.cache
            first = 0 if self.run.steady else min(self.chats, self.turns)  # steady: answered before
            lines.append(
                f"  chat copy     history from the worker's copy on {hits} turns, read from Redis "
                f"on {misses} (the chats' first turns: {first})"
            )
        if self.exposition is not None:
            counted, size = self.exposition
            lines.append(
                f"  metrics       {counted} turns counted (warm-up included); one scrape at the "
                f"end: {size} bytes"
            )
        if self.toggled is not None:
            lines.extend(self.toggled.report())
        if self.delivered is not None:
            marked, chats = self.delivered
            lines.append(f"  delivered     marks on {marked}/{chats} chats name their last turn")
        if self.partitions and self.enqueue_seconds:
            what = (
                f"sent while the worker ran, {self.turns / self.enqueue_seconds:.0f} messages/s "
                f"({self.enqueue_seconds:.2f} s)"
                if self.run.rate
                else f"{self.turns / self.enqueue_seconds:.0f} messages/s enqueued by its own "
                f"process ({self.enqueue_seconds:.2f} s) with no worker running, before the "
                "clock starts"
            )
            lines.append(f"  ingress       {what}")
        return "\n".join(lines)


def report(results: list[BenchResult], url: str, cost: CostRounds | None = None) -> str:
    first = results[0]
    how = f"queue with {first.partitions} partitions" if first.partitions else "no queue"
    head = f"fmbot bench: echo model, {how}, Redis {mask_url(url)}, {loop_name()} event loop"
    lines = [head, *(r.report() for r in results), *many_chats_cost(results)]
    return "\n".join([*lines, *(cost.report() if cost else [])])


def many_chats_cost(results: list[BenchResult]) -> list[str]:
    """The steady state with few and with many chats compared: what keeping many chats costs."""
    few = [r for r in results if r.run.label == "steady state"]
    many = [r for r in results if r.run.label == "many chats"]
    if not (few and many):
        return []
    a, b = few[0], many[0]
    return [
        f"many chats cost: steady state {a.rate:.0f} turns/s with {a.chats} chats, {b.rate:.0f} "
        f"with {b.chats} ({b.rate / max(a.rate, 1e-9):.2f}×; same run, same worker settings)"
    ]


async def run_cost_rounds(
    settings: Settings,
    url: str,
    run: Run,
    rounds: int,
    *,
    partitions: int = 16,
    queue: bool = True,
) -> CostRounds:
    """``rounds`` A/B rounds of ``run`` (see CostRounds), each run on fresh keys."""
    without: list[BenchResult] = []
    with_: list[BenchResult] = []
    order = cost_order(rounds)
    for on in order:
        one = dataclasses.replace(run, metrics=on)
        result = await run_bench(settings, url, one, partitions=partitions, queue=queue)
        (with_ if on else without).append(result)
    return CostRounds(without, with_, " ".join("B" if on else "A" for on in order))


async def run_benches(
    settings: Settings, url: str, runs: list[Run], *, partitions: int = 16, queue: bool = True
) -> list[BenchResult]:
    """``runs`` one after another (each on fresh keys); the first only without the queue."""
    if not queue:
        runs = [r for r in runs if r.label.startswith("best case")]
    return [await run_bench(settings, url, run, partitions=partitions, queue=queue) for run in runs]


async def run_bench(
    settings: Settings, url: str, run: Run, *, partitions: int = 16, queue: bool = True
) -> BenchResult:
    """One run under a fresh key prefix; its keys are deleted afterwards."""
    prefix = f"fmbot-bench-{uuid.uuid4().hex[:8]}"
    history, ordering, enqueue = RoundTrips(), RoundTrips(), RoundTrips()
    store_client = counting_client(url, history)
    store = JournaledRedisStore(store_client, prefix)
    store.max_turns = settings.history_messages
    store.cache = ChatCache(settings.worker_cache_mb * 2**20)  # as a worker's (journal_manager)
    model = EchoModel(context_window=settings.context_tokens)
    manager = DialogManager(
        store,
        model,
        open_prompts(settings),
        default_mode=settings.default_mode,
        history_turns=settings.history_messages,
    )
    # A steady run's first turns (one per chat) are answered before the clock, on top of ``turns``.
    plan = plan_messages(run.chats, run.turns + (run.chats if run.steady else 0))
    metrics.enable(run.metrics)
    counted = _turns_counted()
    try:
        if queue:
            counters = (history, ordering, enqueue)
            result = await _through_queue(manager, url, prefix, plan, partitions, run, counters)
        else:
            result = await _direct(manager, plan, run)
            result.history_trips = history.count
        if run.metrics:
            scrape = metrics.exposition("worker")
            result.exposition = (_turns_counted(scrape) - counted, len(scrape))
        if result.toggled is not None:
            result.toggled.counted = _turns_counted() - counted
        return result
    finally:
        metrics.enable(False)
        try:
            await _delete_prefix(store_client, prefix)
        except REDIS_ERRORS as exc:  # e.g. Redis unreachable: do not hide why the bench failed
            log.warning("could not delete the benchmark's keys %s*: %s", prefix, exc)
        finally:
            await manager.aclose()


def _turns_counted(scrape: bytes | None = None) -> int:
    """Turns in fmbot_turns_total, read from a scrape as Prometheus would."""
    text = (scrape or metrics.exposition("worker")).decode()
    return round(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "fmbot_turns_total"
        )
    )


async def _direct(manager: DialogManager, plan: list[list[str]], run: Run) -> BenchResult:
    answered = 0
    service: list[float] = []
    limit = asyncio.Semaphore(run.concurrency)  # as a worker's: at most this many turns at once

    async def chat(c: int, messages: list[str]) -> None:
        nonlocal answered
        for text in messages:
            async with limit:
                started = time.perf_counter()
                incoming = Incoming(f"c{c}", text)
                async with contextlib.aclosing(manager.handle(incoming)) as events:
                    async for _ in events:
                        pass
                service.append((time.perf_counter() - started) * 1000)
            answered += 1

    toggler = Toggler(lambda: answered, run.toggle) if run.toggle else None
    started, cpu_started = time.perf_counter(), time.process_time()
    if toggler is not None:
        toggler.start()
    await asyncio.gather(*(chat(c, m) for c, m in enumerate(plan)))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    toggled = await toggler.stop() if toggler is not None else None
    # Called directly, a turn waits for nothing but the concurrency limit (not measured).
    return BenchResult(
        run,
        answered,
        seconds,
        0,
        0,
        0,
        [],
        service,
        list(service),
        cpu_seconds=cpu,
        toggled=toggled,
    )


@dataclass
class _Phase:
    """A phase of the queue benchmark: it waits for ``target`` answers, the last at ``finished``."""

    target: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: float = 0.0
    #: This process's CPU time (time.process_time) when the last answer came.
    cpu: float = 0.0


@dataclass
class _Turn:
    """When a turn's message was queued, picked up and answered (epoch seconds, all processes)."""

    queued: float
    started: float
    ended: float


async def _through_queue(
    manager: DialogManager,
    url: str,
    prefix: str,
    plan: list[list[str]],
    partitions: int,
    run: Run,
    counters: tuple[RoundTrips, RoundTrips, RoundTrips],
) -> BenchResult:
    history, ordering, _ = counters
    keys = QueueKeys(prefix, partitions)
    assert isinstance(manager.store, JournaledRedisStore)
    cache = manager.store.cache
    firsts = [(f"c{c}", m[0]) for c, m in enumerate(plan) if m and run.steady]
    total = sum(len(m) for m in plan) - len(firsts)
    gate = asyncio.Event()  # closed: the worker holds its jobs (steady runs, before the clock)
    gate.set()
    handler = DialogHandler(manager, keys, publish=run.publish)
    next_n: dict[str, int] = {}
    seen: set[tuple[int, str]] = set()  # entry ids are unique per stream, not across them
    stats = {"out_of_order": 0, "duplicates": 0}
    turns: list[_Turn] = []
    warm_up = [f"bench-warmup-{i}" for i in range(2 * run.concurrency)]
    phase = _Phase(len(warm_up))

    async def timed(job: Job) -> None:
        await gate.wait()
        started = time.time()  # wall clock: the ingress stamps messages in another process
        await handler(job)
        ended = time.time()
        turns.append(_Turn(float(job.payload.get("t", started)), started, ended))
        n = int(job.payload["n"])
        if n != next_n.get(job.chat, 0):
            stats["out_of_order"] += 1
        next_n[job.chat] = n + 1
        if (job.partition, job.id) in seen:
            stats["duplicates"] += 1
        seen.add((job.partition, job.id))
        if len(turns) >= phase.target and not phase.done.is_set():
            phase.finished = time.perf_counter()
            phase.cpu = time.process_time()
            phase.done.set()

    def new_worker() -> Worker:
        return Worker(queue_client, timed, keys=keys, concurrency=run.concurrency)

    queue_client = counting_client(url, ordering)
    worker: Worker | None = None
    running: asyncio.Task[None] | None = None
    toggled: Toggled | None = None

    def start_worker() -> None:
        nonlocal worker, running
        worker = new_worker()
        running = asyncio.create_task(worker.run())

    async def against_the_clock(start: Callable[[], object]) -> tuple[float, float, float]:
        """Counters reset, the clock started, then ``start`` (the backlog's answering) and every
        turn waited for: the clock's epoch start, its seconds, and this process's CPU seconds."""
        nonlocal phase
        turns.clear()
        phase = _Phase(total)
        history.count = ordering.count = 0
        cache.hits = cache.misses = 0
        nonlocal toggled
        toggler = Toggler(lambda: len(turns), run.toggle) if run.toggle else None
        clock, started, cpu_started = time.time(), time.perf_counter(), time.process_time()
        start()
        if toggler is not None:
            toggler.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.done.wait(), timeout=60 + total / 100)
        seconds = (phase.finished or time.perf_counter()) - started
        if toggler is not None:
            toggled = await toggler.stop()
        return clock, seconds, (phase.cpu or time.process_time()) - cpu_started

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
        counts = [len(m) for m in plan]
        start = 1 if run.steady else 0  # a steady run's first messages come from the warm-up
        producer = Producer(url, prefix, partitions, counts, rate=run.rate, start=start)
        cleanup.push_async_callback(producer.close)  # runs first: no enqueueing after a failure
        await producer.ready()

        # Warm up as a running worker is: its Redis connections open, the manager's too.
        worker = new_worker()
        running = asyncio.create_task(worker.run())
        warmup = Ingress(queue_client, keys)
        for chat in warm_up:
            await warmup.enqueue(chat, {"n": 0, "text": "warm up"})
        await asyncio.wait_for(phase.done.wait(), 30)
        if firsts:
            # Steady: this worker answers every chat's first message, keeps its partitions (and
            # so its copy of the chats), and holds the backlog's jobs until the clock starts.
            phase = _Phase(len(warm_up) + len(firsts))
            await _enqueue_all(warmup, [(chat, {"n": 0, "text": text}) for chat, text in firsts])
            await asyncio.wait_for(phase.done.wait(), timeout=60 + len(firsts) / 100)
            gate.clear()

        if run.rate:
            # Live: the warm worker keeps running and the messages arrive while it does.
            turns.clear()
            phase = _Phase(total)
            history.count = ordering.count = 0
            cache.hits = cache.misses = 0
            cpu_started = time.process_time()
            producer.go()
            enqueue_trips, enqueue_seconds = await producer.result()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phase.done.wait(), timeout=60 + total / 100)
            first = min((t.queued for t in turns), default=0.0)
            seconds = max((t.ended for t in turns), default=first) - first
            cpu = (phase.cpu or time.process_time()) - cpu_started
            clock = 0.0
        elif firsts:
            producer.go()
            enqueue_trips, enqueue_seconds = await producer.result()
            # Counted from the clock's start, as the other backlog runs are: the worker reads
            # jobs as they arrive (few at a time) while it holds them, which no backlog run does.
            clock, seconds, cpu = await against_the_clock(gate.set)
        else:
            # ... else stopped: it releases its partitions and leaves the membership set, so the
            # worker that answers the backlog takes every partition in its first round.
            await stop_worker()
            await _check_released(queue_client, keys)

            # The backlog, every chat's messages, queued with no worker running: enqueuing next
            # to the worker would measure three processes sharing the CPU (two cores here)
            # rather than the worker. The ingress times itself.
            producer.go()
            enqueue_trips, enqueue_seconds = await producer.result()

            # A new worker on the same clients and manager (warm connection pools) answers the
            # backlog against the clock: taking the partitions, reading, decoding, running, acking.
            clock, seconds, cpu = await against_the_clock(start_worker)
        trips, history_trips = ordering.count, history.count
        hits, misses = cache.hits, cache.misses
        seen.clear()
        next_n.clear()
        answered = list(turns)
        delivered = None
        if run.publish:
            await stop_worker()  # nothing is marked after this
            talking = sum(1 for m in plan if m)  # chats c0, c1, ... that sent a message
            marked = await _count_delivered(queue_client, prefix, talking)
            delivered = (marked, talking)
    # A backlog's messages wait from the worker's start: before it, no worker could pick them up.
    waiting = [(t.started - max(t.queued, clock)) * 1000 for t in answered]
    service = [(t.ended - t.started) * 1000 for t in answered]
    whole = [(t.ended - max(t.queued, clock)) * 1000 for t in answered]
    return BenchResult(
        run,
        len(answered),
        seconds,
        history_trips,
        trips,
        enqueue_trips,
        waiting,
        service,
        whole,
        out_of_order=stats["out_of_order"],
        duplicates=stats["duplicates"],
        partitions=partitions,
        enqueue_seconds=enqueue_seconds,
        delivered=delivered,
        cache=(hits, misses),
        cpu_seconds=cpu,
        toggled=toggled,
    )


async def _enqueue_all(ingress: Ingress, jobs: list[tuple[str, dict[str, Any]]]) -> None:
    """Enqueue ``jobs`` (chat, payload), a bounded number at once: one per chat would wait longer
    for a pooled connection than the pool allows at 20,000 chats."""
    limit = asyncio.Semaphore(MAX_CONNECTIONS // 2)

    async def one(chat: str, payload: dict[str, Any]) -> None:
        async with limit:
            await ingress.enqueue(chat, payload)

    await asyncio.gather(*(one(chat, payload) for chat, payload in jobs))


async def _count_delivered(client: aioredis.Redis, prefix: str, chats: int, page: int = 500) -> int:
    """Chats ``c0`` ... whose delivered mark names the job their last stored turn answered."""
    keys = QueueKeys(prefix)
    marked = 0
    for first in range(0, chats, page):
        names = [f"c{c}" for c in range(first, min(chats, first + page))]
        answered = await client.mget([keys.answered(n) for n in names])
        delivered = await client.mget([keys.delivered(n) for n in names])
        marked += sum(1 for a, d in zip(answered, delivered, strict=True) if a and a == d)
    return marked


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

    def __init__(
        self,
        url: str,
        prefix: str,
        partitions: int,
        counts: list[int],
        *,
        rate: float = 0.0,
        start: int = 0,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with a running loop
        self._go = ctx.Event()
        self._abort = ctx.Event()
        self._out, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_producer_main,
            args=(
                url,
                prefix,
                partitions,
                counts,
                rate,
                start,
                self._go,
                self._abort,
                child_end,
                os.getpid(),
            ),
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
    rate: float,
    start: int,
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

            async def send(c: int, n: int) -> None:
                # "t": when the message was queued, for the worker's waiting time.
                payload = {"n": n, "text": f"chat-{c} message {n}", "t": time.time()}
                await ingress.enqueue(f"c{c}", payload)

            async def chat(c: int, count: int) -> None:
                async with limit:
                    for n in range(start, count):
                        await send(c, n)

            async def paced(c: int, n: int, before: asyncio.Task[None] | None) -> None:
                if before is not None:
                    await before  # the chat's previous message is queued first
                async with limit:
                    await send(c, n)

            if not rate:
                await asyncio.gather(*(chat(c, count) for c, count in enumerate(counts)))
            else:
                # Round robin over the chats, message k due at k / rate s after the start.
                numbers = range(start, max(counts, default=0))
                order = [(c, n) for n in numbers for c in range(len(counts))]
                loop = asyncio.get_running_loop()
                begin = loop.time()
                last: dict[int, asyncio.Task[None]] = {}
                sent: list[asyncio.Task[None]] = []
                for k, (c, n) in enumerate((c, n) for c, n in order if n < counts[c]):
                    delay = begin + k / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    last[c] = asyncio.create_task(paced(c, n, last.get(c)))
                    sent.append(last[c])
                await asyncio.gather(*sent)
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


def profiled(run: Callable[[], Awaitable[_T]], top: int = 25) -> tuple[_T, str]:
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


async def _await(run: Callable[[], Awaitable[_T]]) -> _T:
    return await run()
