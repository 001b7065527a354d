"""Redis going away and coming back, on a private redis-server (never the shared one).

Nothing may crash: the ingress refuses with StoreError (so a channel does not confirm the
update), the worker keeps retrying with backoff and resumes by itself when Redis is back —
with its data (AOF) or without (a fresh Redis: the consumer group is recreated).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.errors import StoreError
from bot.queue import Ingress, Job, QueueKeys, Worker
from bot.redis import RedisClient
from bot.redis.connect import connect
from tests.conftest import free_port


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, persist: bool, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.dir),
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if persist
            else ["--appendonly", "no"]
        )
        args += extra
        self.proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        pytest.fail("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


async def eventually(check: object, seconds: float = 30) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


def start_recording(
    client: RedisClient, keys: QueueKeys, done: list[str]
) -> tuple[Worker, asyncio.Task[None]]:
    """A running worker (3 s leases) whose handler appends each job's text to ``done``."""

    async def handler(job: Job) -> None:
        done.append(job.payload["text"])

    worker = Worker(client, handler, keys=keys, lease_ms=3000)
    return worker, asyncio.create_task(worker.run())


@pytest.mark.parametrize("persist", [True, False], ids=["aof", "data-lost"])
async def test_redis_restart_is_survived_and_work_resumes_by_itself(
    private_redis: PrivateRedis, persist: bool, caplog: pytest.LogCaptureFixture
) -> None:
    private_redis.start(persist=persist)
    client = connect(private_redis.url, socket_timeout=2)
    keys = QueueKeys("outage", 2)
    done: list[str] = []
    worker, running = start_recording(client, keys, done)
    ingress = Ingress(client, keys)
    try:
        for text in ("a", "b"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: done == ["a", "b"])

        private_redis.stop()
        with pytest.raises(StoreError, match="Could not queue"):
            await ingress.enqueue("c", {"text": "lost?"})  # the channel must not confirm it
        await asyncio.sleep(3.5)  # longer than a lease: partitions are dropped, loops retry
        assert not running.done()
        assert worker.partitions == []
        logged = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"worker {worker.name}: Redis unavailable (") for m in logged)
        assert not any("refused" in m for m in logged)

        private_redis.start(persist=persist)
        for text in ("c", "d"):
            await ingress.enqueue("c", {"text": text})
        await eventually(lambda: done == ["a", "b", "c", "d"])
        assert not running.done()
        assert len(worker.partitions) == 2
    finally:
        await worker.stop(5)
        await running
        await client.aclose()


async def test_a_redis_refusing_writes_stalls_work_without_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MISCONF (a failed snapshot stops writes) is a ResponseError, not a connection error: the
    worker's loops must wait it out like an outage, and the ingress must refuse, not crash."""
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    private_redis = PrivateRedis(doomed)
    private_redis.start(persist=False, extra=("--save", "3600 1"))
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    client = connect(private_redis.url, socket_timeout=2)
    keys = QueueKeys("refusing", 2)
    done: list[str] = []
    worker, running = start_recording(client, keys, done)
    ingress = Ingress(client, keys)
    try:
        await ingress.enqueue("c", {"text": "a"})
        await eventually(lambda: done == ["a"])

        doomed.rmdir()  # the next snapshot fails, and Redis refuses every write until told
        admin.bgsave()
        await eventually(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err")
        with pytest.raises(StoreError, match="MISCONF"):
            await ingress.enqueue("c", {"text": "refused"})
        await asyncio.sleep(3.5)  # heartbeats and lease renewals fail for longer than a lease
        assert not running.done(), running.exception() if running.done() else None
        assert worker.partitions == []
        # Logged as what it is: an error reply, not an unreachable server.
        logged = [r.getMessage() for r in caplog.records]
        refused = f"worker {worker.name}: Redis refused a command (MISCONF"
        assert any(m.startswith(refused) for m in logged), logged

        admin.config_set("stop-writes-on-bgsave-error", "no")  # what an operator would do
        await ingress.enqueue("c", {"text": "b"})
        await eventually(lambda: done == ["a", "b"])
        assert not running.done()
    finally:
        await worker.stop(5)
        await running
        await client.aclose()
        admin.config_set("save", "")  # else SIGTERM's final snapshot fails and Redis stays up
        admin.close()
        private_redis.stop()
