"""fmbot on a real Redis Cluster and behind a real Sentinel, both started by the tests.

tests/conftest.py starts a 3-master Cluster and a master with one Sentinel from the
``redis-server`` binary; the dialog store contract runs on both (tests/test_store_contract.py).
Here: the URLs, the journaled append and its ``answered`` marker, the limits, the queue end to end
on the Cluster, and a Sentinel failover the store rides through.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import CrossSlotTransactionError

from bot.dialog import DialogManager
from bot.errors import ConfigError, StoreError
from bot.events import FinalText, Incoming, Notice, ReplyEvent
from bot.limits import RedisLimits
from bot.models.echo import EchoModel
from bot.prompts.library import PromptLibrary
from bot.queue import Ingress, Job, QueueKeys, Worker, current_job
from bot.queue.chat import DialogHandler
from bot.queue.journal import JournaledRedisStore
from bot.redis import ClusterClient, RedisClient
from bot.redis.connect import connect, parse_cluster_url
from bot.settings import Settings
from bot.stores import open_store
from bot.stores.base import Turn
from bot.stores.redis import RedisStore
from tests.conftest import (
    SENTINEL_SERVICE,
    answered,
    free_port,
    redis_processes,
    start_sentinel,
    wait_until,
)
from tests.doubles import Recording, Scripted


def new_prefix() -> str:
    # The Cluster and Sentinel servers live for the session only: a fresh prefix is isolation.
    return f"fmbot-test-{uuid.uuid4().hex[:12]}"


async def eventually(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# --- URLs ---


def test_cluster_urls_are_parsed() -> None:
    url = parse_cluster_url("rediss+cluster://bot:s3%2Fcret@n1:7000,n2,[::1]:7002/0")
    assert url.hosts == (("n1", 7000), ("n2", 6379), ("::1", 7002))
    assert (url.username, url.password, url.ssl) == ("bot", "s3/cret", True)
    plain = parse_cluster_url("redis+cluster://10.0.0.1:6379")
    assert plain.hosts == (("10.0.0.1", 6379),)
    assert (plain.username, plain.password, plain.ssl) == (None, None, False)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:pw@n1:7000/2",  # a cluster has database 0 only
        "redis+cluster://:pw@n1:x",
        "redis+cluster://:pw@n1:7000,:7001",
        "redis+cluster://user:pw@n1:99999",
        "redis+cluster://:pw@n1:7000?db=1",
    ],
)
def test_bad_cluster_urls_name_the_setting_and_hide_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster_url(url)
    assert "FMBOT_STORE" in str(info.value) and "pw" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        connect(url)
    assert "pw" not in str(info.value)
    settings = Settings(FMBOT_STORE=url)
    with pytest.raises(ConfigError) as info:
        settings.validate_all()
    assert "FMBOT_STORE" in str(info.value) and "pw" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://n1:7000,n2:7001",
        "rediss+cluster://:pw@n1:7000/0",
        "redis+sentinel://s1:26379/mymaster/1",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_cluster_sentinel_and_unix_socket_urls_are_valid_stores(url: str) -> None:
    Settings(FMBOT_STORE=url).validate_all()


async def test_a_store_on_a_unix_socket_keeps_a_conversation(
    redis_unix: str, prompts_dir: Path
) -> None:
    """FMBOT_STORE=unix://... as a deployment on one host gives it: the dialog manager's store."""
    chat = f"unix-{uuid.uuid4().hex[:8]}"
    manager = DialogManager(await open_store(redis_unix), EchoModel(), PromptLibrary(prompts_dir))
    try:
        async for _ in manager.handle(Incoming(chat, "over the socket")):
            pass
        assert [t.text for t in await manager.store.read(chat)][:1] == ["over the socket"]
    finally:
        await manager.aclose()


async def test_connect_builds_a_cluster_client_without_io() -> None:
    client = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(client, ClusterClient)
    startup = client.nodes_manager.startup_nodes.values()
    assert sorted(n.port for n in startup) == [1, 2]  # nothing contacted yet
    await client.aclose()


# --- the Cluster ---


@pytest.fixture
async def cluster(redis_cluster: str) -> AsyncIterator[RedisClient]:
    client = connect(redis_cluster)
    yield client
    await client.aclose()


async def test_the_cluster_is_real_and_refuses_cross_slot_transactions(
    cluster: RedisClient,
) -> None:
    assert isinstance(cluster, RedisCluster)
    await cluster.ping()
    assert len(cluster.get_primaries()) == 3
    p = new_prefix()
    nodes = {cluster.get_node_from_key(f"{p}:{{chat-{i}}}:turns").name for i in range(8)}
    assert len(nodes) > 1  # chats of one test spread over the masters
    # What JournaledRedisStore.append did before: the index (another slot) inside the MULTI.
    with pytest.raises(CrossSlotTransactionError):
        async with cluster.pipeline(transaction=True) as pipe:
            pipe.rpush(f"{p}:{{c}}:turns", "x")
            pipe.zadd(f"{p}:chats", {"c": 1.0})
            await pipe.execute()


# --- the journaled append, on every topology ---


@pytest.fixture(params=["redis", "redis-cluster", "redis-sentinel"])
async def client_and_prefix(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RedisClient, str]]:
    if request.param == "redis":
        # The shared server: scripts stay loaded (flushing them would touch other users).
        url, prefix = (
            request.getfixturevalue("redis_server"),
            request.getfixturevalue("redis_prefix"),
        )
        client = connect(url)
    else:
        client = connect(request.getfixturevalue(request.param.replace("-", "_")))
        prefix = new_prefix()
        await client.script_flush()  # servers of our own: the first append must load its script
    yield client, prefix
    await client.aclose()


async def test_journaled_append_writes_turns_counters_ttl_marker_and_index(
    client_and_prefix: tuple[RedisClient, str],
) -> None:
    client, prefix = client_and_prefix
    store = JournaledRedisStore(client, prefix)
    store.max_turns, store.ttl = 4, 600
    await store.append("c", Turn("user", "outside a job"))  # no job: the plain append
    assert not await answered(store, "c", "5-0")
    for n in range(3):
        token = current_job.set(Job(f"5-{n}", "c", {}, 0))
        try:
            await store.append(
                "c", Turn("user", f"q{n}"), Turn("assistant", f"a{n}"), counters={"tokens": 10}
            )
        finally:
            current_job.reset(token)
    assert [t.text for t in await store.read("c")] == ["q1", "a1", "q2", "a2"]  # max_turns
    assert await store.get_state("c") == {"tokens": "30"}
    assert await answered(store, "c", "5-2") and await answered(store, "c", "4-9")
    assert not await answered(store, "c", "5-3") and not await answered(store, "c", "10-0")
    marker = QueueKeys(prefix).answered("c")
    assert await client.get(marker) == "5-2"
    assert 6 * 24 * 3600 < await client.ttl(marker) <= 7 * 24 * 3600
    for part in ("turns", "state"):
        assert 0 < await client.ttl(f"{prefix}:{{c}}:{part}") <= 600
    assert [c.chat for c in await store.chats()] == ["c"]  # the index, written alongside
    # An unordered job (outside its chat's lane) leaves the marker alone.
    token = current_job.set(Job("9-0", "c", {}, 0, ordered=False))
    try:
        await store.append("c", Turn("user", "stop"))
    finally:
        current_job.reset(token)
    assert await client.get(marker) == "5-2"


# --- limits on the Cluster ---


@pytest.fixture
async def cluster_store(redis_cluster: str) -> AsyncIterator[RedisStore]:
    store = await open_store(redis_cluster, prefix=new_prefix())
    assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
    yield store
    await store.aclose()


def manager_on(store: RedisStore, model: object, prompts_dir: Path, **limits: int) -> DialogManager:
    shared = RedisLimits(store.client, store.prefix, **limits)
    return DialogManager(store, model, PromptLibrary(prompts_dir), limits=shared)  # type: ignore[arg-type]


async def collect(
    m: DialogManager, text: str, *, chat: str = "c", user: str = "u1"
) -> list[ReplyEvent]:
    return [e async for e in m.handle(Incoming(chat, text, user=user))]


async def test_rate_limit_is_shared_on_the_cluster(
    cluster_store: RedisStore, prompts_dir: Path
) -> None:
    model_a, model_b = Recording(Scripted(["ok"])), Recording(Scripted(["ok"]))
    a = manager_on(cluster_store, model_a, prompts_dir, rate_per_minute=2)
    b = manager_on(cluster_store, model_b, prompts_dir, rate_per_minute=2)  # another worker
    assert isinstance((await collect(a, "one"))[-1], FinalText)
    assert isinstance((await collect(b, "two", chat="c2"))[-1], FinalText)
    [refusal] = await collect(a, "three")
    assert isinstance(refusal, Notice) and "limit is 2 per minute" in refusal.text
    assert len(model_a.requests) + len(model_b.requests) == 2
    assert isinstance((await collect(b, "hi", user="u2", chat="c3"))[-1], FinalText)


async def test_daily_token_budget_on_the_cluster(
    cluster_store: RedisStore, prompts_dir: Path
) -> None:
    model = Recording(Scripted(["a", "b"]))  # each turn: Usage(10 input, 2 output)
    m = manager_on(cluster_store, model, prompts_dir, daily_tokens=20)
    assert isinstance((await collect(m, "one"))[-1], FinalText)
    assert isinstance((await collect(m, "two"))[-1], FinalText)
    [refusal] = await collect(m, "three")
    assert isinstance(refusal, Notice)
    assert "today's budget of 20 tokens (24 used)" in refusal.text
    [usage] = await collect(m, "/usage")
    assert isinstance(usage, Notice) and "today 24 of 20 tokens" in usage.text
    assert len(model.requests) == 2


# --- the queue end to end on the Cluster ---


async def test_queue_answers_every_message_once_in_order_on_the_cluster(
    redis_cluster: str, prompts_dir: Path
) -> None:
    prefix = new_prefix()
    keys = QueueKeys(prefix, 4)
    store_client, queue_client = connect(redis_cluster), connect(redis_cluster)
    store = JournaledRedisStore(store_client, prefix)
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    handler = DialogHandler(manager, keys)
    seen: dict[str, list[int]] = defaultdict(list)

    async def recorded(job: Job) -> None:
        await handler(job)
        seen[job.chat].append(int(job.payload["n"]))

    chats, messages = [f"chat-{i}" for i in range(6)], 8
    worker = Worker(queue_client, recorded, keys=keys, lease_ms=3000)
    ingress = Ingress(queue_client, keys)
    running = asyncio.create_task(worker.run())
    try:
        for n in range(messages):
            for chat in chats:
                await ingress.enqueue(chat, {"n": n, "text": f"{chat} message {n}"})
        await eventually(lambda: sum(map(len, seen.values())) >= len(chats) * messages)
        assert worker.partitions == [0, 1, 2, 3]  # the pipelined lease scripts ran
        await asyncio.sleep(0.3)  # acks are flushed right after the handlers return
        for p in range(keys.partitions):
            assert await queue_client.xlen(keys.jobs(p)) == 0  # acked and deleted
    finally:
        await worker.stop(5)
        await running
    assert dict(seen) == {chat: list(range(messages)) for chat in chats}  # once each, in order
    for chat in chats:
        texts = [t.text for t in await store.read(chat)]
        expected = [f"{chat} message {n}" for n in range(messages)]
        assert texts[::2] == expected
        assert texts[1::2] == [f"echo: {text}" for text in expected]
        replies = [json.loads(r) for r in await store_client.lrange(keys.replies(chat), 0, -1)]
        assert [r["events"][-1]["text"] for r in replies] == texts[1::2]
        assert await answered(store, chat, replies[-1]["job"])
        # Published with other chats' replies and marks, in other slots: each mark still lands.
        assert await store_client.get(keys.delivered(chat)) == replies[-1]["job"]
    assert {c.chat for c in await store.chats()} == set(chats)
    assert len({queue_client.get_node_from_key(keys.jobs(p)).name for p in range(4)}) > 1
    await manager.aclose()  # closes the store's client
    await queue_client.aclose()


# --- Sentinel failover ---


async def test_the_store_follows_a_sentinel_failover(tmp_path: Path) -> None:
    """History written before a failover is read, and written to, on the promoted replica."""
    with redis_processes(tmp_path) as procs:
        master_port, replica_port = free_port(), free_port()
        master = procs.start(master_port, "--repl-diskless-sync-delay", "0")  # sync at once
        replica = procs.start(replica_port, "--replicaof", "127.0.0.1", str(master_port))
        wait_until(
            lambda: replica.info("replication")["master_link_status"] == "up",
            15,
            "the replica did not connect to its master",
        )
        sentinel_port = start_sentinel(procs, master_port)
        sentinel = procs.client(sentinel_port)
        wait_until(
            lambda: (
                [r["port"] for r in sentinel.sentinel_slaves(SENTINEL_SERVICE)] == [replica_port]
            ),
            15,
            "Sentinel did not discover the replica",
        )
        store = await open_store(
            f"redis+sentinel://127.0.0.1:{sentinel_port}/{SENTINEL_SERVICE}", prefix=new_prefix()
        )
        try:
            assert isinstance(store, RedisStore)
            await store.append("a", Turn("user", "before"), Turn("assistant", "failover"))
            await store.set_state("a", mode="m")
            turns_key, state_key = f"{store.prefix}:{{a}}:turns", f"{store.prefix}:{{a}}:state"
            wait_until(  # (WAIT would count this client's writes, not the store's)
                lambda: replica.llen(turns_key) == 2 and replica.hget(state_key, "mode") == "m",
                10,
                "the replica did not receive the history",
            )

            def failover() -> bool:
                try:
                    return bool(sentinel.sentinel_failover(SENTINEL_SERVICE))
                except redis.ResponseError as exc:  # NOGOODSLAVE until Sentinel trusts it
                    if "NOGOODSLAVE" not in str(exc):
                        raise
                    return False

            wait_until(failover, 15, "SENTINEL FAILOVER was not accepted")
            wait_until(
                lambda: (
                    int(sentinel.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)[1])
                    == replica_port
                    and replica.info("replication")["role"] == "master"
                ),
                15,
                "Sentinel did not promote the replica",
            )
            # The old master is still up and still a master: Sentinel turns it into a replica
            # only some 10 s later (its INFO period), and until then connections pooled before
            # the failover still write to it (README, "Cluster and Sentinel"). Wait for that.
            wait_until(
                lambda: master.info("replication")["role"] == "slave",
                30,
                "Sentinel did not turn the old master into a replica",
            )
            # A connection pooled before fails once (the demoted master closed it, or answers
            # READONLY and redis-py drops it); the next one goes to the master Sentinel names.
            deadline = time.monotonic() + 15
            while True:
                try:
                    await store.append("a", Turn("user", "after"), Turn("assistant", "failover"))
                    break
                except StoreError:
                    assert time.monotonic() < deadline, "the store never reached the new master"
                    await asyncio.sleep(0.1)
            turns = await store.read("a")
            assert [t.text for t in turns] == ["before", "failover", "after", "failover"]
            assert await store.get_state("a") == {"mode": "m"}
            assert replica.llen(turns_key) == 4  # written on the promoted replica itself
        finally:
            await store.aclose()


async def test_bench_cleanup_finds_and_deletes_keys_on_every_master(cluster: RedisClient) -> None:
    from adapters.cli.bench import _delete_prefix

    p = new_prefix()
    other = new_prefix()
    for i in range(20):
        await cluster.set(f"{p}:{{chat-{i}}}:turns", "x")
    await cluster.set(f"{other}:{{c}}:turns", "kept")
    await _delete_prefix(cluster, p)  # type: ignore[arg-type]
    assert [k async for k in cluster.scan_iter(match=f"{p}*")] == []  # SCAN of every master
    assert await cluster.get(f"{other}:{{c}}:turns") == "kept"
