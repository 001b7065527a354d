"""Shared fixtures: the real local model (loaded once), a real Redis server, template folders."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.models.local import LocalModel, find_gguf
from bot.settings import shipped_prompts_dir

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
