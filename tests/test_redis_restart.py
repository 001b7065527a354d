"""A Redis restart costs no command: pooled connections the server closed are retried on new ones.

Each test starts its own redis-server on a free port and restarts it (SHUTDOWN-like terminate and
SIGKILL), with connections open in the pool, then sends commands at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster

from bot.queue.connect import RETRIES, connect
from bot.redis_client import RedisClient
from bot.stores.base import Turn
from bot.stores.redis import RedisStore
from tests.conftest import RedisProcesses, free_port, redis_processes

CONCURRENT = 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RedisProcesses, int]]:
    with redis_processes(tmp_path) as procs:
        port = free_port()
        procs.start(port)
        yield procs, port


async def fill_pool(client: RedisClient) -> None:
    """Open CONCURRENT pooled connections (each command at once takes its own)."""
    await asyncio.gather(*(client.set(f"k{n}", n) for n in range(CONCURRENT)))


def restart(procs: RedisProcesses, port: int, how: str) -> None:
    if how == "kill":
        procs.procs[port].send_signal(signal.SIGKILL)
        procs.procs.pop(port).wait(10)
    else:
        procs.stop(port)
    procs.start(port)


@pytest.mark.parametrize("how", ["shutdown", "kill"])
async def test_every_command_after_a_restart_succeeds(
    server: tuple[RedisProcesses, int], how: str
) -> None:
    procs, port = server
    client = connect(f"redis://127.0.0.1:{port}/0")
    try:
        await fill_pool(client)
        restart(procs, port, how)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(client.incr(f"after{n}") for n in range(CONCURRENT)), return_exceptions=True
            ),
            10,
        )
        assert results == [1] * CONCURRENT  # none failed, none sent twice
    finally:
        await client.aclose()


async def test_the_dialog_store_reads_and_writes_after_a_restart(
    server: tuple[RedisProcesses, int],
) -> None:
    procs, port = server
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        await asyncio.gather(*(store.read(f"c{n}") for n in range(CONCURRENT)))
        restart(procs, port, "shutdown")
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    store.append(f"c{n}", Turn("user", "hi"), Turn("assistant", "hello"))
                    for n in range(CONCURRENT)
                )
            ),
            10,
        )
        histories = await asyncio.gather(*(store.read(f"c{n}") for n in range(CONCURRENT)))
        assert all([t.text for t in h] == ["hi", "hello"] for h in histories)
    finally:
        await store.aclose()


@pytest.mark.parametrize("topology", ["redis_server", "redis_sentinel", "redis_cluster"])
async def test_every_topology_retries_on_a_fresh_connection(
    topology: str, request: pytest.FixtureRequest
) -> None:
    client = connect(request.getfixturevalue(topology))
    try:
        if isinstance(client, RedisCluster):
            retry = client.retry
        else:
            retry = client.connection_pool.connection_kwargs["retry"]
        assert retry.get_retries() == RETRIES
        await client.ping()
    finally:
        await client.aclose()
