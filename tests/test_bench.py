"""``fmbot bench`` at a tiny size: the report's format and that every turn was answered; a dead or
aborted ingress process is reported (or stopped) at once instead of being waited for.

No timing assertions on the figures: they depend on the machine. The bounds below only tell a
prompt failure from a hang.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest
import redis
from typer.testing import CliRunner

from adapters.cli import app
from adapters.cli.bench import BenchError, Producer
from bot.errors import ConfigError
from bot.queue import QueueKeys


@pytest.mark.parametrize("mode", ["--queue", "--no-queue"])
def test_bench_answers_every_turn_and_reports_its_figures(
    redis_server: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMBOT_STORE", "memory://")  # the bench uses --redis, not the store
    result = CliRunner().invoke(
        app, ["bench", "--chats", "20", "--turns", "200", "--redis", redis_server, mode]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"^fmbot bench: 20 chats, 200 turns, ", out, re.M)
    assert re.search(r"^answered +200/200 turns \(out of order: 0, answered twice: 0\)", out, re.M)
    assert re.search(r"^throughput +\d+ turns/s \(\d+\.\d+ s\)", out, re.M)
    assert re.search(r"^manager +p50 \d+\.\d+ ms, p99 \d+\.\d+ ms per turn", out, re.M)
    trips = re.search(r"^round trips +(\d+\.\d+) per turn: history (\d+\.\d+)", out, re.M)
    assert trips is not None
    # Every turn writes history; concurrent turns' writes may share a request (bot.queue.batch).
    assert float(trips.group(2)) > 0


def test_bench_reports_an_ingress_that_cannot_reach_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBOT_STORE", "memory://")
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["bench", "--chats", "2", "--turns", "4", "--redis", "redis://:secret@127.0.0.1:1/0"]
    )
    assert time.monotonic() - started < 30  # was: 60 s in ready(), then 300 s in result()
    assert result.exit_code != 0
    assert isinstance(result.exception, BenchError), result.output
    message = str(result.exception)
    assert "ingress process exited with code 1" in message
    assert "ConnectionError" in message
    assert "secret" not in message


async def test_producer_that_dies_after_connecting_is_reported(redis_server: str) -> None:
    producer = Producer(redis_server, f"fmbot-bench-test-{uuid.uuid4().hex[:8]}", 1, [1])
    try:
        await producer.ready()
        assert producer.pid is not None
        os.kill(producer.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(BenchError, match=f"exited with code -{int(signal.SIGKILL)}"):
            await producer.result()
        assert time.monotonic() - started < 30
    finally:
        await producer.close()


async def test_closing_a_producer_before_go_enqueues_nothing(redis_server: str) -> None:
    keys = QueueKeys(f"fmbot-bench-test-{uuid.uuid4().hex[:8]}", 2)
    producer = Producer(redis_server, keys.prefix, keys.partitions, [5, 5])
    await producer.ready()
    started = time.monotonic()
    await producer.close()  # as after a failure: the child must leave without enqueueing
    assert time.monotonic() - started < 30
    client = redis.Redis.from_url(redis_server)
    try:
        assert client.exists(*(keys.jobs(p) for p in range(keys.partitions))) == 0
    finally:
        client.close()


async def test_the_local_model_bench_reports_raw_and_fmbot_side_by_side() -> None:
    """At a tiny size: every figure is there, measured (the numbers depend on the machine)."""
    from adapters.cli.bench_local import run_local_bench

    result = await run_local_bench(
        "local:smollm2",
        None,
        window=384,
        threads=2,
        turns=6,
        words=30,
        decode_tokens=16,
        reply_tokens=8,
    )
    report = result.report()
    assert re.search(
        r"^decode +raw llama-cpp-python [\d.]+ tok/s, fmbot [\d.]+ tok/s", report, re.M
    )
    assert re.search(
        r"^first token +turns 2-4 \(early\): fmbot 1 chat [\d.-]+ s, fmbot 2 chats", report, re.M
    )
    assert re.search(
        r"^first token +turns 5-6 \(late\): .*raw with the history cached", report, re.M
    )
    assert re.search(r"^before model +fmbot's window fitting and prompt: p50", report, re.M)
    assert len(result.ttft) == 6 * 3  # one chat, then two
    assert all(seconds > 0 for _c, _t, seconds, _ms in result.ttft)


def test_the_bench_refuses_a_model_it_cannot_run() -> None:
    result = CliRunner().invoke(app, ["bench", "--model", "yandex:yandexgpt"])
    assert isinstance(result.exception, ConfigError)  # fmbot's main(): one line, exit 2
    assert "--model" in str(result.exception)
