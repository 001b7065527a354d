"""``fmbot telegram --role ingress|worker``: the two halves over the real Redis queue, driven by
the fake Bot API server (tests/fakes/telegram_server.py) with the instant ``echo:`` model.

The ingress must never confirm an update Redis does not have; the worker must answer every
update once, in order per chat, with the same handlers as ``--role all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiogram.types import Update
from aiohttp import web

from adapters.telegram.app import TelegramApp, make_bot
from adapters.telegram.ingress import ALLOWED_UPDATES, PollingIngress, enqueue, webhook_app
from adapters.telegram.outbox import MAX_ATTEMPTS
from adapters.telegram.roles import WEBHOOK_CONNECTIONS, run_ingress
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.worker import TelegramWorker, is_immediate
from bot.busy import BusyPolicy
from bot.dialog import DialogManager
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys
from bot.queue.journal import JournaledRedisStore
from bot.redis.connect import connect
from bot.stores.memory import MemoryStore
from tests.conftest import free_port
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram
from tests.test_queue_outage import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
LEASE_MS = 3000


@pytest.fixture(autouse=True)
def _no_telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "FMBOT_")):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


def tg_settings(fake: FakeTelegram) -> TelegramSettings:
    return TelegramSettings(
        _env_file=None,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_URL=fake.base_url,
        TELEGRAM_EDIT_INTERVAL=0.25,
    )


def texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [m.get("text") or "" for m in fake.bot_messages(chat_id)]


@dataclass
class Roles:
    """An ingress and a worker as tasks of the test's event loop, on one Redis."""

    ingress: PollingIngress
    worker: TelegramWorker
    tasks: list[asyncio.Task[None]]


@contextlib.asynccontextmanager
async def roles(
    fake: FakeTelegram,
    prompts_dir: Path,
    url: str,
    prefix: str,
    *,
    delay: float = 0.0,
    policy: BusyPolicy = BusyPolicy.QUEUE,
) -> AsyncIterator[Roles]:
    keys = QueueKeys(prefix, PARTITIONS)
    tg = tg_settings(fake)
    queue = connect(url, socket_timeout=2)
    manager = DialogManager(
        JournaledRedisStore(queue, prefix),
        EchoModel(delay=delay),
        PromptLibrary(prompts_dir),
        busy_policy=policy,
    )
    app = TelegramApp(manager, tg)
    worker = TelegramWorker(app, queue, keys, lease_ms=LEASE_MS)
    bot = make_bot(tg)
    poller = PollingIngress(bot, Ingress(queue, keys), timeout=1, retry_cap=0.5)
    tasks = [asyncio.create_task(poller.run()), asyncio.create_task(worker.run())]
    try:
        yield Roles(poller, worker, tasks)
        for task in tasks:
            assert not task.done(), task  # neither role gives up
    finally:
        poller.request_stop()
        await worker.stop(5)
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await bot.session.close()
        await app.bot.session.close()
        await queue.aclose()


def _update(fake: FakeTelegram) -> dict[str, object]:
    return fake.pending[-1]


# --- end to end, in process ----------------------------------------------------------------


async def test_ingress_and_worker_answer_every_message_in_order(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    alice, bob = fake.user(2001, "Alice"), fake.user(2002, "Bob")
    chats = [fake.private_chat(alice), fake.private_chat(bob)]
    for n in range(4):
        for chat, user in zip(chats, (alice, bob), strict=True):
            fake.push_text(chat, user, f"{user['first_name']} m{n}")
    last = int(_update(fake)["update_id"])  # type: ignore[call-overload]
    async with roles(fake, prompts_dir, redis_server, redis_prefix) as running:
        ids = [chat["id"] for chat in chats]
        await fake.wait_for(lambda: all(len(fake.bot_messages(i)) >= 4 for i in ids), 20)
        await fake.wait_for(lambda: not fake.pending)
        assert running.ingress.queued == 8
    assert texts(fake, alice["id"]) == [f"echo: Alice m{n}" for n in range(4)]
    assert texts(fake, bob["id"]) == [f"echo: Bob m{n}" for n in range(4)]
    assert fake.confirmed[-1] == last + 1  # everything queued is confirmed
    # The worker kept history under the adapter's chat key, in the test's prefix.
    history = await JournaledRedisStore(connect(redis_server), redis_prefix).read(f"tg:{2001}")
    assert [t.text for t in history][:2] == ["Alice m0", "echo: Alice m0"]


async def test_stop_reaches_the_running_turn_instead_of_waiting_behind_it(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    alice = fake.user(2003, "Alice")
    chat = fake.private_chat(alice)
    async with roles(fake, prompts_dir, redis_server, redis_prefix, delay=8.0):
        fake.push_text(chat, alice, "a slow question")
        await fake.wait_for(lambda: bool(fake.calls("sendChatAction")), 10)  # turn is running
        fake.push_text(chat, alice, "/stop")
        # Well before the 8 s model would have answered.
        await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 4)
    assert texts(fake, chat["id"]) == ["(stopped)"]


async def test_merge_policy_joins_messages_sent_during_a_reply_in_worker_mode(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    alice = fake.user(2004, "Alice")
    chat = fake.private_chat(alice)
    for text in ("first", "second", "third"):
        fake.push_text(chat, alice, text)
    async with roles(
        fake, prompts_dir, redis_server, redis_prefix, delay=1.0, policy=BusyPolicy.MERGE
    ) as running:
        await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 2, 20)
        await fake.wait_for(lambda: running.worker.worker.handled == 3, 10)
    assert texts(fake, chat["id"]) == ["echo: first", "echo: second\n\nthird"]


# --- acknowledging only what Redis has -----------------------------------------------------


async def test_ingress_keeps_the_offset_until_redis_has_the_update(
    fake: FakeTelegram, prompts_dir: Path, private_redis: PrivateRedis, redis_prefix: str
) -> None:
    alice = fake.user(2004, "Alice")
    chat = fake.private_chat(alice)
    fake.push_text(chat, alice, "while Redis is down")
    update_id = int(_update(fake)["update_id"])  # type: ignore[call-overload]
    async with roles(fake, prompts_dir, private_redis.url, redis_prefix):
        await fake.wait_for(lambda: len(fake.calls("getUpdates")) >= 3, 15)
        # Fetched again and again, never confirmed, never answered.
        assert [c.get("offset") for c in fake.calls("getUpdates")] == [None] * len(
            fake.calls("getUpdates")
        )
        assert fake.confirmed == [] and [u["update_id"] for u in fake.pending] == [update_id]
        assert not fake.bot_messages(chat["id"])

        private_redis.start(persist=False)
        await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 20)
        await fake.wait_for(lambda: update_id + 1 in fake.confirmed, 5)
    assert texts(fake, chat["id"]) == ["echo: while Redis is down"]
    assert min(fake.confirmed) == update_id + 1


async def test_an_update_delivered_twice_is_answered_once(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    alice = fake.user(2005, "Alice")
    chat = fake.private_chat(alice)
    fake.push_text(chat, alice, "only once")
    raw = dict(_update(fake))
    # An earlier ingress queued it and died before confirming: Telegram delivers it again.
    client = connect(redis_server)
    keys = QueueKeys(redis_prefix, PARTITIONS)
    try:
        await enqueue(Ingress(client, keys), Update.model_validate(raw))
        fake.pending.append(dict(raw))  # ... and, for good measure, twice in one batch
        async with roles(fake, prompts_dir, redis_server, redis_prefix):
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 20)
            await fake.wait_for(lambda: not fake.pending)
            await asyncio.sleep(1.0)  # a second answer would arrive now
        assert texts(fake, chat["id"]) == ["echo: only once"]
        assert [await client.xlen(keys.jobs(p)) for p in range(PARTITIONS)] == [0] * PARTITIONS
    finally:
        await client.aclose()


async def test_a_stored_reply_its_worker_could_not_send_is_sent_after_the_takeover(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    """The worker stored the turn, then stalled sending it and lost its lease: the job is run
    again, finds its turn stored but not delivered, and sends the stored reply — once."""
    alice = fake.user(2009, "Alice")
    chat = fake.private_chat(alice)
    fake.hold_next("sendMessage")  # the final reply hangs in the network
    fake.push_text(chat, alice, "hello")
    keys = QueueKeys(redis_prefix, PARTITIONS)
    async with roles(fake, prompts_dir, redis_server, redis_prefix) as running:
        await fake.wait_for(lambda: bool(fake.held), 20)
        history = await running.worker.store.read(f"tg:{alice['id']}")
        assert [t.text for t in history] == ["hello", "echo: hello"]  # stored before sending
        # Meanwhile another owner holds the partition's lease (as after a long stall).
        lease = keys.lease(keys.partition(f"tg:{alice['id']}"))
        await running.worker.store.client.set(lease, "someone-else", px=LEASE_MS)
        await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 30)
        await asyncio.sleep(1.0)  # a second answer would arrive now
        assert running.worker.skipped == 1  # the model was not asked again
    assert texts(fake, chat["id"]) == ["echo: hello"]
    assert len(fake.held) == 1
    history = await JournaledRedisStore(connect(redis_server), redis_prefix).read(f"tg:{2009}")
    assert [t.text for t in history] == ["hello", "echo: hello"]


async def test_a_job_that_answers_nothing_leaves_an_earlier_reply_in_flight_undelivered(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    """With ``merge`` a chat's next job starts while its turn runs. Group chatter not meant for
    the bot (and a sticker answered with a fixed text) finishing while the turn's stored reply
    is still being sent must not mark that reply delivered: a takeover would then skip it and
    the reply would be lost. The new owner sends it, once."""
    bob = fake.user(2012, "Bob")
    group = fake.group(-102012)
    chat = f"tg:{group['id']}"
    keys = QueueKeys(redis_prefix, PARTITIONS)
    client = connect(redis_server)
    # The reply's preview goes out plain; its formatted final text is an edit, which hangs.
    fake.hold_next("editMessageText")
    merge = BusyPolicy.MERGE
    try:
        async with roles(fake, prompts_dir, redis_server, redis_prefix, policy=merge) as running:
            fake.push_text(group, bob, f"@{BOT_USERNAME} **hello**")
            await fake.wait_for(lambda: bool(fake.held), 20)
            answered = await client.get(keys.answered(chat))
            assert answered is not None  # stored before sending
            preview = fake.bot_messages(group["id"])[0]
            fake.push_text(group, bob, "chatter among the members")  # not for the bot
            # Answered once the chatter's job has returned (it starts only then): a barrier.
            fake.push_sticker(group, bob, reply_to=preview)
            await fake.wait_for(lambda: len(fake.bot_messages(group["id"])) >= 2, 20)
            assert await client.get(keys.delivered(chat)) is None
            # The worker stalls and loses its partition: another owner takes the jobs over.
            lease = keys.lease(keys.partition(chat))
            await client.set(lease, "someone-else", px=LEASE_MS)
        reply = ("echo: hello", [{"type": "bold", "offset": 6, "length": 5}])

        def sent() -> list[dict[str, object]]:  # the reply as formatted (not its preview)
            messages = fake.bot_messages(group["id"])
            return [m for m in messages if (m.get("text"), m.get("entities")) == reply]

        async with roles(fake, prompts_dir, redis_server, redis_prefix, policy=merge) as running:
            await fake.wait_for(lambda: bool(sent()), 30)
            await fake.wait_for(lambda: running.worker.skipped >= 1, 10)
            await asyncio.sleep(1.0)  # a second answer would arrive now
            assert running.worker.skipped == 1  # the model was not asked again
        assert len(sent()) == 1
        assert await client.get(keys.delivered(chat)) == answered
        history = await JournaledRedisStore(client, redis_prefix).read(chat)
        assert [t.text for t in history] == ["**hello**", "echo: **hello**"]
    finally:
        await client.aclose()


async def test_a_reply_telegram_would_not_take_for_a_while_is_sent_by_the_retry(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    """Flood control outlasts the outbox's attempts: the job fails instead of being marked
    delivered, and its retry sends the stored reply. The mark follows the message, never
    precedes it."""
    alice = fake.user(2010, "Alice")
    chat = fake.private_chat(alice)
    fake.too_many_requests("sendMessage", 1, times=MAX_ATTEMPTS)  # the outbox gives up once
    client = connect(redis_server)
    mark = QueueKeys(redis_prefix, PARTITIONS).delivered(f"tg:{alice['id']}")
    early: list[str] = []

    async def watch() -> None:
        while True:
            marked = await client.get(mark)  # read before the messages: sound either way
            if marked is not None:
                if not fake.bot_messages(chat["id"]):
                    early.append(marked)
                return
            await asyncio.sleep(0.02)

    try:
        async with roles(fake, prompts_dir, redis_server, redis_prefix) as running:
            watcher = asyncio.create_task(watch())
            fake.push_text(chat, alice, "hello")
            await fake.wait_for(lambda: bool(fake.bot_messages(chat["id"])), 60)
            await asyncio.wait_for(watcher, 10)
            assert running.worker.skipped == 1  # the retry sent the stored reply
        assert early == []
        assert texts(fake, chat["id"]) == ["echo: hello"]
        refused = [e for e in fake.errors if e[0] == "sendMessage" and e[1] == 429]
        assert len(refused) == MAX_ATTEMPTS
        history = await JournaledRedisStore(client, redis_prefix).read(f"tg:{alice['id']}")
        assert [t.text for t in history] == ["hello", "echo: hello"]  # the model ran once
    finally:
        await client.aclose()


async def test_a_chat_refusing_the_bots_own_answer_does_not_fail_the_job(
    fake: FakeTelegram, prompts_dir: Path, redis_server: str, redis_prefix: str
) -> None:
    """A 400 (no right to write in the group) to the sticker answer is final: logged, the job
    done, not retried into the dead stream."""
    bob = fake.user(2011, "Bob")
    group = fake.group(-102011)
    keys = QueueKeys(redis_prefix, PARTITIONS)
    client = connect(redis_server)
    try:
        async with roles(fake, prompts_dir, redis_server, redis_prefix) as running:
            fake.push_text(group, bob, f"@{BOT_USERNAME} hi")
            await fake.wait_for(lambda: bool(fake.bot_messages(group["id"])), 20)
            answer = fake.bot_messages(group["id"])[0]
            sent = len(fake.calls("sendMessage"))
            fake.fail_next(
                "sendMessage", 400,
                "Bad Request: not enough rights to send text messages to the chat", times=10,
            )  # fmt: skip
            fake.push_sticker(group, bob, reply_to=answer)
            await fake.wait_for(lambda: running.worker.worker.handled == 2, 30)
        assert len(fake.calls("sendMessage")) - sent == 1  # tried once, not retried
        assert [await client.xlen(keys.dead(p)) for p in range(PARTITIONS)] == [0] * PARTITIONS
        assert len(fake.bot_messages(group["id"])) == 1
    finally:
        await client.aclose()


async def test_webhook_answers_200_only_once_queued_and_503_without_redis(
    fake: FakeTelegram, redis_server: str, redis_prefix: str
) -> None:
    alice = fake.user(2006, "Alice")
    chat = fake.private_chat(alice)
    fake.push_text(chat, alice, "via webhook")
    body = dict(fake.pending.pop())
    keys = QueueKeys(redis_prefix, PARTITIONS)
    live, dead = connect(redis_server), connect(f"redis://127.0.0.1:{free_port()}/0")

    async def serve(ingress: Ingress) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(webhook_app(ingress, "s3cret", "/tg"))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}/tg"

    runners = []
    try:
        up, up_url = await serve(Ingress(live, keys))
        down, down_url = await serve(Ingress(dead, keys))
        runners = [up, down]
        headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        async with aiohttp.ClientSession() as http:

            async def post(url: str, secret: dict[str, str] = headers) -> int:
                async with http.post(url, json=body, headers=secret) as response:
                    return response.status

            assert await post(down_url) == 503  # Telegram retries it
            assert await post(up_url, {}) == 401
            assert [await post(up_url), await post(up_url)] == [200, 200]
        chats = [
            fields["chat"]  # type: ignore[index]
            for p in range(PARTITIONS)
            for _id, fields in await live.xrange(keys.jobs(p))  # type: ignore[union-attr]
        ]
        assert chats == [f"tg:{chat['id']}"]
    finally:
        for runner in runners:
            await runner.cleanup()
        await live.aclose()
        await dead.aclose()


# --- units ---------------------------------------------------------------------------------


async def test_webhook_ingress_takes_one_delivery_at_a_time_and_queues_in_order(
    fake: FakeTelegram, redis_server: str, redis_prefix: str
) -> None:
    """``--role ingress --webhook``: setWebhook with max_connections=1 (parallel deliveries
    could queue one chat's messages out of order), and each update queued once, in order."""
    alice = fake.user(2007, "Alice")
    chat = fake.private_chat(alice)
    keys = QueueKeys(redis_prefix, PARTITIONS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg"  # the fake delivers over plain HTTP
    task = asyncio.create_task(
        run_ingress(tg_settings(fake), redis_server, keys, webhook=url, host="127.0.0.1", port=port)
    )
    redis = connect(redis_server)
    try:
        await fake.wait_for(lambda: fake.webhook is not None, 10)
        hook = fake.calls("setWebhook")[0]
        assert hook["url"] == url and hook["max_connections"] == WEBHOOK_CONNECTIONS == 1
        for n in range(5):
            fake.push_text(chat, alice, f"m{n}")
        await fake.wait_for(lambda: len(fake.webhook_deliveries) >= 5, 10)
        assert all(status == 200 for _, status in fake.webhook_deliveries)
        jobs = await redis.xrange(keys.jobs(keys.partition(f"tg:{chat['id']}")))
        queued = [json.loads(fields["payload"])["message"]["text"] for _, fields in jobs]
        assert queued == [f"m{n}" for n in range(5)]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the ingress's handler stops it
        await asyncio.wait_for(task, 10)
        await redis.aclose()


def test_ingress_asks_for_exactly_the_updates_the_worker_handles(
    fake: FakeTelegram, prompts_dir: Path
) -> None:
    manager = DialogManager(MemoryStore(), EchoModel(), PromptLibrary(prompts_dir))
    app = TelegramApp(manager, tg_settings(fake))
    assert sorted(app.allowed_updates()) == ALLOWED_UPDATES


@pytest.mark.parametrize(
    ("payload", "immediate"),
    [
        ({"message": {"text": "/stop"}}, True),
        ({"message": {"text": "/stop@fmbot_test_bot"}}, True),
        ({"message": {"text": "@fmbot_test_bot /stop"}}, True),
        ({"message": {"text": "/stopper"}}, False),
        ({"message": {"text": "please stop"}}, False),
        ({"message": {"sticker": {}}}, False),
        ({"callback_query": {"id": "1"}}, True),
        ({"stopped_message_generation": {"draft_id": 1}}, True),
    ],
)
def test_stop_and_buttons_skip_the_chat_lane(payload: dict[str, object], immediate: bool) -> None:
    assert is_immediate(Job("1-0", "tg:1", payload, 0)) is immediate


# --- the command line, in real processes ---------------------------------------------------


def fmbot(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "telegram", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def base_env(fake: FakeTelegram, tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "TELEGRAM_"))}
    return keep | {
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_URL": fake.base_url or "http://127.0.0.1:9",
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_TEXT_MODEL": "echo:",
        **extra,
    }


# A process's start: importing aiogram alone takes over 10 s on a busy 2-core machine. A hang
# still fails, only later.
START = 90


async def exited(proc: subprocess.Popen[bytes], within: float) -> int:
    """Wait without blocking the loop (the fake server runs on it)."""
    deadline = asyncio.get_running_loop().time() + within
    while proc.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            proc.kill()
            pytest.fail(f"process {proc.args!r} did not exit in {within} s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def test_fmbot_telegram_ingress_and_worker_processes(
    fake: FakeTelegram, tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    env = base_env(
        fake,
        tmp_path,
        FMBOT_STORE=redis_server,
        FMBOT_REDIS_PREFIX=redis_prefix,
        FMBOT_QUEUE_PARTITIONS=str(PARTITIONS),
        FMBOT_QUEUE_LEASE_MS=str(LEASE_MS),
    )
    alice = fake.user(2007, "Alice")
    chat = fake.private_chat(alice)
    procs = [fmbot("--role", role, env=env, cwd=tmp_path) for role in ("ingress", "worker")]
    output: Callable[[], str] = lambda: "\n".join(  # noqa: E731
        (p.stderr.read() if p.stderr and p.poll() is not None else b"").decode() for p in procs
    )
    try:
        for n in range(4):
            fake.push_text(chat, alice, f"message {n}")
        try:
            await fake.wait_for(lambda: len(fake.bot_messages(chat["id"])) >= 4, START)
        except TimeoutError:
            for p in procs:
                p.terminate()
            pytest.fail(f"no replies; output: {output()}")
        assert texts(fake, chat["id"]) == [f"echo: message {n}" for n in range(4)]
        assert fake.commands  # the ingress published the command menu
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [await exited(p, 20) for p in procs] == [0, 0], output()
        await fake.wait_for(lambda: not fake.pending)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("role", ["worker", "ingress"])
async def test_roles_without_a_redis_queue_exit_2_with_one_line(
    fake: FakeTelegram, tmp_path: Path, role: str
) -> None:
    env = base_env(fake, tmp_path, FMBOT_STORE=f"sqlite:///{tmp_path / 'fmbot.db'}")
    proc = fmbot("--role", role, env=env, cwd=tmp_path)
    assert await exited(proc, START) == 2
    assert proc.stderr is not None
    lines = proc.stderr.read().decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "FMBOT_QUEUE_URL" in lines[0] and "redis://" in lines[0]
    assert not fake.requests  # refused before talking to Telegram
