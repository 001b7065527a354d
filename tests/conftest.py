"""Shared fixtures: the real local model (loaded once), real Redis servers, template folders.

Redis: ``redis_server`` is the machine's server on 127.0.0.1:6379 (started when none answers);
``redis_cluster`` and ``redis_sentinel`` start their own servers from the ``redis-server``
binary on free ports, in a temporary directory, for the session (:class:`RedisProcesses`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.models.local import LocalModel, find_gguf
from bot.queue.journal import JournaledRedisStore
from bot.settings import shipped_prompts_dir
from bot.stores import DialogStore, open_store

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def _redis_answers() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A Redis server on 127.0.0.1:6379: the machine's own, or one started for the session."""
    if _redis_answers():
        yield REDIS_URL
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "No Redis answers on 127.0.0.1:6379 and redis-server is not installed: "
            "install it (apt-get install redis-server) or start one."
        )
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            REDIS_HOST,
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("redis-server was started but did not answer on 127.0.0.1:6379")
        time.sleep(0.05)
    yield REDIS_URL
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards."""
    prefix = f"fmbot-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_server)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def local_model() -> LocalModel:
    """The real SmolLM2-135M-Instruct, loaded once for the whole test session."""
    return LocalModel(find_gguf(), name="local:smollm2", context_window=2048, threads=2)


def script_finishes(script: str, cwd: Path, timeout: float = 60) -> None:
    """Run ``script`` (which prints ``ok`` at its end) in a Python process of its own, on this
    checkout: a guard against a pattern that backtracks or a loop that hangs, which fails in
    ``timeout`` seconds rather than holding the test run."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DialogStore]:
    """A SQLite conversation store in the test's directory, closed afterwards."""
    opened = await open_store(f"sqlite:///{tmp_path / 'chats.db'}")
    yield opened
    await opened.aclose()


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped templates."""
    target = tmp_path / "prompts"
    shutil.copytree(shipped_prompts_dir(), target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def redis_binary(name: str = "redis-server") -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(
            f"{name} is not installed: the Redis Cluster and Sentinel tests start their own "
            "servers with redis-server and create the cluster with redis-cli. Install both "
            "with apt-get install redis-server."
        )
    return binary


async def answered(store: JournaledRedisStore, chat: str, job_id: str) -> bool:
    """Whether job ``job_id`` (or a later job of ``chat``) has stored its turn."""
    return (await store.replay(chat, job_id)).answered


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:.0f} s")
        time.sleep(0.05)


class RedisProcesses:
    """``redis-server`` processes on 127.0.0.1 in one directory, stopped together by close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, config: str | None = None) -> redis.Redis:
        """Start a server (``config`` is written to a file first: Sentinel needs one)."""
        work = self.root / str(port)
        work.mkdir(parents=True, exist_ok=True)
        command = [redis_binary()]
        if config is not None:
            (work / "redis.conf").write_text(config)
            command.append(str(work / "redis.conf"))
        command += ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(work)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(work / "log"), *args]
        proc = self.procs[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = self.client(port)

        def answers() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"redis-server on port {port} exited:\n{self.log(port)}")
            return int(client.info("server")["process_id"]) == proc.pid  # ours, not a squatter

        wait_until(answers, 10, f"redis-server did not answer on port {port}")
        return client

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, decode_responses=True)

    def stop(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log(self, port: int) -> str:
        path = self.root / str(port) / "log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        for port in list(self.procs):
            self.stop(port)


@contextlib.contextmanager
def redis_processes(root: Path) -> Iterator[RedisProcesses]:
    procs = RedisProcesses(root)
    try:
        yield procs
    finally:
        procs.close()


def start_cluster(procs: RedisProcesses, masters: int = 3) -> list[int]:
    """A Redis Cluster of ``masters`` masters and no replicas; its ports once every node is ok."""
    cli = redis_binary("redis-cli")
    ports = free_ports(2 * masters)
    nodes, buses = ports[:masters], ports[masters:]
    for port, bus in zip(nodes, buses, strict=True):
        procs.start(
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",  # the bus port (default port + 10000, which may be taken)
            str(bus),
            "--cluster-node-timeout",
            "5000",
        )
    addresses = [f"127.0.0.1:{port}" for port in nodes]
    created = subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
    clients = [procs.client(port) for port in nodes]

    def ready() -> bool:
        infos = [c.cluster("info") for c in clients]
        return all(
            i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == masters for i in infos
        )

    wait_until(ready, 30, "the Redis Cluster did not reach cluster_state:ok on every node")
    return nodes


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster started for the session: its ``redis+cluster://`` URL."""
    with redis_processes(tmp_path_factory.mktemp("redis-cluster")) as procs:
        nodes = start_cluster(procs)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in nodes[:2])


@pytest.fixture(scope="session")
def redis_unix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session that also listens on a Unix socket: its ``unix://`` URL."""
    with redis_processes(tmp_path_factory.mktemp("redis-unix")) as procs:
        port = free_port()
        socket = procs.root / f"{port}" / "redis.sock"
        procs.start(port, "--unixsocket", str(socket), "--unixsocketperm", "700")
        yield f"unix://{socket}"


SENTINEL_SERVICE = "fmbot-test"


def start_sentinel(procs: RedisProcesses, master: int, service: str = SENTINEL_SERVICE) -> int:
    """One Sentinel monitoring the master on ``master`` (quorum 1); its port once it sees it."""
    port = free_port()
    config = "\n".join(
        [
            f"sentinel monitor {service} 127.0.0.1 {master} 1",
            f"sentinel down-after-milliseconds {service} 1000",
            f"sentinel failover-timeout {service} 10000",
            "",
        ]
    )
    sentinel = procs.start(port, "--sentinel", config=config)

    def sees_master() -> bool:
        state = sentinel.sentinel_master(service)
        return bool(state["is_master"]) and not state["is_sdown"] and not state["is_odown"]

    wait_until(sees_master, 15, f"Sentinel on {port} did not report master {service} up")
    return port


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real master plus one Sentinel, for the session: the ``redis+sentinel://`` URL."""
    with redis_processes(tmp_path_factory.mktemp("redis-sentinel")) as procs:
        master = free_port()
        procs.start(master)
        sentinel = start_sentinel(procs, master)
        yield f"redis+sentinel://127.0.0.1:{sentinel}/{SENTINEL_SERVICE}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for a module's page tests (tests/browser.py), quit after them."""
    from tests.browser import chromium

    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()
