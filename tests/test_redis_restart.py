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
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import RedisCluster

from bot.dialog import DialogManager
from bot.errors import GivenUpError, StoreError
from bot.events import FinalText, Incoming, Notice
from bot.models.echo import EchoModel
from bot.observe import metrics
from bot.prompts.library import PromptLibrary
from bot.queue import Job, current_job
from bot.queue.job import Tenure
from bot.queue.journal import JournaledRedisStore, Replay
from bot.redis import RedisClient
from bot.redis.connect import RETRIES, connect
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


def lane_job(chat: str, tenure: Tenure) -> Job:
    """The job a worker runs in ``chat``'s lane under ``tenure`` (as the worker sets it)."""
    job = Job("1-0", chat, {}, 0, tenure=tenure)
    current_job.set(job)
    return job


async def test_a_turn_stored_during_an_outage_is_stored_once_redis_is_back(
    server: tuple[RedisProcesses, int],
) -> None:
    """The worker still holds its lease: the write waits for Redis instead of 'not saved'."""
    procs, port = server
    store = JournaledRedisStore(connect(f"redis://127.0.0.1:{port}/0"))
    lane_job("c", Tenure())
    metrics.enable()
    before = connection_errors()
    try:
        await store.read("c")  # a pooled connection, closed by the restart
        procs.stop(port)
        write = asyncio.create_task(store.append("c", Turn("user", "hi"), Turn("assistant", "yo")))
        await asyncio.sleep(2.0)  # a 2 s outage, a turn in flight
        assert not write.done()
        procs.start(port)
        await asyncio.wait_for(write, 10)
        await store.append("c", Turn("user", "hi"), Turn("assistant", "yo"))  # replayed: refused
        assert [t.text for t in await store.read("c")] == ["hi", "yo"]
        # Every attempt the outage refused is one error waited out, as an operator sees it.
        assert connection_errors() - before >= 2
    finally:
        metrics.enable(False)
        await store.aclose()


def connection_errors() -> float:
    """fmbot_redis_errors_total{kind="connection"} as a scrape shows it (role "test")."""
    text = metrics.exposition("test").decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fmbot_redis_errors_total" and s.labels["kind"] == "connection"
    )


async def test_a_turn_given_up_during_an_outage_is_left_to_the_next_owner(
    server: tuple[RedisProcesses, int],
) -> None:
    procs, port = server
    store = JournaledRedisStore(connect(f"redis://127.0.0.1:{port}/0"))
    tenure = Tenure()
    lane_job("c", tenure)
    try:
        procs.stop(port)
        write = asyncio.create_task(store.append("c", Turn("user", "hi"), Turn("assistant", "yo")))
        await asyncio.sleep(0.5)
        tenure.ended = True  # the lease lapsed: the worker gave its jobs up
        with pytest.raises(GivenUpError, match="given up"):
            await asyncio.wait_for(write, 5)
        procs.start(port)
        current_job.set(None)
        assert await store.read("c") == []
    finally:
        await store.aclose()


async def test_a_delivery_mark_during_an_outage_is_written_once_redis_is_back(
    server: tuple[RedisProcesses, int],
) -> None:
    """Were the mark dropped, a takeover after a long outage would send the reply again."""
    procs, port = server
    durable = ("--appendonly", "yes", "--appendfsync", "always")  # the turn survives
    procs.stop(port)
    procs.start(port, *durable)
    store = JournaledRedisStore(connect(f"redis://127.0.0.1:{port}/0"))
    lane_job("c", Tenure())
    try:
        await store.append("c", Turn("user", "hi"), Turn("assistant", "yo"))
        procs.stop(port)
        mark = asyncio.create_task(store.delivered("c", "1-0"))
        await asyncio.sleep(1.0)
        assert not mark.done()
        procs.start(port, *durable)
        await asyncio.wait_for(mark, 10)
        current_job.set(None)
        assert await store.replay("c", "1-0") == Replay(answered=True)  # nothing to resend
    finally:
        await store.aclose()


async def test_a_queue_worker_gets_store_errors_to_retry_the_job_instead_of_a_notice(
    server: tuple[RedisProcesses, int], prompts_dir: Path
) -> None:
    """Before the reply began, "send it again" would lose the message: the job is run again."""
    procs, port = server
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    try:
        procs.stop(port)
        [notice] = [e async for e in manager.handle(Incoming("c", "hello"))]
        assert isinstance(notice, Notice) and "send it again" in notice.text  # console, --role all
        manager.raise_store_errors = True  # what the queue's handlers set
        with pytest.raises(StoreError):
            [e async for e in manager.handle(Incoming("c", "hello"))]
    finally:
        await manager.aclose()


async def test_a_given_up_turn_ends_without_a_notice_for_the_next_owner_to_answer(
    server: tuple[RedisProcesses, int], prompts_dir: Path
) -> None:
    _procs, port = server
    store = JournaledRedisStore(connect(f"redis://127.0.0.1:{port}/0"))
    manager = DialogManager(store, EchoModel(), PromptLibrary(prompts_dir))
    tenure = Tenure()
    lane_job("c", tenure)
    tenure.ended = True  # e.g. the lease lapsed while the model was answering
    seen = []
    try:
        with pytest.raises(GivenUpError):
            async for event in manager.handle(Incoming("c", "hello")):
                seen.append(event)
        assert not [e for e in seen if isinstance(e, Notice | FinalText)], seen
        current_job.set(None)
        assert await store.read("c") == []
    finally:
        await manager.aclose()
