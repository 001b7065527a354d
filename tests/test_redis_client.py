"""The Redis clients fmbot opens pack commands with hiredis, through redis-py's own connections.

redis-py (>=8.2) packs on its asyncio connections with hiredis when hiredis is installed
(``redis[hiredis]`` is a dependency); fmbot keeps redis-py's connection classes as they are.
Here: on every topology fmbot connects to (one server, Sentinel, Cluster) and in the dialog store,
commands sent to the real server go through ``hiredis.pack_command``; text in another encoding
still round-trips; a value Redis cannot take is still a DataError.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
import redis.connection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from bot.redis import RedisClient
from bot.redis.connect import connect
from bot.stores.redis import RedisStore

BIG = "x" * 10_000  # above redis-py's buffer cutoff: its Python packer sends it in chunks


class PackCounter:
    """Counts the commands hiredis packs (redis-py calls ``hiredis.pack_command`` per command)."""

    def __init__(self) -> None:
        self.calls = 0
        self._pack = hiredis.pack_command

    def __call__(self, args: Any) -> Any:
        self.calls += 1
        return self._pack(args)


@pytest.fixture
def hiredis_packs(monkeypatch: pytest.MonkeyPatch) -> Iterator[PackCounter]:
    counter = PackCounter()
    # redis-py looks the function up on the module at each call.
    monkeypatch.setattr(redis.connection.hiredis, "pack_command", counter)
    yield counter


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
        ("redis+sentinel://127.0.0.1:26379/mymaster/0", SentinelManagedConnection),
    ],
)
async def test_pools_keep_redis_py_connection_classes(url: str, kind: type[Connection]) -> None:
    client = connect(url)
    try:
        assert client.connection_pool.connection_class is kind  # type: ignore[union-attr]
    finally:
        await client.aclose()


async def roundtrip(client: RedisClient, key: str) -> None:
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"text": "привет 🌍 " + BIG, "count": 3})
            pipe.hincrbyfloat(key, "score", 1.25)
            pipe.expire(key, 60)
            pipe.hgetall(key)
            *_, stored = await pipe.execute()
        assert stored == {"text": "привет 🌍 " + BIG, "count": "3", "score": "1.25"}
        assert await client.eval("return ARGV[1] .. ARGV[2]", 1, key, "ü", 42) == "ü42"
    finally:
        await client.delete(key)


@pytest.mark.parametrize("topology", ["redis_server", "redis_sentinel", "redis_cluster"])
async def test_commands_on_every_topology_are_packed_by_hiredis(
    topology: str, request: pytest.FixtureRequest, hiredis_packs: PackCounter
) -> None:
    client = connect(request.getfixturevalue(topology))
    try:
        before = hiredis_packs.calls
        await roundtrip(client, f"fmbot-test-packing-{uuid.uuid4().hex[:8]}")
        # Six commands at least (the cluster client adds its own discovery commands).
        assert hiredis_packs.calls - before >= 6
        if isinstance(client, RedisCluster):
            node_connections = [type(c) for node in client.get_nodes() for c in node._connections]
            assert node_connections and set(node_connections) == {Connection}
    finally:
        await client.aclose()


async def test_the_dialog_store_packs_with_hiredis(
    redis_server: str, hiredis_packs: PackCounter
) -> None:
    store = RedisStore.from_url(redis_server)
    try:
        await store.client.ping()
        assert hiredis_packs.calls >= 1
        assert store.client.connection_pool.connection_class is Connection  # type: ignore[union-attr]
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "ключ", "значение 🌍", "EX", 60),
        ("CONFIG GET", "maxmemory"),  # a two-word command name is split in two arguments
        ("ZADD", "z", 1732900000.123456, "member"),
        ("RPUSH", "list", BIG, "small"),
    ],
    ids=lambda c: str(c[0]),
)
def test_hiredis_sends_the_bytes_of_redis_py_python_packer(command: tuple[Any, ...]) -> None:
    connection = Connection()
    packed = connection.pack_command(*command)
    python = connection._pack_command_python(*command)
    assert b"".join(packed) == b"".join(bytes(part) for part in python)
    assert len(packed) == 1  # hiredis packs a command into one buffer, big values included


async def test_a_latin1_pool_reads_back_what_it_stored(redis_server: str) -> None:
    client = connect(redis_server + "?encoding=latin-1")
    key = f"fmbot-test-latin1-{uuid.uuid4().hex[:8]}"
    try:
        await client.set(key, "é", ex=60)
        assert await client.get(key) == "é"
        raw = aioredis.Redis.from_url(redis_server)
        assert await raw.get(key) == b"\xe9"  # stored as latin-1, not as UTF-8
        await raw.aclose()
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.parametrize("value", [None, {"a": 1}, ["list"]])
def test_a_value_redis_cannot_take_is_still_a_data_error(value: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "key", value)  # type: ignore[arg-type]
