"""Workers in one process sharing the real Redis: order per chat, rebalancing, failures, dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from bot.busy import BusyPolicy
from bot.dialog import DialogManager
from bot.events import Message, Usage
from bot.models.base import GeneratedImage, GenerationOptions, ImageModel
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys, Worker, current_job
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.queue.partition import Tuning
from bot.redis.connect import connect
from tests.conftest import answered
from tests.doubles import Recording

LEASE_MS = 3000  # heartbeat 1 s: rebalancing within a few seconds


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_server)
    yield c
    await c.aclose()


async def eventually(check: Callable[[], bool], seconds: float = 20) -> None:
    """Wait for ``check`` (generous deadline: this is not a timing test)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Recorder:
    """A handler that records what ran where, and fails if a chat ever runs twice at once."""

    def __init__(self, name: str, log: list[tuple[str, str, int]], busy: set[str]) -> None:
        self.name, self.log, self.busy = name, log, busy

    async def __call__(self, job: Job) -> None:
        assert job.chat not in self.busy, f"chat {job.chat} ran concurrently"
        self.busy.add(job.chat)
        try:
            await asyncio.sleep(random.uniform(0.03, 0.07))
            self.log.append((self.name, job.chat, int(job.payload["n"])))
        finally:
            self.busy.discard(job.chat)


def start(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def test_two_workers_split_partitions_and_keep_every_chat_in_order(
    client: aioredis.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.queue")
    keys = QueueKeys(redis_prefix, 8)
    log: list[tuple[str, str, int]] = []
    busy: set[str] = set()
    a = Worker(client, Recorder("a", log, busy), keys=keys, name="a", lease_ms=LEASE_MS)
    b = Worker(client, Recorder("b", log, busy), keys=keys, name="b", lease_ms=LEASE_MS)
    ingress = Ingress(client, keys)
    chats = [f"chat-{i}" for i in range(6)]
    running = [start(a)]
    try:
        for n in range(40):
            if n == 30:
                # b joins with a backlog in every chat: partitions move while jobs are queued
                # and running; a finishes the running ones, b replays the rest from the PEL.
                running.append(start(b))
            for chat in chats:
                await ingress.enqueue(chat, {"n": n})
        await eventually(lambda: len(log) >= 240)
        await eventually(lambda: len(a.partitions) == len(b.partitions) == 4)
        assert set(a.partitions).isdisjoint(b.partitions)
        by_chat: dict[str, list[int]] = defaultdict(list)
        for _, chat, n in log:
            by_chat[chat].append(n)
        assert all(by_chat[c] == list(range(40)) for c in chats), by_chat
        assert {w for w, _, _ in log} == {"a", "b"}
        assert len(log) == 240  # none twice
        assert "took over" in caplog.text  # b replayed jobs a had read but not started

        await b.stop(5)  # a graceful leave hands its partitions over at once
        await eventually(lambda: len(a.partitions) == 8, 10)
        for chat in chats:
            await ingress.enqueue(chat, {"n": 40})
        await eventually(lambda: len(log) >= 246)
        assert [w for w, _, n in log if n == 40] == ["a"] * 6
        assert len(log) == 246
    finally:
        await asyncio.gather(a.stop(5), b.stop(5))
        await asyncio.gather(*running)


async def test_a_stopping_worker_finishes_a_reply_longer_than_its_lease_alone(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """SIGTERM during a turn that outlasts the lease: the stopping worker keeps renewing until it
    has finished and released, so the other worker does not take the job over and answer it a
    second time; the chat's next message waits for the release and is answered once."""
    keys = QueueKeys(redis_prefix, 1)
    runs: list[tuple[str, str]] = []
    started = asyncio.Event()

    def handler(name: str) -> Callable[[Job], Awaitable[None]]:
        async def run(job: Job) -> None:
            runs.append((name, job.payload["text"]))
            if job.payload["text"] == "long":
                started.set()
                await asyncio.sleep(3 * LEASE_MS / 1000)
            runs.append((name, "done " + job.payload["text"]))

        return run

    a = Worker(client, handler("a"), keys=keys, name="a", lease_ms=LEASE_MS)
    b = Worker(client, handler("b"), keys=keys, name="b", lease_ms=LEASE_MS)
    running = [start(a)]
    try:
        await eventually(lambda: a.partitions == [0])
        running.append(start(b))
        await eventually(lambda: b.members == ["a", "b"])
        ingress = Ingress(client, keys)
        await ingress.enqueue("c", {"text": "long"})
        await started.wait()
        await ingress.enqueue("c", {"text": "next"})
        await a.stop(grace=30)  # returns once the long reply is done and the lease released
        assert runs == [("a", "long"), ("a", "done long")]
        await eventually(lambda: ("b", "done next") in runs)
        assert runs == [("a", "long"), ("a", "done long"), ("b", "next"), ("b", "done next")]
    finally:
        await asyncio.gather(a.stop(5), b.stop(5))
        await asyncio.gather(*running)


async def test_a_failing_job_is_retried_then_buried_and_its_chat_goes_on(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = QueueKeys(redis_prefix, 2)
    seen: list[tuple[str, int]] = []

    async def handler(job: Job) -> None:
        seen.append((job.payload["text"], job.attempt))
        if job.payload["text"] == "poison":
            raise ValueError("cannot handle this")

    worker = Worker(client, handler, keys=keys, lease_ms=LEASE_MS, tuning=Tuning(max_attempts=2))
    running = start(worker)
    try:
        ingress = Ingress(client, keys)
        await ingress.enqueue("c", {"text": "poison"})
        await ingress.enqueue("c", {"text": "next"})
        await eventually(lambda: ("next", 1) in seen)
        assert [t for t, _ in seen] == ["poison", "poison", "next"]
        dead = cast(
            list[tuple[str, dict[str, str]]], await client.xrange(keys.dead(keys.partition("c")))
        )
        assert [json_text(fields) for _, fields in dead] == ["poison"]
        await eventually(lambda: worker.handled == 2)
        await asyncio.sleep(0.3)  # acks are flushed right after the handler returns
        assert await client.xlen(keys.jobs(keys.partition("c"))) == 0  # acked and deleted
    finally:
        await worker.stop(5)
        await running


def json_text(fields: dict[str, str]) -> str:
    import json

    return str(json.loads(fields["payload"])["text"])


async def test_immediate_jobs_skip_their_chats_lane(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = QueueKeys(redis_prefix, 2)
    release = asyncio.Event()
    done: list[str] = []

    async def handler(job: Job) -> None:
        if job.payload["text"] == "long turn":
            await release.wait()
        done.append(job.payload["text"])

    tuning = Tuning(immediate=lambda job: job.payload["text"] == "/stop")
    worker = Worker(client, handler, keys=keys, lease_ms=LEASE_MS, tuning=tuning)
    running = start(worker)
    try:
        ingress = Ingress(client, keys)
        for text in ("long turn", "queued", "/stop"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: done == ["/stop"])  # reached while the turn is running
        release.set()
        await eventually(lambda: done == ["/stop", "long turn", "queued"])
    finally:
        release.set()
        await worker.stop(5)
        await running


async def test_a_redelivered_job_whose_turn_was_stored_is_not_answered_again(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    store = JournaledRedisStore(aioredis.Redis.from_url(redis_server, decode_responses=True))
    store.prefix = redis_prefix
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 2)
    handler = DialogHandler(manager, keys)
    run: Callable[[Job], Awaitable[None]] = handler
    try:
        job = Job("100-0", "c", {"text": "hello"}, keys.partition("c"))
        token_ctx = current_job
        token = token_ctx.set(job)
        try:
            await run(job)
            again = Job("100-0", "c", {"text": "hello"}, job.partition, attempt=2)
            token_ctx.set(again)
            await run(again)  # the worker died before acking: delivered again
            later = Job("101-0", "c", {"text": "next"}, job.partition, attempt=2)
            token_ctx.set(later)
            await run(later)  # redelivered but never answered: answered now
        finally:
            token_ctx.reset(token)
        assert [t.text for t in await store.read("c")] == [
            "hello",
            "echo: hello",
            "next",
            "echo: next",
        ]
        assert handler.skipped == 1
        replies = await store.client.lrange(keys.replies("c"), 0, -1)
        assert len(replies) == 2
    finally:
        await manager.aclose()


@contextlib.asynccontextmanager
async def serving(manager: DialogManager, worker: Worker) -> AsyncIterator[Ingress]:
    """Run ``worker`` for the block; yield an ingress on its Redis; close everything after."""
    running = start(worker)
    try:
        yield Ingress(worker.redis, worker.keys)
    finally:
        await worker.stop(5)
        await running
        await manager.aclose()


async def _policy_worker(
    redis_server: str, redis_prefix: str, prompts_dir: Path, policy: BusyPolicy, model: EchoModel
) -> tuple[Worker, DialogManager]:
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(store, model, PromptLibrary(prompts_dir), busy_policy=policy)
    keys = QueueKeys(redis_prefix, 2)
    tuning = Tuning(overlap=manager.busy.overlaps)
    worker = Worker(store.client, DialogHandler(manager, keys), keys=keys, tuning=tuning)
    return worker, manager


async def test_merge_in_a_worker_answers_what_arrived_during_a_turn_as_one_turn(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    worker, manager = await _policy_worker(
        redis_server, redis_prefix, prompts_dir, BusyPolicy.MERGE, EchoModel(delay=0.5)
    )
    store = cast(JournaledRedisStore, manager.store)
    async with serving(manager, worker) as ingress:
        ids = [await ingress.enqueue("c", {"text": t}) for t in ("first", "second", "third")]
        await eventually(lambda: worker.handled == 3)
        texts = [t.text for t in await store.read("c")]
        assert texts == ["first", "echo: first", "second\n\nthird", "echo: second\n\nthird"]
        # The merged turn is journaled as the newest message's: a redelivered "third" is skipped.
        assert await answered(store, "c", ids[2])
        assert await store.client.get(worker.keys.answered("c")) == ids[2]
        # ... and marked delivered as that by the job that delivered it ("second"'s).
        assert await store.client.get(worker.keys.delivered("c")) == ids[2]


async def test_interrupt_in_a_worker_stops_the_running_reply_for_the_newer_message(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    worker, manager = await _policy_worker(
        redis_server, redis_prefix, prompts_dir, BusyPolicy.INTERRUPT, EchoModel(delay=0.5)
    )
    store = cast(JournaledRedisStore, manager.store)
    async with serving(manager, worker) as ingress:
        for text in ("first", "second"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: worker.handled == 2)
        turns = await store.read("c")
        # "second" arrived while the model was still thinking about "first": stopped at once.
        assert [t.text for t in turns] == ["first", "", "second", "echo: second"]
        assert [t.meta.get("status") for t in turns[1::2]] == ["stopped", "complete"]


class StallsOnce(EchoModel):
    """Streams the first word of its first reply and hangs there; later replies are whole."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.streaming = asyncio.Event()

    async def generate(  # type: ignore[override]
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[str | Usage]:
        self.calls += 1
        if self.calls == 1:
            yield "echo:"
            self.streaming.set()
            await asyncio.Event().wait()
        async for chunk in super().generate(messages, options):
            yield chunk


async def test_a_turn_cut_off_by_a_lost_lease_is_not_stored_and_is_answered_once_in_full(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    """The worker gives a job up mid-stream (its lease was taken): the part already streamed is
    not stored, nor the job marked answered, so the next owner answers it in full, once."""
    model = StallsOnce()
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(store, model, PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 1)
    worker = Worker(store.client, DialogHandler(manager, keys), keys=keys, lease_ms=LEASE_MS)
    async with serving(manager, worker) as ingress:
        await ingress.enqueue("c", {"text": "hello"})
        await model.streaming.wait()
        # Another owner holds the lease for a while (as after a long stall): the renewal fails.
        await store.client.set(keys.lease(0), "someone-else", px=LEASE_MS)
        await eventually(lambda: worker.handled == 1, 30)  # taken back and replayed
        turns = await store.read("c")
        assert [(t.text, t.meta.get("status")) for t in turns] == [
            ("hello", None),
            ("echo: hello", "complete"),
        ]
        replies = [json.loads(r) for r in await store.client.lrange(keys.replies("c"), 0, -1)]
        finals = [e for r in replies for e in r["events"] if e["kind"] == "final"]
        assert finals == [{"kind": "final", "text": "echo: hello", "complete": True}]
        assert model.calls == 2


async def test_a_turn_redis_refused_to_store_is_answered_once_and_set_aside(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    """Not an outage: Redis answers the turn's write with an error (here WRONGTYPE; OOM and
    MISCONF alike). The user got the reply and "not saved"; running the job again would answer
    twice, so it goes to the dead stream, not silently acknowledged."""
    model = Recording(EchoModel())
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(store, model, PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 1)
    handler = DialogHandler(manager, keys, publish=False)
    worker = Worker(store.client, handler, keys=keys, lease_ms=LEASE_MS)
    await store.client.rpush(keys.answered("c"), "not a marker")  # the script's GET fails
    async with serving(manager, worker) as ingress:
        await ingress.enqueue("c", {"text": "hello"})
        await eventually(lambda: worker.handled == 1)
        await asyncio.sleep(0.5)  # a retry would call the model again now
        dead = await store.client.xrange(keys.dead(0))
        assert [json.loads(fields["payload"]) for _, fields in dead] == [{"text": "hello"}]
        assert len(model.requests) == 1
        assert await store.client.xlen(keys.jobs(0)) == 0  # acknowledged: not run again


async def test_queue_policy_keeps_a_chats_jobs_strictly_one_at_a_time(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    worker, manager = await _policy_worker(
        redis_server, redis_prefix, prompts_dir, BusyPolicy.QUEUE, EchoModel(delay=0.2)
    )
    store = cast(JournaledRedisStore, manager.store)
    async with serving(manager, worker) as ingress:
        for text in ("first", "second"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: worker.handled == 2)
        texts = [t.text for t in await store.read("c")]
        assert texts == ["first", "echo: first", "second", "echo: second"]


class Canvas(ImageModel):
    """A test image model: bytes naming the prompt."""

    name = "canvas"

    async def generate_image(self, prompt: str) -> GeneratedImage:
        return GeneratedImage(b"\x89PNG" + prompt.encode(), "image/png")


async def test_a_merged_turn_routed_to_an_image_is_journaled_as_its_newest_message(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(
        store,
        EchoModel(delay=0.5),
        PromptLibrary(prompts_dir),
        busy_policy=BusyPolicy.MERGE,
        image_model=Canvas(),
        rewrite_image_prompts=False,
    )
    keys = QueueKeys(redis_prefix, 2)
    tuning = Tuning(overlap=True)
    worker = Worker(store.client, DialogHandler(manager, keys), keys=keys, tuning=tuning)
    async with serving(manager, worker) as ingress:
        texts = ("hello", "draw a cat", "draw a dog")
        ids = [await ingress.enqueue("c", {"text": t}) for t in texts]
        await eventually(lambda: worker.handled == 3)
        turns = await store.read("c")
        assert [t.text for t in turns][2:] == ["draw a cat\n\ndraw a dog", ANY_IMAGE]
        assert await store.client.get(keys.answered("c")) == ids[2]  # a replayed "dog" is skipped
        assert (await store.get_state("c"))["usage_images"] == "1"  # counted in the same write


class _AnyImage(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("[image] ")

    __hash__ = str.__hash__


ANY_IMAGE = _AnyImage("[image] ...")


async def test_a_retried_handler_that_had_stored_its_turn_does_not_answer_again(
    redis_server: str, redis_prefix: str, prompts_dir: Path
) -> None:
    """The handler stores the turn, then fails (e.g. publishing the reply): the retry is a
    redelivery, so the journal skips it — one turn, one answer, in order with the next job."""
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 2)
    inner = DialogHandler(manager, keys, publish=False)
    attempts: list[int] = []

    async def flaky(job: Job) -> None:
        attempts.append(job.attempt)
        await inner(job)
        if job.payload["text"] == "first" and len(attempts) == 1:
            raise RuntimeError("the reply could not be delivered")

    worker = Worker(store.client, flaky, keys=keys, tuning=Tuning(max_attempts=3))
    async with serving(manager, worker) as ingress:
        for text in ("first", "second"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: worker.handled == 2)
        assert attempts == [1, 2, 1]
        assert inner.skipped == 1
        texts = [t.text for t in await store.read("c")]
        assert texts == ["first", "echo: first", "second", "echo: second"]


async def test_a_lease_redis_lost_is_a_new_tenure_that_reads_history_again(
    redis_server: str, redis_prefix: str, prompts_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis loses the chat and the lease (a restart without persistence): the worker takes the
    lease again as a new tenure, so the next prompt does not carry the forgotten history."""
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    model = Recording(EchoModel())
    manager = DialogManager(store, model, PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 1)
    worker = Worker(
        store.client, DialogHandler(manager, keys, publish=False), keys=keys, lease_ms=LEASE_MS
    )
    async with serving(manager, worker) as ingress:
        await ingress.enqueue("c", {"text": "remember this"})
        await eventually(lambda: worker.handled == 1)
        lost = [k async for k in store.client.scan_iter(match=f"{redis_prefix}:{{c}}:*")]
        await store.client.delete(*lost, keys.lease(0))
        await eventually(lambda: "had lapsed" in caplog.text)
        await ingress.enqueue("c", {"text": "what did I say?"})
        await eventually(lambda: worker.handled == 2)
        prompt = [m.text for m in model.requests[-1]]
        assert "remember this" not in prompt and prompt[-1] == "what did I say?"
