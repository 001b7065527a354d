"""What metrics cost, measured in one run: the Toggler switches the real metrics on and off and
books each stretch's turns to the side that was on while they were counted."""

from __future__ import annotations

import asyncio

import pytest

from adapters.cli.bench_cost import Stretch, Toggled, Toggler
from bot.observe import metrics


def turns_counted(channel: str) -> float:
    return sum(
        value
        for (ch, _status), value in metrics.TURNS.values.items()
        if ch == channel  # this test's own label: nothing else counts into it
    )


async def test_the_toggler_books_each_turn_to_the_side_metrics_were_on_or_off() -> None:
    answered = 0
    toggler = Toggler(lambda: answered, period=0.01)
    toggler.start()
    try:
        async with asyncio.timeout(10):
            for _ in range(4000):  # some 0.2 s or more of turns: a score of stretches
                with metrics.Metered("chat", "toggler-test") as turn:
                    turn.status = "ok"
                answered += 1  # counted with no await in between: no turn is under way
                await asyncio.sleep(0)
                await asyncio.sleep(0.00005)
    finally:
        toggled = await toggler.stop()
    assert not metrics.enabled()  # off again once stopped
    on = sum(s.turns for s in toggled.stretches if s.on)
    off = sum(s.turns for s in toggled.stretches if not s.on)
    assert on > 0 and off > 0, toggled.stretches
    assert [s.on for s in toggled.stretches[:4]] == [False, True, False, True]
    # The cut last stretch is not kept; its turns were counted if it was on.
    cut_on = len(toggled.stretches) % 2 == 1
    counted = turns_counted("toggler-test")
    if cut_on:  # its turns were counted, and are in neither side
        assert counted >= on, (counted, on, off)
    else:
        assert counted == on, (counted, on, off)
    assert on + off <= answered


def test_paired_stretches_compare_cpu_per_turn_and_skip_idle_ones() -> None:
    toggled = Toggled(
        0.05,
        [
            Stretch(False, 0.010, 100),  # 100 µs a turn
            Stretch(True, 0.0105, 100),  # 105: +5%
            Stretch(False, 0.020, 0),  # nothing answered: the pair is left out
            Stretch(True, 0.010, 50),
            Stretch(False, 0.010, 50),  # 200 µs
            Stretch(True, 0.009, 50),  # 180: -10%
            Stretch(False, 0.010, 100),  # an off stretch without its on one: no pair
        ],
    )
    assert toggled.paired() == pytest.approx([0.05, -0.10])
    assert toggled.side(True) == (pytest.approx(0.0295), 200)
    assert toggled.side(False) == (pytest.approx(0.050), 250)


async def test_a_run_too_short_to_switch_says_so() -> None:
    toggler = Toggler(lambda: 1, period=60)
    toggler.start()
    await asyncio.sleep(0.01)
    toggled = await toggler.stop()
    assert toggled.stretches == []
    [line] = toggled.report()
    assert line == (
        "  metrics cost  not measured: the run was too short to switch metrics on and off every "
        "60000 ms (0 turns off, 0 on); more --turns or a shorter --toggle-ms"
    )
