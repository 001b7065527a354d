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
from bot.queue.worker import CONCURRENCY

TINY = ["--chats", "20", "--turns", "200", "--many-chats", "60", "--rate", "400"]
TINY += ["--live-seconds", "0.5"]  # 200 messages sent while the worker runs
TINY += ["--cost-rounds", "1"]  # one A/B pair of 200 turns each
TINY += ["--toggle-ms", "5"]  # some 20 stretches in a run of 200 turns
TOGGLED = "best case, metrics on and off"
STEADY = "queued while the worker holds every chat (each answered once before)"


def blocks(out: str) -> dict[str, str]:
    """The report's runs by label: each starts with "label: ..." and its lines are indented."""
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", out.strip())[1:]:
        label, _, _ = block.partition(":")
        found[label] = block
    return found


def latency(block: str) -> dict[str, tuple[float, float, float]]:
    line = re.search(r"^  latency ms +(.*)$", block, re.M)
    assert line is not None, block
    found = re.findall(r"(\w+) p50 ([\d.]+), p95 ([\d.]+), p99 ([\d.]+)", line.group(1))
    return {name: (float(a), float(b), float(c)) for name, a, b, c in found}


def check_metrics_cost(runs: dict[str, str], turns: int, out: str) -> None:
    """The best case again with metrics counted (every turn, read back from a scrape); then the
    A/B rounds without and with metrics, their medians and the ratio printed; the plain best case
    counts nothing."""
    counted = re.search(r"^  metrics +(\d+) turns counted \(warm-up included\); one scrape at "
                        r"the end: (\d+) bytes", runs["best case, metrics on"], re.M)  # fmt: skip
    assert counted is not None and int(counted.group(1)) == turns, runs["best case, metrics on"]
    assert int(counted.group(2)) > 1000
    assert "metrics " not in runs["best case"]
    check_toggled(runs[TOGGLED], 200)
    head, *lines = runs["metrics cost"].splitlines()
    assert re.fullmatch(
        r"metrics cost: 1 rounds of the best case \(200 turns each\) without \(A\) and with "
        r"\(B\) metrics, in the order A B; medians:",
        head,
    ), head
    rate = re.fullmatch(
        r"  throughput +(\d+) turns/s without, (\d+) with \(([-+][\d.]+)% lost; A (\d+), B (\d+)\)",
        lines[0],
    )
    assert rate is not None, lines
    without, with_, lost = int(rate.group(1)), int(rate.group(2)), float(rate.group(3))
    assert (without, with_) == (int(rate.group(4)), int(rate.group(5)))  # one round: its own
    assert abs(100 * (without - with_) / without - lost) < 1  # the printed figure is theirs
    cpu = re.fullmatch(
        r"  CPU per turn +([\d.]+) µs without, ([\d.]+) µs with \(([-+][\d.]+)%, the limit is "
        r"\+5%; A (\d+), B (\d+)\)",
        lines[1],
    )
    assert cpu is not None, lines
    a, b, more = float(cpu.group(1)), float(cpu.group(2)), float(cpu.group(3))
    assert a > 0 and b > 0 and abs(100 * (b - a) / a - more) < 0.2
    assert abs(a - int(cpu.group(4))) <= 1 and abs(b - int(cpu.group(5))) <= 1  # one round
    paired = re.fullmatch(
        r"  paired +CPU per turn with less without, round by round: median ([-+][\d.]+)% "
        r"\(([-+][\d.]+)\)",
        lines[2],
    )
    assert paired is not None, lines
    assert paired.group(1) == paired.group(2)  # one round: its own difference
    assert abs(float(paired.group(1)) - more) < 0.2  # one round: the medians' difference
    counting = re.fullmatch(
        r"  counting +(-?[\d.]+) µs of CPU per turn measured on its own, (-?[\d.]+)% of a "
        r"turn's CPU without metrics",
        lines[3],
    )
    assert counting is not None, lines
    # Measured, not made up: well under the cost of a whole turn (a difference of two timings).
    assert abs(float(counting.group(1))) < a, lines


def check_toggled(block: str, turns: int) -> None:
    """Metrics switched on and off while the clock ran: the turns of both sides add up to the
    run's (less the last stretch, cut by the run's end), the metrics counted the on stretches'
    turns (give or take the 8 under way at each switch), and the printed figures are theirs."""
    cost = re.search(
        r"^  metrics cost +switched on and off every 5 ms while the clock ran: ([\d.]+) µs of CPU "
        r"per turn off \((\d+) turns\), ([\d.]+) µs on \((\d+) turns, (\d+) counted\): "
        r"([-+][\d.]+)%, the limit is \+5%$",
        block,
        re.M,
    )
    assert cost is not None, block
    per_off, per_on, more = float(cost.group(1)), float(cost.group(3)), float(cost.group(6))
    off, on, counted = int(cost.group(2)), int(cost.group(4)), int(cost.group(5))
    assert off > 0 and on > 0 and off + on <= turns, block
    assert abs(100 * (per_on / per_off - 1) - more) < 0.2, block
    paired = re.search(
        r"^  paired +neighbouring stretches, on against off: median ([-+][\d.]+)% over (\d+) "
        r"pairs$",
        block,
        re.M,
    )
    assert paired is not None, block
    pairs = int(paired.group(2))
    assert pairs >= 1, block
    switches = 2 * pairs + 2  # and perhaps one stretch more, cut short
    assert abs(counted - on) <= 8 * switches, block
    assert re.search(r"^  counting +-?[\d.]+ µs of CPU per turn measured on its own", block, re.M)


def test_bench_reports_the_best_case_many_chats_real_concurrency_and_a_live_run(
    redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMBOT_STORE", "memory://")  # the bench uses --redis, not the store
    result = CliRunner().invoke(app, ["bench", *TINY, "--redis", redis_server])
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"^fmbot bench: echo model, queue with 16 partitions, Redis ", out, re.M)
    runs = blocks(out)
    assert list(runs) == [
        "best case",
        "best case, metrics on",
        TOGGLED,
        "steady state",
        "many chats",
        "real concurrency",
        "live",
        "many chats cost",
        "metrics cost",
    ], out
    check_metrics_cost(
        runs, 200 + 2 * 8, out
    )  # the run's turns, and the warm-up's (2 × --concurrency)
    expected = {  # chats, turns, turns at once, words describing how messages arrive
        "best case": (20, 200, 8, "queued before the clock starts"),
        "best case, metrics on": (20, 200, 8, "queued before the clock starts"),
        TOGGLED: (20, 200, 8, "queued before the clock starts"),
        "steady state": (20, 200, 8, STEADY),
        "many chats": (60, 200, 8, STEADY),
        "real concurrency": (20, 200, CONCURRENCY, "queued before the clock starts"),
        "live": (20, 200, CONCURRENCY, "sent at 400 messages/s while the worker runs"),
    }
    for label, (chats, turns, at_once, how) in expected.items():
        block = runs[label]
        assert f"{chats} chats, {turns} turns {how}, {at_once} turns at once" in block
        assert re.search(
            rf"^  answered +{turns}/{turns} turns \(out of order: 0, answered twice: 0\)",
            block,
            re.M,
        ), block
        assert re.search(
            r"^  throughput +\d+ turns/s \(\d+\.\d+ s\); CPU [\d.]+ µs per turn \(this process: "
            r"the worker\)",
            block,
            re.M,
        ), block
        split = latency(block)
        assert set(split) == {"waiting", "service", "total"}, block
        for name, (p50, p95, p99) in split.items():
            assert 0 <= p50 <= p95 <= p99, (name, block)
        assert split["total"][2] >= split["service"][0]  # a turn is never quicker than served
        mean = re.search(
            r"^  mean ms +waiting ([\d.]+) \+ service ([\d.]+) = total ([\d.]+) over (\d+) turns",
            block,
            re.M,
        )
        assert mean is not None, block
        waiting, service, total = (float(mean.group(i)) for i in (1, 2, 3))
        assert abs(waiting + service - total) <= 0.02, block  # rounded to 0.01 each
        assert int(mean.group(4)) == turns  # one measurement per message sent
        trips = re.search(r"^  round trips +(\d+\.\d+) per turn: history (\d+\.\d+)", block, re.M)
        assert trips is not None and float(trips.group(2)) > 0, block
        copy = re.search(r"copy on (\d+) turns, read from Redis on (\d+) \(.*: (\d+)\)", block)
        assert copy is not None, block
        hits, misses, first = (int(copy.group(i)) for i in (1, 2, 3))
        assert hits + misses == turns  # one history load per turn
        if label in ("steady state", "many chats"):
            # Every chat answered once before the clock by the same worker: it has them all.
            assert (first, misses, hits) == (0, 0, turns), block
        else:
            assert first == chats and misses >= chats, block  # a chat's first turn reads Redis
    for label in ("real concurrency", "live"):  # replies published and marked as a channel does
        assert "replies published and marked delivered" in runs[label]
        assert re.search(r"^  delivered +marks on 20/20 chats", runs[label], re.M), runs[label]
    for label in ("best case", "best case, metrics on", "steady state", "many chats"):
        assert "replies stored" in runs[label] and "delivered" not in runs[label].split("\n", 1)[1]
    assert re.search(r"^  ingress +sent while the worker ran, \d+ messages/s", runs["live"], re.M)
    cost = re.fullmatch(
        r"many chats cost: steady state (\d+) turns/s with 20 chats, (\d+) with 60 \(([\d.]+)×; "
        r"same run, same worker settings\)",
        runs["many chats cost"],
    )
    assert cost is not None, runs["many chats cost"]
    few, many, ratio = int(cost.group(1)), int(cost.group(2)), float(cost.group(3))
    # The printed ratio is theirs: the rates are printed rounded to whole turns/s, the ratio to
    # two decimals.
    low, high = (many - 0.5) / (few + 0.5) - 0.005, (many + 0.5) / max(few - 0.5, 0.5) + 0.005
    assert low <= ratio <= high, cost.group(0)


def test_bench_without_the_queue_calls_the_manager_directly(
    redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMBOT_STORE", "memory://")
    result = CliRunner().invoke(app, ["bench", *TINY, "--redis", redis_server, "--no-queue"])
    assert result.exit_code == 0, result.output
    runs = blocks(result.output)
    assert list(runs) == ["best case", "best case, metrics on", TOGGLED, "metrics cost"], runs
    check_metrics_cost(runs, 200, result.output)  # the manager directly: no warm-up
    block = runs["best case"]
    assert "20 chats, 200 turns the manager called directly, 8 turns at once" in block
    assert re.search(r"^  answered +200/200 turns", block, re.M)
    assert re.search(
        r"^  mean ms +waiting 0\.00 \+ service [\d.]+ = total [\d.]+ over 200", block, re.M
    )


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
