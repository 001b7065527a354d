"""The Redis clients fmbot opens pack commands with hiredis (bot.redis_client.pack_with_hiredis).

redis-py's asyncio connections pack in Python; fmbot's pools use the sync client's hiredis
serializer instead. Here: every kind of pool fmbot opens gets it, keeping its connection class;
it sends the bytes redis-py would; a value Redis cannot take is still a DataError; and commands
sent through it work on the real server.
"""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from bot.queue.connect import connect
from bot.redis_client import HiredisPacking, pack_with_hiredis
from bot.stores.redis import RedisStore


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
        ("redis+sentinel://127.0.0.1:26379/mymaster/0", SentinelManagedConnection),
    ],
)
async def test_every_pool_fmbot_opens_packs_with_hiredis_and_keeps_its_kind(
    url: str, base: type[AbstractConnection]
) -> None:
    client = connect(url)
    try:
        cls = client.connection_pool.connection_class  # type: ignore[union-attr]
        assert issubclass(cls, HiredisPacking)
        assert issubclass(cls, base)
    finally:
        await client.aclose()


async def test_the_dialog_store_packs_with_hiredis() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:6379/0")
    try:
        assert issubclass(store.client.connection_pool.connection_class, HiredisPacking)  # type: ignore[union-attr]
    finally:
        await store.aclose()


def test_wrapping_twice_or_two_pools_reuses_one_class() -> None:
    first = pack_with_hiredis(aioredis.ConnectionPool())
    second = pack_with_hiredis(aioredis.ConnectionPool())
    cls = first.connection_class
    assert pack_with_hiredis(first).connection_class is cls
    assert second.connection_class is cls
    assert cls.__mro__[1:3] == (HiredisPacking, Connection)


BIG = "x" * 10_000  # above redis-py's buffer cutoff: it sends such values in chunks
COMMANDS: list[tuple[object, ...]] = [
    ("GET", "key"),
    ("SET", "ключ", "значение 🌍", "EX", 60),
    ("CONFIG GET", "maxmemory"),  # a two-word command name is split in two arguments
    ("HINCRBY", "h", "n", -7),
    ("ZADD", "z", 1732900000.123456, "member"),
    ("SET", b"raw\x00bytes", memoryview(b"view")),
    ("RPUSH", "list", BIG, "small"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packing_sends_the_bytes_redis_py_sends(command: tuple[object, ...]) -> None:
    python = Connection()
    hiredis = pack_with_hiredis(aioredis.ConnectionPool()).make_connection()  # type: ignore[no-untyped-call]
    assert isinstance(hiredis, HiredisPacking)
    expected = b"".join(bytes(part) for part in python.pack_command(*command))  # type: ignore[arg-type]
    assert b"".join(hiredis.pack_command(*command)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, {"a": 1}, ["list"]])
def test_a_value_redis_cannot_take_is_still_a_data_error(value: object) -> None:
    connection = pack_with_hiredis(aioredis.ConnectionPool()).make_connection()  # type: ignore[no-untyped-call]
    with pytest.raises(DataError):
        connection.pack_command("SET", "key", value)


async def test_commands_packed_by_hiredis_work_on_the_real_server(redis_server: str) -> None:
    client = connect(redis_server)
    key = f"fmbot-test-packing-{uuid.uuid4().hex[:8]}"
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"text": "привет 🌍 " + BIG, "count": 3})
            pipe.hincrbyfloat(key, "score", 1.25)
            pipe.expire(key, 60)
            pipe.hgetall(key)
            *_, stored = await pipe.execute()
        assert stored == {"text": "привет 🌍 " + BIG, "count": "3", "score": "1.25"}
        assert await client.eval("return ARGV[1] .. ARGV[2]", 0, "ü", 42) == "ü42"
        connection = await client.connection_pool.get_connection()  # type: ignore[union-attr]
        try:
            assert isinstance(connection, HiredisPacking)
        finally:
            await client.connection_pool.release(connection)  # type: ignore[union-attr]
    finally:
        await client.delete(key)
        await client.aclose()
