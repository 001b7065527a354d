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
    assert cls.__name__ == "HiredisConnection"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?encoding=latin-1",
        "redis://127.0.0.1:6379/0?encoding_errors=replace",
    ],
)
async def test_a_pool_that_does_not_encode_strict_utf8_keeps_redis_py_packing(url: str) -> None:
    """hiredis always encodes strict UTF-8: a pool told otherwise must keep redis-py's packing,
    or what it stores would change (é sent as UTF-8 and read back as latin-1 gives Ã©)."""
    client = connect(url)
    try:
        assert not issubclass(client.connection_pool.connection_class, HiredisPacking)  # type: ignore[union-attr]
    finally:
        await client.aclose()


async def test_a_latin1_pool_reads_back_what_it_stored(redis_server: str) -> None:
    client = connect(redis_server + "?encoding=latin-1")
    key = f"fmbot-test-latin1-{uuid.uuid4().hex[:8]}"
    try:
        await client.set(key, "é", ex=60)
        assert await client.get(key) == "é"
    finally:
        await client.delete(key)
        await client.aclose()


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


def packing_connection() -> AbstractConnection:
    pool = pack_with_hiredis(aioredis.ConnectionPool())
    connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    assert issubclass(type(connection), HiredisPacking)
    return connection


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packing_sends_the_bytes_redis_py_sends(command: tuple[object, ...]) -> None:
    python = Connection().pack_command(*command)  # type: ignore[arg-type]
    packed = packing_connection().pack_command(*command)  # type: ignore[arg-type]
    assert b"".join(packed) == b"".join(bytes(part) for part in python)


def test_it_is_hiredis_that_packs() -> None:
    """redis-py's Python packer sends a big value in chunks of its own; hiredis packs the
    whole command into one buffer."""
    command = ("RPUSH", "list", BIG, "small")
    assert len(Connection().pack_command(*command)) > 1
    assert len(packing_connection().pack_command(*command)) == 1


@pytest.mark.parametrize("value", [None, {"a": 1}, ["list"]])
def test_a_value_redis_cannot_take_is_still_a_data_error(value: object) -> None:
    with pytest.raises(DataError):
        packing_connection().pack_command("SET", "key", value)  # type: ignore[arg-type]


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
        pool = client.connection_pool  # type: ignore[union-attr]
        connection = await pool.get_connection()
        await pool.release(connection)
        assert isinstance(connection, HiredisPacking)
    finally:
        await client.delete(key)
        await client.aclose()
