"""Prometheus metrics (issue 20): ``FMBOT_METRICS_LISTEN`` serves ``GET /metrics`` from every
process role; the families count turns, model calls, failures and tokens with low-cardinality
labels. Every test scrapes over HTTP and parses with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bot.dialog import DialogManager
from bot.errors import ConfigError, StoreError
from bot.events import FinalText, ImageReply, Incoming, Notice, TextDelta
from bot.limits import Limits, MemoryLimits, RedisLimits
from bot.models.base import ImageModel
from bot.models.http import RetryPolicy, Timeouts
from bot.models.openai_compat import OpenAIConnection, OpenAITextModel
from bot.models.yandex import YandexClient, YandexCredentials, YandexImageModel
from bot.observe import metrics
from bot.observe.server import serving
from bot.prompts.library import PromptLibrary
from bot.queue import QueueKeys
from bot.redis.connect import connect
from bot.settings import load_settings
from bot.stores import DialogStore
from bot.stores.memory import MemoryStore
from bot.stores.redis import RedisStore
from tests.conftest import free_port
from tests.fakes import FakeOpenAI, FakeYandex, Fault
from tests.fakes.telegram_server import FakeTelegram
from tests.test_queue_outage import PrivateRedis
from tests.test_telegram_roles import base_env, exited, fmbot
from tests.test_web_api import send
from tests.web_server import WebServer, web_env
from tests.web_server import serving as web_serving

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "prompts"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    """Every sample of ``GET /metrics``, keyed by name and labels."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(
    port: int, name: str, at_least: float, within: float, **labels: str
) -> Samples:
    """Scrape until the series reaches ``at_least`` (a process counts after it replies)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            samples = await scrape(port)
        except aiohttp.ClientConnectionError:
            samples = {}  # not listening yet
        if value(samples, name, **labels) >= at_least:
            return samples
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{name}{labels} stayed below {at_least}: {value(samples, name, **labels)}")
        await asyncio.sleep(0.1)


def no_user_ids(samples: Samples, *ids: str) -> None:
    """Labels never carry a chat or user id."""
    for _, labels in samples:
        for _, label in labels:
            assert not any(i in label for i in ids), label


@pytest.fixture
async def fake_tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "FMBOT_", "OPENAI_", "YANDEX_")):
            monkeypatch.delenv(name)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["9100", "host:", "host:70000", "localhost:http"])
def test_a_bad_listen_address_is_a_config_error_naming_the_setting(
    bad: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, FMBOT_HOME=str(tmp_path), FMBOT_METRICS_LISTEN=bad)
    assert "FMBOT_METRICS_LISTEN" in str(caught.value)
    assert "HOST:PORT" in str(caught.value)


async def test_a_port_in_use_is_a_config_error_and_metrics_stay_off() -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        with pytest.raises(ConfigError, match="FMBOT_METRICS_LISTEN"):
            async with serving(f"127.0.0.1:{port}", "worker"):
                pass
        assert not metrics.enabled()
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_only_get_metrics_is_served() -> None:
    port = free_port()
    async with serving(f"127.0.0.1:{port}", "all"):
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 404
            async with session.post(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 405
        # A client that never finishes its request does not hold the server up.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")
        # Answered while that client still holds its connection open.
        gc = frozenset({("generation", "0"), ("role", "all")})
        assert ("python_gc_objects_collected_total", gc) in await scrape(port)
        writer.close()


# --- in-process: what the dialog manager counts ----------------------------------------------


FAST_RETRY = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02, jitter=0.01)


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def served() -> AsyncIterator[int]:
    port = free_port()
    async with serving(f"127.0.0.1:{port}", "console"):
        yield port


async def run_turn(manager: DialogManager, chat: str, text: str) -> None:
    async for _ in manager.handle(Incoming(chat, text, user="secret-user-7")):
        pass


def growth(before: Samples, after: Samples) -> Callable[..., float]:
    """How much a series of this process (role console) grew from one scrape to the next."""

    def grew(name: str, **labels: str) -> float:
        labels["role"] = "console"
        return value(after, name, **labels) - value(before, name, **labels)

    return grew


async def openai_manager(
    openai: FakeOpenAI,
    store: DialogStore | None = None,
    *,
    limits: Limits | None = None,
    image_model: ImageModel | None = None,
) -> DialogManager:
    connection = OpenAIConnection(
        openai.base_url,
        SecretStr(openai.api_key),
        timeouts=Timeouts(connect=2.0, read=0.5),
        retry=FAST_RETRY,
    )
    manager = DialogManager(
        store or MemoryStore(),
        OpenAITextModel(connection, "gpt-test"),
        PromptLibrary(PROMPTS),
        limits=limits,
        image_model=image_model,
    )
    manager.channel = "console"
    return manager


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        (Fault("status", status=500), "5xx", "error"),
        (Fault("status", status=429), "429", "error"),
        (Fault("status", status=429, code="insufficient_quota"), "quota", "error"),
        (Fault("status", status=401), "auth", "error"),
        (Fault("hang", seconds=5), "timeout", "error"),
        (Fault("cut", after=2), "cut_stream", "interrupted"),
        (Fault("content_filter", after=0), "content_filter", "refused"),
    ],
)
async def test_model_failures_are_counted_by_kind_and_the_turn_by_how_it_ended(
    openai: FakeOpenAI, served: int, fault: Fault, kind: str, status: str
) -> None:
    manager = await openai_manager(openai)
    before = await scrape(served)
    openai.inject(fault, times=10)
    await run_turn(manager, "chat-secret-1", "hello there")
    after = await scrape(served)
    role = {"role": "console"}
    name = "fmbot_model_errors_total"
    assert value(after, name, model="openai:gpt-test", kind=kind, **role) == (
        value(before, name, model="openai:gpt-test", kind=kind, **role) + 1
    )
    turns = "fmbot_turns_total"
    assert value(after, turns, channel="console", status=status, **role) == (
        value(before, turns, channel="console", status=status, **role) + 1
    )
    no_user_ids(after, "chat-secret-1", "secret-user-7")


async def test_a_good_turn_counts_request_tokens_and_first_token(
    openai: FakeOpenAI, served: int
) -> None:
    manager = await openai_manager(openai)
    openai.reply = "one two three"
    before = await scrape(served)
    await run_turn(manager, "chat-secret-2", "hello there")
    after = await scrape(served)
    grew = growth(before, after)
    assert grew("fmbot_turns_total", channel="console", status="ok") == 1
    assert grew("fmbot_turn_duration_seconds_count", channel="console") == 1
    assert grew("fmbot_model_requests_total", model="openai:gpt-test", outcome="ok") == 1
    assert grew("fmbot_first_token_seconds_count", channel="console", model="openai:gpt-test") == 1
    # The fake's usage: 3 completion tokens; the prompt's depends on the template.
    assert grew("fmbot_model_tokens_total", model="openai:gpt-test", direction="output") == 3
    assert grew("fmbot_model_tokens_total", model="openai:gpt-test", direction="input") > 10


@pytest.mark.parametrize("how", ["closed", "cancelled"])
async def test_a_turn_stopped_mid_stream_is_counted_stopped(
    openai: FakeOpenAI, served: int, how: str
) -> None:
    """The caller stops the turn after its first word: a web client gone (the stream closed),
    a channel shutting down (the task cancelled)."""
    manager = await openai_manager(openai)
    openai.reply = "one two three four five six seven"
    openai.stream_delay = 0.2  # the reply is still streaming when it is stopped
    before = await scrape(served)
    first_word = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(manager.handle(Incoming("chat-s", "hi"))) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    first_word.set()
                    if how == "closed":
                        return  # aclosing closes the turn's generator here
                assert not isinstance(event, FinalText), "the reply ended before it was stopped"

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_word.wait(), 10)
    if how == "cancelled":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await asyncio.wait_for(task, 10)
    after = await scrape(served)
    grew = growth(before, after)
    assert grew("fmbot_turns_total", channel="console", status="stopped") == 1
    assert grew("fmbot_turns_total", channel="console", status="ok") == 0
    assert grew("fmbot_model_requests_total", model="openai:gpt-test", outcome="stopped") == 1
    assert grew("fmbot_turn_duration_seconds_count", channel="console") == 1
    # What the user saw is stored, as stopped.
    [_, reply] = await manager.store.read("chat-s")
    assert reply.meta["status"] == "stopped" and reply.text.startswith("one")


async def test_a_turn_refused_for_a_limit_is_counted_limited(
    openai: FakeOpenAI, served: int
) -> None:
    # A daily budget of one token: the first turn spends it, the next is refused.
    manager = await openai_manager(openai, limits=MemoryLimits(daily_tokens=1))
    before = await scrape(served)
    await run_turn(manager, "chat-l", "one")
    events = [e async for e in manager.handle(Incoming("chat-l", "two", user="secret-user-7"))]
    after = await scrape(served)
    [refusal] = events
    assert isinstance(refusal, Notice) and "budget" in refusal.text
    grew = growth(before, after)
    assert grew("fmbot_turns_total", channel="console", status="ok") == 1
    assert grew("fmbot_turns_total", channel="console", status="limited") == 1
    # The refused turn called no model.
    assert grew("fmbot_model_requests_total", model="openai:gpt-test", outcome="ok") == 1
    no_user_ids(after, "chat-l", "secret-user-7")


@pytest.fixture
async def yandex() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


@pytest.fixture
async def art(yandex: FakeYandex) -> AsyncIterator[YandexImageModel]:
    """YandexART against the fake."""
    credentials = YandexCredentials(
        folder_id=yandex.folder_id, api_key=SecretStr(yandex.api_key), iam_token=None
    )
    client = YandexClient(credentials, fm_url=yandex.llm_url, operations_url=yandex.operations_url)
    yield YandexImageModel(client, f"art://{yandex.folder_id}/yandex-art/latest", seed=7)
    await client.aclose()


@pytest.mark.parametrize("fails", [False, True])
async def test_pictures_are_counted_by_model_and_outcome(
    openai: FakeOpenAI, yandex: FakeYandex, art: YandexImageModel, served: int, fails: bool
) -> None:
    if fails:
        yandex.inject(Fault("operation_error", grpc_code=13, message="internal"))
    manager = await openai_manager(openai, image_model=art)
    before = await scrape(served)
    events = [e async for e in manager.handle(Incoming("chat-i", "/image a red apple"))]
    after = await scrape(served)
    grew = growth(before, after)
    model = art.name  # yandex:art://FOLDER/yandex-art/latest
    outcome, status = ("error", "error") if fails else ("ok", "ok")
    assert isinstance(events[-1], Notice if fails else ImageReply)
    assert grew("fmbot_images_total", model=model, outcome=outcome) == 1
    assert grew("fmbot_images_total", model=model, outcome="ok" if fails else "error") == 0
    assert grew("fmbot_model_requests_total", model=model, outcome=outcome) == 1
    assert grew("fmbot_turns_total", channel="console", status=status) == 1
    errors = sum(v for (name, _), v in after.items() if name == "fmbot_model_errors_total")
    errors -= sum(v for (name, _), v in before.items() if name == "fmbot_model_errors_total")
    assert errors == (1 if fails else 0)


@pytest.mark.parametrize("rewrite_fails", [False, True])
async def test_an_image_turns_prompt_rewrite_is_a_counted_model_call(
    openai: FakeOpenAI,
    yandex: FakeYandex,
    art: YandexImageModel,
    served: int,
    rewrite_fails: bool,
) -> None:
    """A drawing request: the text model rewrites it into the picture's prompt first — a model
    call counted as any (request, error kind, reported tokens); the turn is the picture's."""
    openai.reply = "a red apple, watercolor, soft light"
    if rewrite_fails:
        openai.inject(Fault("status", status=500), times=10)  # past the retries
    manager = await openai_manager(openai, image_model=art)
    before = await scrape(served)
    events = [e async for e in manager.handle(Incoming("chat-r", "draw a red apple"))]
    after = await scrape(served)
    grew = growth(before, after)
    text = "openai:gpt-test"
    assert isinstance(events[-1], ImageReply)  # drawn either way: from the request as is
    [sent] = yandex.requests_to("/imageGenerationAsync")
    drawn = "draw a red apple" if rewrite_fails else openai.reply
    assert sent.body["messages"][0]["text"] == drawn
    assert grew("fmbot_model_requests_total", model=text, outcome="error") == int(rewrite_fails)
    assert grew("fmbot_model_requests_total", model=text, outcome="ok") == int(not rewrite_fails)
    assert grew("fmbot_model_errors_total", model=text, kind="5xx") == int(rewrite_fails)
    # The tokens the model reported (the fake: a token a word); none for the failed call.
    output = 0 if rewrite_fails else len(openai.reply.split())
    assert grew("fmbot_model_tokens_total", model=text, direction="output") == output
    input_tokens = grew("fmbot_model_tokens_total", model=text, direction="input")
    assert (input_tokens == 0) if rewrite_fails else (input_tokens > 10)
    # Not the reply's first token: nothing the user waits to read.
    assert grew("fmbot_first_token_seconds_count", channel="console", model=text) == 0
    assert grew("fmbot_model_requests_total", model=art.name, outcome="ok") == 1
    assert grew("fmbot_images_total", model=art.name, outcome="ok") == 1
    # The turn's status is the picture's, whatever became of the rewrite.
    assert grew("fmbot_turns_total", channel="console", status="ok") == 1
    assert grew("fmbot_turns_total", channel="console", status="error") == 0


async def test_redis_store_errors_a_turn_meets_are_counted(
    openai: FakeOpenAI, served: int, tmp_path: Path
) -> None:
    """FMBOT_STORE=redis:// without the queue (``fmbot web``, ``fmbot telegram --role all``):
    the store's Redis goes away; the user is told to send the message again, the error is
    counted once by kind, and the conversation is still there when Redis is back."""
    private = PrivateRedis(tmp_path)
    private.start(persist=True)
    store = RedisStore.from_url(private.url)
    try:
        manager = await openai_manager(openai, store)
        openai.reply = "first reply"
        await run_turn(manager, "chat-r", "first")
        asked = len(openai.requests)
        private.stop()
        before = await scrape(served)
        events = [e async for e in manager.handle(Incoming("chat-r", "second"))]
        after = await scrape(served)
        [notice] = events
        assert isinstance(notice, Notice) and notice.kind == "error"
        assert "temporarily unavailable" in notice.text and "send it again" in notice.text
        assert len(openai.requests) == asked  # no model call for a turn that cannot be stored
        grew = growth(before, after)
        assert grew("fmbot_redis_errors_total", kind="connection") == 1
        assert grew("fmbot_turns_total", channel="console", status="error") == 1
        # Redis is back (with its append-only file): nothing was lost, the chat goes on.
        private.start(persist=True)
        assert [t.text for t in await store.read("chat-r")] == ["first", "first reply"]
        openai.reply = "third reply"
        events = [e async for e in manager.handle(Incoming("chat-r", "third"))]
        assert events[-1] == FinalText("third reply")
    finally:
        await store.aclose()
        private.stop()


async def redis_gone_at_the_first_word(
    manager: DialogManager, private: PrivateRedis, chat: str, text: str
) -> list[object]:
    """A turn's events; its Redis stops once the reply streams: what the turn read and checked
    before the model went well, what it writes after fails."""
    events: list[object] = []
    async for event in manager.handle(Incoming(chat, text, user="secret-user-7")):
        if isinstance(event, TextDelta) and private.proc is not None:
            private.stop()  # the turn waits here: nothing is written before the loop goes on
        events.append(event)
    return events


async def test_a_reply_the_redis_store_cannot_save_is_counted(
    openai: FakeOpenAI, served: int, tmp_path: Path
) -> None:
    """The store's Redis goes away while the reply streams: the user gets the reply and a
    warning that it was not saved; the Redis error is counted once by kind."""
    private = PrivateRedis(tmp_path)
    private.start(persist=True)
    store = RedisStore.from_url(private.url)
    try:
        manager = await openai_manager(openai, store)
        openai.reply = "a reply that streams"
        before = await scrape(served)
        events = await redis_gone_at_the_first_word(manager, private, "chat-n", "hello")
        after = await scrape(served)
        assert FinalText("a reply that streams") in events
        [warning] = [e for e in events if isinstance(e, Notice)]
        assert warning.kind == "warning" and "not saved" in warning.text
        grew = growth(before, after)
        assert grew("fmbot_redis_errors_total", kind="connection") == 1
        assert grew("fmbot_turns_total", channel="console", status="ok") == 1
        private.start(persist=True)
        assert await store.read("chat-n") == []  # indeed not saved
    finally:
        await store.aclose()
        private.stop()


async def test_tokens_the_redis_limits_cannot_count_are_counted_as_a_redis_error(
    openai: FakeOpenAI, served: int, tmp_path: Path
) -> None:
    """The daily budget's Redis goes away while the reply streams (the conversation is kept
    elsewhere): the turn is answered and saved, only its tokens miss the budget; the Redis
    error is counted."""
    private = PrivateRedis(tmp_path)
    private.start(persist=True)
    client = connect(private.url)
    try:
        limits = RedisLimits(client, "fmbot", daily_tokens=10_000)
        manager = await openai_manager(openai, limits=limits)
        openai.reply = "a reply that streams"
        await run_turn(manager, "chat-t", "first")  # its tokens are counted
        spent = (await limits.status("secret-user-7")).tokens_today
        assert spent > 0
        before = await scrape(served)
        events = await redis_gone_at_the_first_word(manager, private, "chat-t", "hello")
        after = await scrape(served)
        assert events[-1] == FinalText("a reply that streams")
        assert not [e for e in events if isinstance(e, Notice)]
        assert [t.text for t in await manager.store.read("chat-t")][2:] == [
            "hello",
            "a reply that streams",
        ]
        grew = growth(before, after)
        assert grew("fmbot_redis_errors_total", kind="connection") == 1
        assert grew("fmbot_turns_total", channel="console", status="ok") == 1
        private.start(persist=True)
        assert (await limits.status("secret-user-7")).tokens_today == spent  # indeed missed
    finally:
        await client.aclose()
        private.stop()


def wrapped(cause: Exception) -> StoreError:
    """A StoreError raised from ``cause``, as the stores raise them."""
    try:
        raise StoreError(f"store failed: {cause}") from cause
    except StoreError as exc:
        return exc


async def test_only_store_errors_redis_caused_count_as_redis_errors(served: int) -> None:
    before = await scrape(served)
    metrics.store_error(wrapped(sqlite3.OperationalError("database is locked")))
    metrics.store_error(wrapped(OSError(13, "Permission denied")))  # opening a SQLite file
    metrics.store_error(StoreError("no cause"))
    metrics.store_error(wrapped(redis.ReadOnlyError("read only replica")))
    after = await scrape(served)
    redis_errors = {
        dict(labels)["kind"]: v - value(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "fmbot_redis_errors_total"
    }
    assert {kind: n for kind, n in redis_errors.items() if n} == {"readonly": 1}


async def test_nothing_is_counted_while_metrics_are_off(openai: FakeOpenAI) -> None:
    manager = await openai_manager(openai)
    labels = {"channel": "console", "status": "ok"}
    before = REGISTRY.get_sample_value("fmbot_turns_total", labels)
    assert not metrics.enabled()
    await run_turn(manager, "chat-3", "hello")
    assert REGISTRY.get_sample_value("fmbot_turns_total", labels) == before


# --- real processes --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stopped_at_end(*procs: subprocess.Popen[bytes]) -> AsyncIterator[None]:
    """SIGTERM after the block, and each must exit 0; a failed block kills what is left."""
    try:
        yield
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [await exited(p, 30) for p in procs] == [0] * len(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def of_role(samples: Samples, role: str) -> Callable[..., float]:
    return lambda name, **labels: value(samples, name, role=role, **labels)


async def test_fmbot_telegram_serves_metrics_labelled_with_its_role(
    fake_tg: FakeTelegram, tmp_path: Path
) -> None:
    port = free_port()
    env = base_env(fake_tg, tmp_path, FMBOT_METRICS_LISTEN=f"127.0.0.1:{port}")
    alice = fake_tg.user(4242, "Alice")
    chat = fake_tg.private_chat(alice)
    fake_tg.too_many_requests("sendMessage", retry_after=1)
    proc = fmbot(env=env, cwd=tmp_path)
    async with stopped_at_end(proc):
        for n in range(2):
            fake_tg.push_text(chat, alice, f"message {n}")
        samples = await scrape_until(
            port, "fmbot_turns_total", 2, 60, channel="telegram", status="ok", role="all"
        )
        get = of_role(samples, "all")
        assert get("fmbot_model_requests_total", model="echo:", outcome="ok") == 2
        assert get("fmbot_first_token_seconds_count", channel="telegram", model="echo:") == 2
        assert get("fmbot_turn_duration_seconds_count", channel="telegram") == 2
        assert get("fmbot_model_tokens_total", model="echo:", direction="output") > 0
        # Every Bot API call is counted by method and outcome; the 429 with its wait.
        assert get("fmbot_telegram_requests_total", method="getMe", outcome="ok") == 1
        assert get("fmbot_telegram_requests_total", method="sendMessage", outcome="429") == 1
        assert get("fmbot_telegram_requests_total", method="sendMessage", outcome="ok") >= 2
        assert get("fmbot_telegram_retry_after_seconds_total", method="sendMessage") == 1
        no_user_ids(samples, "4242", "Alice")


async def test_ingress_and_worker_each_export_their_own(
    fake_tg: FakeTelegram, tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    """Also: with FMBOT_LOG_FORMAT=json, each role's stderr is JSON lines only (issue 20)."""
    ports = {"ingress": free_port(), "worker": free_port()}
    alice = fake_tg.user(4243, "Alice")
    chat = fake_tg.private_chat(alice)
    procs = []
    for role, port in ports.items():
        env = base_env(
            fake_tg,
            tmp_path,
            FMBOT_STORE=redis_server,
            FMBOT_REDIS_PREFIX=redis_prefix,
            FMBOT_QUEUE_PARTITIONS="4",
            FMBOT_METRICS_LISTEN=f"127.0.0.1:{port}",
            FMBOT_LOG_FORMAT="json",
            FMBOT_LOG_LEVEL="DEBUG",
        )
        procs.append(fmbot("--role", role, env=env, cwd=tmp_path))
    async with stopped_at_end(*procs):
        fake_tg.push_text(chat, alice, "hello")
        worker = await scrape_until(
            ports["worker"],
            "fmbot_turns_total",
            1,
            60,
            channel="telegram",
            status="ok",
            role="worker",
        )
        assert (
            of_role(worker, "worker")("fmbot_model_requests_total", model="echo:", outcome="ok")
            == 1
        )
        ingress = await scrape(ports["ingress"])
        assert {dict(labels)["role"] for _, labels in ingress} == {"ingress"}
        polled = of_role(ingress, "ingress")(
            "fmbot_telegram_requests_total", method="getUpdates", outcome="ok"
        )
        assert polled >= 1
        assert of_role(ingress, "ingress")("fmbot_ingress_updates_total", outcome="queued") == 1
        assert of_role(ingress, "ingress")("fmbot_queue_enqueued_total") == 1
        assert (
            of_role(ingress, "ingress")("fmbot_turns_total", channel="telegram", status="ok") == 0
        )
    for proc in procs:
        assert proc.stderr is not None
        assert json_lines_only(proc.stderr.read().decode())


def json_lines_only(text: str) -> list[dict[str, object]]:
    """Each line of a process's stderr as an object; fails on any line that is not one."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(line, dict) and {"ts", "level", "logger"} <= set(line) for line in lines)
    return lines


def worker_main(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot.queue.worker_main"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_the_queue_worker_process_serves_metrics(
    tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    """Also: with FMBOT_LOG_FORMAT=json, its stderr is JSON lines only (issue 20)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "TELEGRAM_"))} | {
        "PYTHONPATH": str(ROOT),  # this tree, not whichever fmbot is installed
        "FMBOT_STORE": redis_server,
        "FMBOT_REDIS_PREFIX": redis_prefix,
        "FMBOT_QUEUE_PARTITIONS": "4",
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_TEXT_MODEL": "echo:",
        "FMBOT_METRICS_LISTEN": f"127.0.0.1:{port}",
        "FMBOT_LOG_FORMAT": "json",
        "FMBOT_LOG_LEVEL": "DEBUG",
    }
    proc = worker_main(env, tmp_path)
    async with stopped_at_end(proc):
        keys = QueueKeys(redis_prefix, 4)
        r = redis.Redis.from_url(redis_server, socket_timeout=5)
        r.set(keys.config, keys.partitions, nx=True)
        job = {"chat": "c1", "payload": json.dumps({"text": "hi"})}
        r.xadd(keys.jobs(keys.partition("c1")), job)  # type: ignore[arg-type]
        r.close()
        samples = await scrape_until(
            port, "fmbot_turns_total", 1, 60, channel="queue", status="ok", role="worker"
        )
        assert (
            of_role(samples, "worker")("fmbot_model_requests_total", model="echo:", outcome="ok")
            == 1
        )
    assert proc.stderr is not None
    lines = json_lines_only(proc.stderr.read().decode())
    assert any(str(line["message"]).startswith("worker ") for line in lines)  # INFO: started


async def test_the_queue_worker_refuses_a_bad_listen_address_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMBOT_")} | {
        "PYTHONPATH": str(ROOT),
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_METRICS_LISTEN": "everywhere",
    }
    proc = worker_main(env, tmp_path)
    assert await exited(proc, 30) == 2
    assert proc.stderr is not None
    [line] = proc.stderr.read().decode().strip().splitlines()
    assert "FMBOT_METRICS_LISTEN" in line


def web_with_metrics(tmp_path: Path, port: int) -> contextlib.AbstractContextManager[WebServer]:
    env = web_env(
        tmp_path,
        FMBOT_METRICS_LISTEN=f"127.0.0.1:{port}",
        FMBOT_LOG_FORMAT="json",
        FMBOT_LOG_LEVEL="DEBUG",
    )
    return web_serving(env, tmp_path)


async def test_fmbot_web_serves_metrics_on_a_port_of_its_own(tmp_path: Path) -> None:
    """Also: with FMBOT_LOG_FORMAT=json, its output is JSON lines only, the start line too
    (issue 20)."""
    port = free_port()
    with web_with_metrics(tmp_path, port) as web:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
            assert (await client.get("/metrics")).status_code == 404  # not on the web port
            got = await send(client, "w1", "hello metrics")
            assert got[-1][0] == "final"
        samples = await scrape_until(
            port, "fmbot_turns_total", 1, 30, channel="web", status="ok", role="web"
        )
        assert of_role(samples, "web")("fmbot_turn_duration_seconds_count", channel="web") == 1
    lines = json_lines_only(web.output())  # stdout and stderr, after SIGTERM and exit 0
    assert any(line["message"] == f"serving on {web.url}" for line in lines)
    assert any(str(line["logger"]).startswith("uvicorn") for line in lines)  # its lines too


async def test_fmbot_webs_history_api_answers_a_redis_outage_with_503_and_counts_it(
    tmp_path: Path,
) -> None:
    """FMBOT_STORE=redis:// and its Redis goes away: the page's reads of the store (a chat's
    history, the chat list) answer 503 with what to do, as JSON the page shows, and count the
    Redis error; forgetting answers 503 too. Redis back, the history is there again."""
    private = PrivateRedis(tmp_path)
    private.start(persist=True)
    port = free_port()
    chat = "outage-chat-5b1f"  # must not appear in the server's log line of a failed read
    env = web_env(
        tmp_path,
        FMBOT_STORE=private.url,
        FMBOT_METRICS_LISTEN=f"127.0.0.1:{port}",
        FMBOT_LOG_FORMAT="json",
    )
    down = "the conversation store cannot be reached; try again in a moment"
    try:
        with web_serving(env, tmp_path) as web:
            async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
                assert (await send(client, chat, "hello store"))[-1][0] == "final"
                private.stop()
                before = await scrape(port)
                for path in (f"/api/chats/{chat}", "/api/chats"):
                    failed = await client.get(path)
                    assert failed.status_code == 503, failed.text
                    assert failed.headers["content-type"] == "application/json"
                    assert failed.json()["error"].startswith(down)
                    assert "content-security-policy" in failed.headers  # the guard's, still
                read = await scrape(port)
                gone = await client.delete(f"/api/chats/{chat}")
                assert gone.status_code == 503
                assert "temporarily unavailable" in gone.json()["error"]
                after = await scrape(port)
                private.start(persist=True)
                back = await client.get(f"/api/chats/{chat}")
                assert back.status_code == 200, back.text
                turns = [(t["role"], t["text"]) for t in back.json()["turns"]]
                assert turns == [("user", "hello store"), ("assistant", "echo: hello store")]
        counted = [
            of_role(s, "web")("fmbot_redis_errors_total", kind="connection")
            for s in (before, read, after)
        ]
        assert [counted[1] - counted[0], counted[2] - counted[1]] == [2, 1]  # reads, /forget
        failures = [
            line
            for line in json_lines_only(web.output())
            if "the conversation store failed" in str(line["message"])
        ]
        assert [line["level"] for line in failures] == ["ERROR", "ERROR"]
        assert "ChatRoutes.read" in str(failures[0]["message"])
        assert "ChatRoutes.index" in str(failures[1]["message"])
        assert not any(chat in json.dumps(line) for line in failures)
    finally:
        private.stop()
