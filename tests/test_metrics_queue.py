"""The queue's metrics (issue 20): jobs enqueued, duplicates dropped, acknowledged, redelivered,
dead-lettered; partitions owned, lease losses, the sampled backlog and its oldest job's age;
Redis errors by kind. A Worker and an Ingress of this process on the real Redis, scraped over
HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.observe.server import serving
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.queue.partition import Tuning
from bot.redis.connect import connect
from tests.conftest import free_port
from tests.test_metrics import Samples, scrape, scrape_until, value
from tests.test_queue_outage import PrivateRedis

PARTITIONS = 4
LEASE_MS = 3000  # heartbeat 1 s: the backlog is sampled every second


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_server)
    yield c
    await c.aclose()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    port = free_port()
    async with serving(f"127.0.0.1:{port}", "worker"):
        yield port


class Jobs:
    """Jobs of chat ``slow`` wait for :attr:`release`; ``bad`` ones always fail."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.done: list[str] = []

    async def __call__(self, job: Job) -> None:
        if job.chat == "bad":
            raise RuntimeError("a poisonous job")
        if job.chat == "slow":
            await self.release.wait()
        self.done.append(job.chat)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    labels["role"] = "worker"
    return value(after, name, **labels) - value(before, name, **labels)


async def test_queue_counters_and_the_sampled_backlog(
    client: aioredis.Redis, redis_prefix: str, port: int
) -> None:
    keys = QueueKeys(redis_prefix, PARTITIONS)
    jobs = Jobs()
    worker = Worker(
        client, jobs, keys=keys, name="w", lease_ms=LEASE_MS, tuning=Tuning(max_attempts=2)
    )
    ingress = Ingress(client, keys)
    before = await scrape(port)
    task = asyncio.create_task(worker.run())
    try:
        # One update delivered twice: queued once, the copy dropped.
        await ingress.enqueue("quick", {"n": 1}, dedupe="update-1")
        await ingress.enqueue("quick", {"n": 1}, dedupe="update-1")
        for n in range(3):
            await ingress.enqueue("slow", {"n": n})
        await ingress.enqueue("bad", {"n": 0})
        slow = str(keys.partition("slow"))
        # The three slow jobs wait unacknowledged: the backlog and its age show it.
        await scrape_until(port, "fmbot_queue_pending", 3, 20, partition=slow, role="worker")
        await asyncio.sleep(1.5)  # at least one more heartbeat: the oldest job has aged
        waiting = await scrape(port)
        assert value(waiting, "fmbot_queue_pending", partition=slow, role="worker") == 3
        age = value(waiting, "fmbot_queue_oldest_pending_seconds", partition=slow, role="worker")
        assert 1.0 <= age < 30
        assert value(waiting, "fmbot_queue_partitions_owned", role="worker") == PARTITIONS
        jobs.release.set()
        # Counters are per process and other tests ran in this one: wait for growth.
        acked = value(before, "fmbot_queue_acknowledged_total", role="worker") + 5
        after = await scrape_until(port, "fmbot_queue_acknowledged_total", acked, 20, role="worker")
        # A lease another worker holds now: this worker loses the partition.
        await client.set(keys.lease(0), "someone-else", px=LEASE_MS)
        losses = value(after, "fmbot_queue_lease_losses_total", reason="taken", role="worker")
        lost = await scrape_until(
            port, "fmbot_queue_lease_losses_total", losses + 1, 20, reason="taken", role="worker"
        )
    finally:
        await worker.stop(5)
        await task
    assert grown(before, after, "fmbot_ingress_updates_total", outcome="queued") == 1
    assert grown(before, after, "fmbot_ingress_updates_total", outcome="duplicate") == 1
    assert grown(before, after, "fmbot_queue_enqueued_total") == 5
    assert grown(before, after, "fmbot_queue_acknowledged_total") == 5  # the buried one too
    assert grown(before, after, "fmbot_queue_redelivered_total") == 1  # its second attempt
    assert grown(before, after, "fmbot_queue_dead_lettered_total") == 1
    assert jobs.done == ["quick", "slow", "slow", "slow"]
    assert value(lost, "fmbot_queue_partitions_owned", role="worker") == PARTITIONS - 1
    # Given up partitions leave no stale gauges behind.
    assert ("fmbot_queue_pending", frozenset({("partition", "0"), ("role", "worker")})) not in lost


async def test_redis_errors_are_counted_by_kind(tmp_path: Path, redis_prefix: str) -> None:
    private = PrivateRedis(tmp_path)
    private.start(persist=False)
    port = free_port()
    client = connect(private.url, socket_timeout=1)
    worker = Worker(client, Jobs(), keys=QueueKeys(redis_prefix, 1), lease_ms=LEASE_MS)
    try:
        async with serving(f"127.0.0.1:{port}", "worker"):
            before = await scrape(port)
            task = asyncio.create_task(worker.run())
            await scrape_until(port, "fmbot_queue_partitions_owned", 1, 20, role="worker")
            private.stop()  # Redis goes away: every loop waits it out and says why
            after = await scrape_until(
                port,
                "fmbot_redis_errors_total",
                value(before, "fmbot_redis_errors_total", kind="connection", role="worker") + 1,
                20,
                kind="connection",
                role="worker",
            )
            grew = {  # other tests of this process count other kinds
                dict(labels).get("kind")
                for (name, labels), n in after.items()
                if "redis_errors" in name and n > before.get((name, labels), 0)
            }
            assert grew <= {"connection", "timeout"}
            await worker.stop(1)
            await task
    finally:
        private.stop()
        await client.aclose()


async def test_the_backlog_is_sampled_and_duplicates_counted_on_a_cluster(
    redis_cluster: str, redis_prefix: str, port: int
) -> None:
    """Partitions live on different masters: sampling (keyless TIME, then XLEN and XRANGE of
    each stream) and the enqueue script's duplicate answer work there too."""
    keys = QueueKeys(redis_prefix, PARTITIONS)
    client = connect(redis_cluster)
    jobs = Jobs()
    worker = Worker(client, jobs, keys=keys, name="w", lease_ms=LEASE_MS)
    ingress = Ingress(client, keys)
    before = await scrape(port)
    task = asyncio.create_task(worker.run())
    try:
        for n in range(2):
            await ingress.enqueue("slow", {"n": n}, dedupe=f"u{n}")
        await ingress.enqueue("slow", {"n": 1}, dedupe="u1")
        slow = str(keys.partition("slow"))
        await scrape_until(port, "fmbot_queue_pending", 2, 20, partition=slow, role="worker")
        jobs.release.set()
        acked = value(before, "fmbot_queue_acknowledged_total", role="worker") + 2
        after = await scrape_until(port, "fmbot_queue_acknowledged_total", acked, 20, role="worker")
        assert grown(before, after, "fmbot_ingress_updates_total", outcome="duplicate") == 1
    finally:
        await worker.stop(5)
        await task
        await client.aclose()
