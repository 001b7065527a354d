"""Trace context through the Redis queue (issue 20): the ingress's ``send`` span travels in the
job as W3C ``traceparent`` and the worker's ``process`` span, and the turn under it, continue its
trace; the Telegram worker's delivery, and the generic queue channel's (bot/queue/chat.py), is a
child of the turn. Spans reach a real OTLP/HTTP
receiver (tests/test_tracing.py's Collector) from real ``fmbot telegram`` processes; the queue's
own cases run in process on the real Redis."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiogram.types import Update

from adapters.telegram.ingress import chat_key, payload
from bot.dialog import DialogManager
from bot.models.echo import EchoModel
from bot.observe import tracing
from bot.observe.server import serving
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.queue.partition import Tuning
from bot.redis.connect import connect
from tests.fakes import FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram
from tests.test_telegram_roles import LEASE_MS, PARTITIONS, base_env, exited, fmbot
from tests.test_telegram_vision import BLUE, picture, worker
from tests.test_tracing import Collector, collecting

PRODUCER, CONSUMER, CLIENT = 4, 5, 3


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    async with collecting() as c:
        yield c


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_server)
    yield c
    await c.aclose()


def traced(monkeypatch: pytest.MonkeyPatch, collector: Collector | None) -> None:
    """Tracing on towards ``collector`` in this process (or off, None)."""
    for name in (*tracing.ENDPOINT_VARIABLES, tracing.CAPTURE_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    if collector is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")


async def entries(client: aioredis.Redis, keys: QueueKeys) -> dict[tuple[str, str], dict[str, str]]:
    """Every job entry of every partition, by stream and entry id (ids of two partitions may
    be equal)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for p in range(keys.partitions):
        for entry_id, fields in await client.xrange(keys.jobs(p)):
            found[keys.jobs(p), entry_id] = fields
    return found


def job_of(span: dict[str, Any]) -> tuple[str, str]:
    """The stream and entry id a messaging span names."""
    attributes = span["attributes"]
    return attributes["messaging.destination.name"], attributes["messaging.message.id"]


def ids(traceparent: str) -> tuple[str, str]:
    """The trace and span ids of a W3C traceparent (version-trace-span-flags)."""
    _, trace, span, _ = traceparent.split("-")
    return trace, span


async def test_an_update_is_one_trace_from_the_ingress_process_to_its_delivery(
    fake: FakeTelegram,
    collector: Collector,
    tmp_path: Path,
    redis_server: str,
    redis_prefix: str,
) -> None:
    env = base_env(
        fake,
        tmp_path,
        FMBOT_STORE=redis_server,
        FMBOT_REDIS_PREFIX=redis_prefix,
        FMBOT_QUEUE_PARTITIONS=str(PARTITIONS),
        FMBOT_QUEUE_LEASE_MS=str(LEASE_MS),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    env.pop(tracing.CAPTURE_VARIABLE, None)
    alice = fake.user(2011, "Alice")
    chat = fake.private_chat(alice)
    fake.too_many_requests("sendMessage", 1)  # the reply's first send: an error on its span
    procs = [fmbot("--role", role, env=env, cwd=tmp_path) for role in ("ingress", "worker")]
    output: Callable[[], str] = lambda: "\n".join(  # noqa: E731
        (p.stderr.read() if p.stderr and p.poll() is not None else b"").decode() for p in procs
    )
    try:
        fake.push_text(chat, alice, "hello zxcv")
        try:
            # Generous: importing aiogram alone takes seconds of CPU, and the cores are shared.
            await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 1, 90)
        except TimeoutError:
            for p in procs:
                p.terminate()
                await exited(p, 20)
            pytest.fail(f"no reply; output: {output()}")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # each flushes its spans on the way out
        assert [await exited(p, 30) for p in procs] == [0, 0], output()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    (send,) = [s for s in collector.spans if s["kind"] == PRODUCER]
    assert send["role"] == "ingress" and send["parent"] == ""
    assert send["name"] == f"send {redis_prefix}:{{q:N}}:jobs"
    attributes = send["attributes"]
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.operation.type"] == "send"
    assert attributes["messaging.destination.name"].startswith(f"{redis_prefix}:{{q:")
    assert "-" in attributes["messaging.message.id"]  # the stream entry id
    (process,) = [s for s in collector.spans if s["kind"] == CONSUMER]
    assert process["role"] == "worker"
    assert (process["trace"], process["parent"]) == (send["trace"], send["id"])
    assert process["links"] == [(send["trace"], send["id"])]
    assert process["attributes"]["messaging.message.id"] == attributes["messaging.message.id"]
    assert process["attributes"]["fmbot.queue.attempt"] == 1
    (turn,) = collector.named("fmbot turn")
    assert (turn["trace"], turn["parent"]) == (send["trace"], process["id"])
    # The delivery: under the turn, the Bot API calls under it, the 429 recorded on its call.
    (deliver,) = collector.named("fmbot deliver")
    assert deliver["parent"] == turn["id"] and not deliver["error"]
    assert deliver["attributes"] == {
        "fmbot.channel": "telegram",
        "fmbot.telegram.preview": "draft",
        "fmbot.reply": "complete",
    }
    sends = collector.named("telegram sendMessage")
    assert [s["parent"] for s in sends] == [deliver["id"]] * 2
    assert all(s["kind"] == CLIENT for s in sends)
    refused, sent = sorted(sends, key=lambda s: not s["error"])
    assert refused["error"] and refused["attributes"]["error.type"] == "429"
    assert refused["attributes"]["fmbot.telegram.retry_after"] == 1
    assert not sent["error"] and "error.type" not in sent["attributes"]
    # One trace from the ingress to the last Bot API call; calls outside it (getUpdates,
    # setMyCommands) have no span; what the user wrote is on none.
    assert {s["trace"] for s in collector.spans} == {send["trace"]}
    assert not collector.named("telegram getUpdates")
    assert "zxcv" not in str(collector.spans)


async def test_without_tracing_a_job_is_stored_as_before(
    client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced(monkeypatch, None)
    keys = QueueKeys(redis_prefix, 2)
    async with serving(None, "ingress"):
        ingress = Ingress(client, keys)
        await ingress.enqueue("chat-a", {"text": "hi"})
        await ingress.enqueue("chat-b", {"text": "hi"}, dedupe="u1")
    found = await entries(client, keys)
    assert len(found) == 2
    assert all(set(fields) == {"chat", "payload"} for fields in found.values())  # no byte more


async def test_the_job_carries_its_enqueue_span_and_the_worker_continues_it(
    client: aioredis.Redis,
    collector: Collector,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both enqueue paths (plain XADD, de-duplicated script), a duplicate, a job queued
    without tracing (as before this change) and one with a broken traceparent: each is
    processed, in a trace of its own unless its context is valid, and a handler's failure is
    recorded on its attempt's span."""
    traced(monkeypatch, collector)
    keys = QueueKeys(redis_prefix, 2)
    ran: list[tuple[str, int]] = []
    failing = {"plain"}

    async def handler(job: Job) -> None:
        name = job.payload["name"]
        ran.append((name, job.attempt))
        if name in failing:
            failing.discard(name)
            raise ValueError("the first attempt fails")

    async with serving(None, "all"):
        ingress = Ingress(client, keys)
        stream = {chat: keys.jobs(keys.partition(chat)) for chat in ("a", "b", "c", "d")}
        plain = stream["a"], await ingress.enqueue("a", {"name": "plain"})
        once = stream["b"], await ingress.enqueue("b", {"name": "once"}, dedupe="u7")
        again = stream["b"], await ingress.enqueue("b", {"name": "once, again"}, dedupe="u7")
        assert again == once
        old = stream["c"], await client.xadd(stream["c"], {
            "chat": "c", "payload": '{"name": "old"}',
        })  # fmt: skip
        broken = stream["d"], await client.xadd(stream["d"], {
            "chat": "d", "payload": '{"name": "broken"}', "traceparent": "00-zz-01",
        })  # fmt: skip
        stored = await entries(client, keys)
        worker = Worker(client, handler, keys=keys, lease_ms=3000, tuning=Tuning(block_ms=100))
        running = asyncio.create_task(worker.run())
        deadline = asyncio.get_running_loop().time() + 20
        while len(ran) < 5:
            assert asyncio.get_running_loop().time() < deadline, ran
            await asyncio.sleep(0.05)
        await worker.stop(5)
        await asyncio.wait_for(running, 10)
    assert sorted(ran) == [("broken", 1), ("old", 1), ("once", 1), ("plain", 1), ("plain", 2)]

    sends = {
        job_of(s): s
        for s in collector.spans
        if s["kind"] == PRODUCER and not s["attributes"].get("fmbot.queue.duplicate")
    }
    duplicate = [s for s in collector.spans if s["attributes"].get("fmbot.queue.duplicate")]
    assert job_of(duplicate[0]) == once
    assert set(sends) == {plain, once} and len(duplicate) == 1  # the duplicate: a span of its own
    for entry in (plain, once):  # the traceparent stored is the send span's
        assert ids(stored[entry]["traceparent"]) == (sends[entry]["trace"], sends[entry]["id"])
        assert set(stored[entry]) == {"chat", "payload", "traceparent"}
    processes: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in collector.spans:
        if s["kind"] == CONSUMER:
            processes.setdefault(job_of(s), []).append(s)
    assert {k: len(v) for k, v in processes.items()} == {plain: 2, once: 1, old: 1, broken: 1}
    for entry in (plain, once):
        for span in processes[entry]:
            assert (span["trace"], span["parent"]) == (sends[entry]["trace"], sends[entry]["id"])
    failed, retried = sorted(processes[plain], key=lambda s: s["attributes"]["fmbot.queue.attempt"])
    assert failed["error"] and failed["attributes"]["error.type"] == "ValueError"
    assert not retried["error"] and retried["attributes"]["fmbot.queue.attempt"] == 2
    for entry in (old, broken):  # no valid context: a trace of its own, no link
        (span,) = processes[entry]
        assert span["parent"] == "" and span["links"] == []
        assert span["trace"] not in {s["trace"] for s in sends.values()}


async def test_an_album_answered_in_one_job_links_to_every_items_enqueue(
    fake: FakeTelegram,
    openai: FakeOpenAI,
    collector: Collector,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first item's job answers the album (the others are skipped): its process span is a
    child of its own enqueue and links to every item's, the batch case of the conventions."""
    traced(monkeypatch, collector)
    alice = fake.user(4011, "Alice")
    chat = fake.private_chat(alice)
    fake.push_album(chat, alice, [picture(640, 480), picture(640, 480, BLUE)], caption="two?")
    updates = [Update.model_validate(u) for u in fake.pending]
    fake.pending.clear()
    client = connect(redis_server)
    try:
        async with serving(None, "all"):
            queue = Ingress(client, QueueKeys(redis_prefix, PARTITIONS))
            for update in updates:
                await queue.enqueue(chat_key(update), payload(update), dedupe=str(update.update_id))
            async with worker(fake, openai, prompts_dir, redis_server, redis_prefix) as running:
                await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 20)
                await fake.wait_for(lambda: running.worker.worker.handled == 2, 10)
    finally:
        await client.aclose()
    assert len(fake.bot_messages(chat["id"])) == 1
    sends = sorted(
        (s for s in collector.spans if s["kind"] == PRODUCER),
        key=lambda s: s["attributes"]["messaging.message.id"],
    )
    first, second = sorted(
        (s for s in collector.spans if s["kind"] == CONSUMER),
        key=lambda s: s["attributes"]["messaging.message.id"],
    )
    assert len(sends) == 2 and first["parent"] == sends[0]["id"]
    assert sorted(first["links"]) == sorted((s["trace"], s["id"]) for s in sends)
    assert second["parent"] == sends[1]["id"]  # skipped, in its own item's trace
    (turn,) = collector.named("fmbot turn")
    assert turn["parent"] == first["id"]


async def test_the_queue_channel_publishes_a_reply_in_a_span_of_its_turn(
    collector: Collector,
    prompts_dir: Path,
    redis_server: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generic queue channel (DialogHandler, ``python -m bot.queue.worker_main``'s) in a
    real Worker on the real Redis: publishing the reply to ``P:{chat}:replies`` is ``fmbot
    deliver`` (channel queue) under the turn, in the trace the job's enqueue began."""
    traced(monkeypatch, collector)
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    keys = QueueKeys(redis_prefix, 2)
    try:
        async with serving(None, "all"):
            worker = Worker(
                store.client,
                DialogHandler(manager, keys),
                keys=keys,
                lease_ms=3000,
                tuning=Tuning(block_ms=100),
            )
            running = asyncio.create_task(worker.run())
            try:
                await Ingress(store.client, keys).enqueue("chat-q", {"text": "hello queue"})
                deadline = asyncio.get_running_loop().time() + 20
                while worker.handled < 1:
                    assert asyncio.get_running_loop().time() < deadline, "the job was not run"
                    await asyncio.sleep(0.05)
            finally:
                await worker.stop(5)
                await asyncio.wait_for(running, 10)
        (published,) = await store.client.lrange(keys.replies("chat-q"), 0, -1)
        assert "echo: hello queue" in published
    finally:
        await manager.aclose()
    (send,) = [s for s in collector.spans if s["kind"] == PRODUCER]
    (process,) = [s for s in collector.spans if s["kind"] == CONSUMER]
    (turn,) = collector.named("fmbot turn")
    assert turn["attributes"]["fmbot.channel"] == "queue" and turn["parent"] == process["id"]
    (deliver,) = collector.named("fmbot deliver")
    assert (deliver["parent"], deliver["trace"]) == (turn["id"], send["trace"])
    assert deliver["attributes"] == {"fmbot.channel": "queue", "fmbot.reply": "complete"}
    assert not deliver["error"]
