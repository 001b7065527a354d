"""``fmbot bench`` at a tiny size: the report's format and that every turn was answered.

No timing assertions: the figures depend on the machine.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from adapters.cli import app


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
    assert float(trips.group(2)) >= 1  # the manager reads and writes history every turn
