"""An operator's Redis restart, end to end: nothing is lost, nothing is answered twice.

Real processes — ``fmbot telegram --role ingress`` and two ``--role worker`` — on a private
redis-server with ``appendonly yes`` and ``appendfsync always`` (what docker-compose.yml runs),
answering 20 people on the fake Bot API with a slow ``echo:`` model, so turns are in flight when
the test takes Redis away:

* ``SHUTDOWN`` (SIGTERM) for 3 s while 200 messages flow, then an idle restart followed by a
  burst: every message answered once, stored once, in order; no "not saved", no "send it again".
* ``SIGKILL`` for longer than the queue's lease: the workers give their partitions up and the
  jobs are replayed. Stored once and in order still; a reply may be sent twice only if it was in
  flight when Redis went away (at most one per chat), never one that was already delivered.

Each test prints its recovery figures (README "Outages").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from tests.conftest import RedisProcesses, free_port, redis_processes
from tests.fakes.telegram_server import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
CHATS = 20
PER_CHAT = 10
LEASE_MS = 10_000
SHORT_LEASE_MS = 3000
DELAY = 0.3  # the model's time per reply: turns are running when Redis goes away
PREFIX = "fmbot"


@dataclass
class System:
    fake: FakeTelegram
    redis: RedisProcesses
    port: int
    logs: Path
    users: list[dict[str, object]] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)  # messages pushed per user

    def push(self, count: int) -> None:
        """``count`` more messages from every user, interleaved across the chats."""
        for _ in range(count):
            for user in self.users:
                uid = int(user["id"])  # type: ignore[call-overload]
                n = self.sent.get(uid, 0)
                self.fake.push_text(self.fake.chats[uid], user, f"u{uid} m{n}")
                self.sent[uid] = n + 1

    def replies(self, uid: int) -> list[str]:
        return [str(m.get("text") or "") for m in self.fake.bot_messages(uid)]

    def answered(self) -> bool:
        return all(len(self.replies(u)) >= n for u, n in self.sent.items())

    async def stop_redis(self, how: str) -> None:
        if how == "kill":
            proc = self.redis.procs.pop(self.port)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        else:  # SIGTERM: redis-server shuts down as on SHUTDOWN (AOF fsynced)
            await asyncio.to_thread(self.redis.stop, self.port)

    async def start_redis(self) -> None:
        await asyncio.to_thread(
            self.redis.start, self.port, "--appendonly", "yes", "--appendfsync", "always"
        )

    def output(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def check_running(self) -> None:
        exited = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        assert not exited, f"processes exited: {exited}\n{self.output()}"

    def stored(self, uid: int) -> list[str]:
        client = self.redis.client(self.port)
        try:
            raw = cast(list[str], client.lrange(f"{PREFIX}:{{tg:{uid}}}:turns", 0, -1))
        finally:
            client.close()
        return [json.loads(t)["text"] for t in raw]


def expected(uid: int, count: int) -> list[str]:
    return [f"echo: u{uid} m{n}" for n in range(count)]


def expected_history(uid: int, count: int) -> list[str]:
    return [t for n in range(count) for t in (f"u{uid} m{n}", f"echo: u{uid} m{n}")]


@contextlib.asynccontextmanager
async def running_system(tmp_path: Path, lease_ms: int) -> AsyncIterator[System]:
    async with FakeTelegram() as fake:
        with redis_processes(tmp_path / "redis") as procs:
            system = System(fake, procs, free_port(), tmp_path)
            await system.start_redis()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "TELEGRAM_"))}
            env |= {
                "PYTHONPATH": str(ROOT),
                "TELEGRAM_BOT_TOKEN": fake.token,
                "TELEGRAM_API_URL": fake.base_url,
                "TELEGRAM_EDIT_INTERVAL": "0.25",
                "FMBOT_HOME": str(tmp_path / "home"),
                "FMBOT_TEXT_MODEL": f"echo:?delay={DELAY}",
                "FMBOT_STORE": f"redis://127.0.0.1:{system.port}/0",
                "FMBOT_QUEUE_PARTITIONS": "4",
                "FMBOT_QUEUE_LEASE_MS": str(lease_ms),
            }
            for n in range(CHATS):
                user = fake.user(3000 + n, f"User{n}")
                fake.private_chat(user)
                system.users.append(user)
            for name in ("ingress", "worker-a", "worker-b"):
                system.procs[name] = start_role(name, env, tmp_path)
            try:
                yield system
                system.check_running()
                for proc in system.procs.values():
                    proc.send_signal(signal.SIGTERM)
                codes = [await exited(p, 30) for p in system.procs.values()]
                assert codes == [0, 0, 0], system.output()
            finally:
                for proc in system.procs.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()


def start_role(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """``fmbot telegram --role ingress|worker``, its output in ``logs/NAME.log``."""
    role = name.partition("-")[0]
    with (logs / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "adapters.cli", "telegram", "--role", role],
            env=env,
            cwd=logs,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


# Three fmbot processes start before anything flows; importing aiogram alone takes over 10 s on a
# busy 2-core machine. A hang still fails, only later.
START = 150


async def exited(proc: subprocess.Popen[bytes], within: float) -> int:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{proc.args!r} did not exit within {within} s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def wait(system: System, predicate: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails with the processes' logs after ``within``."""
    start = time.monotonic()
    try:
        await system.fake.wait_for(predicate, within)
    except TimeoutError:
        got = {u: len(system.replies(u)) for u in system.sent}
        pytest.fail(f"{what} within {within} s; replies per chat {got}\n{system.output()}")
    return time.monotonic() - start


def in_flight(system: System) -> int:
    """Chats whose next reply is not yet sent: at most one turn each is running."""
    return sum(len(system.replies(u)) < n for u, n in system.sent.items())


async def test_shutdown_for_3s_under_load_then_an_idle_restart_lose_nothing(
    tmp_path: Path,
) -> None:
    # The default lease (10 s): a 3 s outage is shorter, so the turns running stay with their
    # workers, and jobs starting as Redis goes away must wait for it rather than say "send it
    # again".
    async with running_system(tmp_path, LEASE_MS) as system:
        system.push(PER_CHAT // 2)
        # Flowing: every chat has had a reply or two, the rest are queued or running.
        await wait(
            system, lambda: sum(map(len, map(system.replies, system.sent))) >= 30, START, "no flow"
        )
        running = in_flight(system)
        await system.stop_redis("shutdown")
        system.push(PER_CHAT - PER_CHAT // 2)  # the ingress cannot queue these yet
        await asyncio.sleep(3.0)
        await system.start_redis()
        drained = await wait(system, system.answered, 60, "not every message was answered")
        system.check_running()

        # Idle: everything answered, connections pooled; Redis restarts, then a burst.
        await system.stop_redis("shutdown")
        await system.start_redis()
        await asyncio.sleep(2.0)
        before = dict(system.sent)
        system.push(3)
        burst = await wait(system, system.answered, 60, "the burst after the restart was lost")
        for uid, count in system.sent.items():
            assert system.replies(uid) == expected(uid, count), system.output()
            assert system.stored(uid) == expected_history(uid, count)
            assert count == before[uid] + 3
        print(
            f"\nshutdown 3 s: {running} chats mid-turn; all {CHATS * PER_CHAT} answered "
            f"{drained:.1f} s after Redis was back; burst of {3 * CHATS} after an idle restart "
            f"answered in {burst:.1f} s"
        )


async def test_kill_for_longer_than_the_lease_stores_once_and_resends_only_in_flight(
    tmp_path: Path,
) -> None:
    async with running_system(tmp_path, SHORT_LEASE_MS) as system:
        system.push(PER_CHAT)
        await wait(
            system, lambda: sum(map(len, map(system.replies, system.sent))) >= 40, START, "no flow"
        )
        delivered = {u: len(system.replies(u)) for u in system.sent}
        await system.stop_redis("kill")
        outage = 2 * SHORT_LEASE_MS / 1000  # the workers give their partitions up meanwhile
        await asyncio.sleep(outage)
        await system.start_redis()
        drained = await wait(
            system,
            lambda: all(
                set(system.replies(u)) >= set(expected(u, n)) for u, n in system.sent.items()
            ),
            90,
            "not every message was answered",
        )
        await asyncio.sleep(2 * DELAY + 1.0)  # a late second answer would arrive now
        duplicates = 0
        for uid, count in system.sent.items():
            replies = system.replies(uid)
            # Every reply, in order of first appearance; nothing missing, no notice.
            assert list(dict.fromkeys(replies)) == expected(uid, count), replies
            # A chat runs one job at a time: only that job's reply may come twice (its turn
            # or its delivered mark was in flight), never one delivered before.
            again = [r for n, r in enumerate(replies) if r in replies[:n]]
            assert len(again) <= 1, replies
            for reply in again:
                assert expected(uid, count).index(reply) >= delivered[uid] - 1, replies
            duplicates += len(again)
            assert system.stored(uid) == expected_history(uid, count)
        print(
            f"\nSIGKILL for {outage:.0f} s (lease {SHORT_LEASE_MS / 1000:.0f} s): all "
            f"{CHATS * PER_CHAT} stored once, answered {drained:.1f} s after Redis was back; "
            f"{duplicates} replies sent twice (in flight when Redis went away)"
        )
