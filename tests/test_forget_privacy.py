"""``/forget`` leaves nothing that names the chat or its user, except what the reply declares.

Every store is real (a SQLite file, a Redis server); every key of the test's prefix is listed
before and after ``/forget`` (SCAN), and what is left is read back, names and contents.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.dialog import DialogManager
from bot.events import FinalText, Incoming, Notice, ReplyEvent
from bot.limits import Limits, MemoryLimits, RedisLimits, pseudonym
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys, Worker, current_job
from bot.queue.chat import REPLIES_TTL, DialogHandler
from bot.queue.journal import MARKER_TTL, JournaledRedisStore
from bot.queue.partition import Tuning
from bot.redis.connect import connect
from bot.stores import open_store
from bot.stores.base import DialogStore
from bot.stores.redis import RedisStore
from bot.stores.sqlite import SQLiteStore

CHAT = "tg:-100555111"
USER = "tg:777222"
NAMES = (CHAT, USER, "555111", "777222")
LIMIT_KEY = re.compile(r"^[^{]*:\{u:[0-9a-f]{32}\}:(rate:\d+|tokens:\d{8})$")


def manager_on(store: DialogStore, prompts_dir: Path, limits: Limits | None) -> DialogManager:
    return DialogManager(store, EchoModel(), PromptLibrary(prompts_dir), limits=limits)


async def say(manager: DialogManager, text: str) -> list[ReplyEvent]:
    return [e async for e in manager.handle(Incoming(CHAT, text, user=USER))]


async def chat_a_little(manager: DialogManager) -> None:
    await say(manager, "/mode default")
    events = await say(manager, "hello, my name is Ada")
    assert any(isinstance(e, FinalText) for e in events), events


async def forget(manager: DialogManager) -> str:
    [done] = await say(manager, "/forget")
    assert isinstance(done, Notice) and done.text.startswith("Deleted everything"), done
    return done.text


def names_someone(text: str) -> bool:
    return any(name in text for name in NAMES)


async def redis_dump(client: aioredis.Redis, prefix: str) -> dict[str, str]:
    """Every key of ``prefix`` with its contents as text (SCAN, then a read per type)."""
    out: dict[str, str] = {}
    async for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        kind = await client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: object = await client.get(key)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1)
        elif kind == "stream":
            value = await client.xrange(key)
        else:
            value = kind
        out[key] = repr(value)
    return out


def about_the_chat(dump: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in dump.items() if names_someone(k) or names_someone(v)}


async def eventually(check: Callable[[], object], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# --- SQLite ---------------------------------------------------------------------------------


def sqlite_rows_naming_the_chat(path: Path) -> list[tuple[str, tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        found = []
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                if any(names_someone(str(v)) for v in row):
                    found.append((table, row))
        return found
    finally:
        db.close()


async def test_sqlite_forget_leaves_no_row_naming_the_chat_and_the_budget_holds(
    tmp_path: Path, prompts_dir: Path
) -> None:
    path = tmp_path / "fmbot.db"
    store = await SQLiteStore.open(path)
    limits = MemoryLimits(daily_tokens=1)  # the first answer uses it up
    manager = manager_on(store, prompts_dir, limits)
    try:
        await chat_a_little(manager)
        assert sqlite_rows_naming_the_chat(path)  # the check sees what is there
        reply = await forget(manager)
        assert sqlite_rows_naming_the_chat(path) == []
        assert "today's token count" in reply and "memory only" in reply
        [refusal] = await say(manager, "and now?")
        assert isinstance(refusal, Notice) and "budget" in refusal.text
    finally:
        await manager.aclose()


# --- Redis, no queue --------------------------------------------------------------------------


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server, decode_responses=True)
    yield c
    await c.aclose()


async def test_redis_forget_leaves_no_key_or_value_naming_the_chat(
    redis_server: str, redis_prefix: str, prompts_dir: Path, client: aioredis.Redis
) -> None:
    manager = manager_on(RedisStore.from_url(redis_server, redis_prefix), prompts_dir, None)
    try:
        await chat_a_little(manager)
        before = about_the_chat(await redis_dump(client, redis_prefix))
        assert f"{redis_prefix}:{{{CHAT}}}:turns" in before
        reply = await forget(manager)
        assert await redis_dump(client, redis_prefix) == {}
        assert reply == (
            "Deleted everything stored about this chat: history, pictures, template and usage."
        )
    finally:
        await manager.aclose()


async def test_redis_with_limits_keeps_only_pseudonymous_counters_and_the_budget_holds(
    redis_server: str, redis_prefix: str, prompts_dir: Path, client: aioredis.Redis
) -> None:
    store = RedisStore.from_url(redis_server, redis_prefix)
    limits = RedisLimits(store.client, redis_prefix, rate_per_minute=50, daily_tokens=1)
    manager = manager_on(store, prompts_dir, limits)
    try:
        await chat_a_little(manager)
        reply = await forget(manager)
        left = await redis_dump(client, redis_prefix)
        assert about_the_chat(left) == {}
        assert left, "the counters must stay, or /forget would reset the budget"
        for key in left:
            assert LIMIT_KEY.match(key), key
            ttl = await client.ttl(key)
            limit = 120 if ":rate:" in key else 2 * 86400
            assert 0 < ttl <= limit, (key, ttl)
        assert "today's token count" in reply and "this minute's message count" in reply
        assert "pseudonym" in reply and "2 days" in reply and "2 minutes" in reply
        # Over budget before /forget, still over budget after it.
        [refusal] = await say(manager, "and now?")
        assert isinstance(refusal, Notice) and "budget" in refusal.text
        assert about_the_chat(await redis_dump(client, redis_prefix)) == {}
    finally:
        await manager.aclose()


@pytest.mark.parametrize("topology", ["redis_server", "redis_cluster"])
async def test_forget_moves_counters_an_older_version_kept_under_the_raw_id(
    topology: str, request: pytest.FixtureRequest, redis_prefix: str, prompts_dir: Path
) -> None:
    """Keys named ``P:{user}:...`` (before pseudonyms) are deleted, their counts kept (on a
    Cluster too: the old and the new keys are in different slots)."""
    store = await open_store(request.getfixturevalue(topology), prefix=redis_prefix)
    assert isinstance(store, RedisStore)
    client = store.client
    limits = RedisLimits(client, redis_prefix, rate_per_minute=50, daily_tokens=100)
    manager = manager_on(store, prompts_dir, limits)
    now = time.time()
    day = time.strftime("%Y%m%d", time.gmtime(now))
    yesterday = time.strftime("%Y%m%d", time.gmtime(now - 86400))
    legacy = f"{redis_prefix}:{{{USER}}}"
    try:
        await client.set(f"{legacy}:tokens:{day}", 500, ex=2 * 86400)
        await client.set(f"{legacy}:tokens:{yesterday}", 7, ex=86400)
        await client.set(f"{legacy}:rate:{int(now // 60)}", 3, ex=120)
        await forget(manager)
        left = await redis_dump(client, redis_prefix)  # type: ignore[arg-type]
        assert about_the_chat(left) == {}
        assert left and all(LIMIT_KEY.match(k) for k in left), left
        assert (await limits.status(USER)).tokens_today == 500
        [refusal] = await say(manager, "hello")
        assert isinstance(refusal, Notice) and "budget" in refusal.text
    finally:
        async for key in client.scan_iter(match=f"{redis_prefix}*"):
            await client.delete(key)
        await manager.aclose()


def test_pseudonyms_are_keyed_and_do_not_contain_the_id() -> None:
    plain = pseudonym(USER, None, "fmbot")
    keyed = pseudonym(USER, b"deployment secret", "fmbot")
    assert plain != keyed and pseudonym(USER, b"another", "fmbot") != keyed
    assert pseudonym(USER, b"deployment secret", "fmbot") == keyed  # stable: counters add up
    assert not names_someone(plain) and not names_someone(keyed)
    assert re.fullmatch(r"u:[0-9a-f]{32}", keyed)


# --- Redis through the queue ------------------------------------------------------------------


async def test_a_queued_chat_keeps_only_its_answered_marker_and_the_forget_reply(
    redis_server: str, redis_prefix: str, prompts_dir: Path, client: aioredis.Redis
) -> None:
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    limits = RedisLimits(store.client, redis_prefix, rate_per_minute=50, daily_tokens=1)
    manager = manager_on(store, prompts_dir, limits)
    keys = QueueKeys(redis_prefix, 2)
    handler = DialogHandler(manager, keys)
    worker = Worker(store.client, handler, keys=keys, lease_ms=3000)
    running = asyncio.create_task(worker.run())
    answered_key = keys.answered(CHAT)
    try:
        ingress = Ingress(store.client, keys)
        first = await ingress.enqueue(CHAT, {"text": "hello, my name is Ada", "user": USER})
        await eventually(lambda: worker.handled == 1)
        await client.set(keys.delivered(CHAT), first)  # as a channel marks it
        before = about_the_chat(await redis_dump(client, redis_prefix))
        assert {keys.replies(CHAT), answered_key, f"{redis_prefix}:{{{CHAT}}}:turns"} <= set(before)
        await ingress.enqueue(CHAT, {"text": "/forget", "user": USER})
        await eventually(lambda: worker.handled == 2)
        jobs = [keys.jobs(p) for p in range(keys.partitions)]

        async def acked() -> bool:
            return sum([await client.xlen(j) for j in jobs]) == 0

        deadline = time.monotonic() + 20
        while not await acked():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(5)
        await running
    try:
        left = await redis_dump(client, redis_prefix)
        named = about_the_chat(left)
        assert set(named) == {answered_key, keys.replies(CHAT)}, named
        # The marker: a stream entry id only, expiring within MARKER_TTL.
        assert await client.get(answered_key) == first
        assert 0 < await client.ttl(answered_key) <= MARKER_TTL
        # The outbox holds the /forget reply alone (what the channel must still send).
        [reply_json] = await client.lrange(keys.replies(CHAT), 0, -1)
        assert "Deleted everything" in reply_json and "Ada" not in reply_json
        assert 0 < await client.ttl(keys.replies(CHAT)) <= REPLIES_TTL
        assert "answered message" in reply_json and "7 days" in reply_json
        for key in set(left) - set(named):  # the rest: counters and the queue's own keys
            assert LIMIT_KEY.match(key) or re.match(rf"^{redis_prefix}:(\{{q:\d+\}}|q):", key), key
        assert not any("Ada" in v for v in left.values())
        # Why the marker stays: the first job redelivered (its worker died before the ack)
        # is not answered, nor its message stored, again.
        again = Job(first, CHAT, {"text": "hello, my name is Ada", "user": USER}, 0, attempt=2)
        token = current_job.set(again)
        try:
            await handler(again)
        finally:
            current_job.reset(token)
        assert handler.skipped == 1 and await store.read(CHAT) == []
        # And the budget the first answer used up still applies.
        [refusal] = await say(manager, "and now?")
        assert isinstance(refusal, Notice) and "budget" in refusal.text
    finally:
        await manager.aclose()


async def test_forget_removes_the_chats_failed_jobs_from_the_dead_stream(
    redis_server: str, redis_prefix: str, prompts_dir: Path, client: aioredis.Redis
) -> None:
    """A message whose handling kept failing is copied to the dead stream with its text; the
    person's /forget removes it there too, and leaves other chats' failed jobs alone."""
    store = JournaledRedisStore(connect(redis_server), redis_prefix)
    manager = manager_on(store, prompts_dir, None)
    keys = QueueKeys(redis_prefix, 1)  # one partition: both chats share its dead stream
    handler = DialogHandler(manager, keys)

    async def poisoned(job: Job) -> None:
        if "poison" in str(job.payload.get("text")):
            raise RuntimeError("a bug this message triggers")
        await handler(job)

    worker = Worker(store.client, poisoned, keys=keys, lease_ms=3000, tuning=Tuning(max_attempts=1))
    running = asyncio.create_task(worker.run())
    other = "tg:-100999"
    dead = keys.dead(0)
    try:
        ingress = Ingress(store.client, keys)
        await ingress.enqueue(CHAT, {"text": "poison from Ada", "user": USER})
        await ingress.enqueue(other, {"text": "poison from someone else"})
        await eventually(lambda: worker.handled == 2)
        assert sorted(f["chat"] for _, f in await client.xrange(dead)) == sorted([CHAT, other])
        await ingress.enqueue(CHAT, {"text": "/forget", "user": USER})
        await eventually(lambda: worker.handled == 3)
    finally:
        await worker.stop(5)
        await running
        await manager.aclose()
    left = await client.xrange(dead)
    assert [f["payload"] for _, f in left] == ['{"text": "poison from someone else"}']
    assert not any("Ada" in v for v in (await redis_dump(client, redis_prefix)).values())
