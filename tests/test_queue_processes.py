"""Real worker processes (``python -m bot.queue.worker_main``) sharing the real Redis.

The dialog manager runs with the instant ``echo:`` model, so replies are predictable: the
history of every chat must read ``m0, echo: m0, m1, echo: m1, ...`` — in order, nothing missing,
nothing answered twice — even when the worker answering a chat is killed with SIGKILL mid-turn.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bot.queue import QueueKeys

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
LEASE_MS = 3000


class Workers:
    """Starts worker processes; stops whatever is left at the end of the test."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, model: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.queue.worker_main"],
            env=self.env | {"FMBOT_TEXT_MODEL": model},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.logs.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def workers(redis_server: str, redis_prefix: str, tmp_path: Path) -> Iterator[Workers]:
    env = os.environ | {
        "FMBOT_STORE": redis_server,
        "FMBOT_REDIS_PREFIX": redis_prefix,
        "FMBOT_QUEUE_PARTITIONS": str(PARTITIONS),
        "FMBOT_QUEUE_LEASE_MS": str(LEASE_MS),
        "FMBOT_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
    }
    w = Workers(env, tmp_path)
    yield w
    w.stop_all()


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


def wait_until(check: Callable[[], bool], seconds: float, what: str, workers: Workers) -> float:
    """Seconds it took; fails with the workers' output after a generous deadline."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what}: not within {seconds} s. Worker output:\n{workers.output()}")
        time.sleep(0.05)
    return time.monotonic() - started


def enqueue(r: redis.Redis, keys: QueueKeys, chat: str, text: str) -> None:
    """What Ingress.enqueue sends (sync here: the test drives the processes from outside)."""
    r.set(keys.config, keys.partitions, nx=True)
    r.xadd(keys.jobs(keys.partition(chat)), {"chat": chat, "payload": json.dumps({"text": text})})


def history(r: redis.Redis, prefix: str, chat: str) -> list[str]:
    return [json.loads(t)["text"] for t in r.lrange(f"{prefix}:{{{chat}}}:turns", 0, -1)]


def replies(r: redis.Redis, keys: QueueKeys, chat: str) -> list[dict[str, object]]:
    return [json.loads(x) for x in r.lrange(keys.replies(chat), 0, -1)]


def expected(texts: list[str]) -> list[str]:
    return [t for text in texts for t in (text, f"echo: {text}")]


def two_chats_in_different_partitions() -> tuple[str, str]:
    keys = QueueKeys(partitions=PARTITIONS)
    a = "chat-a"
    b = next(f"chat-b{i}" for i in range(100) if keys.partition(f"chat-b{i}") != keys.partition(a))
    return a, b


def lease_owners(r: redis.Redis, keys: QueueKeys) -> list[str | None]:
    return [r.get(keys.lease(p)) for p in range(PARTITIONS)]


def process_of(owner: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Worker names are ``host-pid-random``."""
    return next(p for p in procs if owner.split("-")[-2] == str(p.pid))


def test_two_worker_processes_answer_interleaved_messages_in_order_exactly_once(
    workers: Workers, r: redis.Redis, redis_prefix: str
) -> None:
    """50 messages into one chat (interleaved with another chat's 50) while the chat moves
    between workers: its worker is stopped (SIGTERM) mid-stream and a new one joins."""
    keys = QueueKeys(redis_prefix, PARTITIONS)
    procs = [workers.start("echo:?delay=0.05"), workers.start("echo:?delay=0.05")]

    def settled() -> bool:  # both own an even share: no hand-over in progress
        owners = lease_owners(r, keys)
        return None not in owners and len(set(owners)) == 2

    wait_until(settled, 30, "two workers sharing the partitions", workers)
    a, b = two_chats_in_different_partitions()
    texts = {chat: [f"{chat} m{n}" for n in range(50)] for chat in (a, b)}
    for n in range(50):
        for chat in (a, b):
            enqueue(r, keys, chat, texts[chat][n])

    lease = keys.lease(keys.partition(a))
    wait_until(lambda: len(history(r, redis_prefix, a)) >= 20, 30, "10 turns of chat a", workers)
    owner = str(r.get(lease))
    victim = process_of(owner, procs)
    victim.send_signal(signal.SIGTERM)
    assert len(history(r, redis_prefix, a)) < 100  # the rest is answered by another worker
    procs.append(workers.start("echo:?delay=0.05"))  # and a third joins meanwhile
    assert victim.wait(30) == 0
    wait_until(lambda: r.get(lease) not in (None, owner), 30, "chat a taken over", workers)

    def answered() -> bool:
        return all(len(history(r, redis_prefix, c)) >= 100 for c in (a, b))

    wait_until(answered, 60, "100 turns answered", workers)
    time.sleep(0.5)  # anything answered twice would show up now
    for chat in (a, b):
        assert history(r, redis_prefix, chat) == expected(texts[chat])
        got = replies(r, keys, chat)
        assert len(got) == 50 and len({g["job"] for g in got}) == 50
        assert [g["events"] for g in got] == [
            [{"kind": "final", "text": f"echo: {t}", "complete": True}] for t in texts[chat]
        ]
    # The two left share the partitions, and stop cleanly on SIGTERM.
    wait_until(settled, 30, "the two remaining workers sharing the partitions", workers)
    survivors = [p for p in procs if p is not victim]
    for proc in survivors:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in survivors] == [0, 0]
    assert r.zcard(keys.workers) == 0  # they left the membership set on the way out
    assert lease_owners(r, keys) == [None] * PARTITIONS


def test_a_worker_killed_mid_turn_is_replaced_and_every_message_answered_once(
    workers: Workers, r: redis.Redis, redis_prefix: str
) -> None:
    keys = QueueKeys(redis_prefix, PARTITIONS)
    procs = [workers.start("echo:?delay=0.5"), workers.start("echo:?delay=0.5")]
    wait_until(lambda: r.zcard(keys.workers) == 2, 30, "two workers registered", workers)
    chat = "chat-killed"
    texts = [f"message {n}" for n in range(6)]
    for text in texts:
        enqueue(r, keys, chat, text)
    lease = keys.lease(keys.partition(chat))
    wait_until(lambda: len(replies(r, keys, chat)) >= 1, 30, "the first reply", workers)
    time.sleep(0.2)  # the second turn is now waiting for its (slow) model
    owner = str(r.get(lease))
    victim = process_of(owner, procs)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert victim.wait(10) == -signal.SIGKILL

    took = wait_until(
        lambda: r.get(lease) not in (None, owner), 30, "the partition taken over", workers
    )
    wait_until(lambda: len(history(r, redis_prefix, chat)) >= 12, 30, "all turns", workers)
    time.sleep(1.0)  # a duplicate answer would arrive now
    assert time.monotonic() - killed_at < 30 and took < 30
    assert history(r, redis_prefix, chat) == expected(texts)  # no partial turn, none twice
    got = replies(r, keys, chat)
    finals = [e["text"] for g in got for e in g["events"] if e["kind"] == "final"]  # type: ignore[attr-defined]
    assert finals == [f"echo: {t}" for t in texts]  # exactly one final reply per message
    assert "took over" in workers.output()
