"""What metrics cost a turn in ``fmbot bench``: measured three ways.

* :class:`Toggler`: in one best-case run, metrics are switched on and off every few tens of
  milliseconds while the clock runs, and each stretch's CPU time and turns are recorded: the two
  sides share the run's machine, its load and its warm caches, so a neighbour's burst lands on
  both alike (the figure to trust on a shared machine);
* :class:`CostRounds`: whole best-case runs alternately without (A) and with (B) metrics;
* :func:`counting_cost`: the counting of one turn on its own, in a tight loop.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.observe import metrics

if TYPE_CHECKING:
    from adapters.cli.bench import BenchResult

#: The limit: metrics may cost a turn at most this share of its CPU time.
LIMIT = 0.05
#: Seconds between switches: 100 to 200 turns a stretch at the best case of the machines fmbot is
#: benchmarked on, so the turns under way at a switch (8 at once) blur a stretch by a few per
#: cent, and a 5-second run has some 50 pairs of stretches.
TOGGLE = 0.05


@dataclass
class Stretch:
    """Part of a toggled run: metrics on or off, this process's CPU seconds, turns answered."""

    on: bool
    cpu: float
    turns: int


@dataclass
class Toggled:
    """The stretches of one toggled run and what they say."""

    period: float
    stretches: list[Stretch] = field(default_factory=list)
    #: Turns the metrics counted during the run (fmbot_turns_total, read from a scrape): those
    #: of the on stretches, give or take the turns under way at each switch.
    counted: int | None = None

    def side(self, on: bool) -> tuple[float, int]:
        """CPU seconds and turns of every stretch with metrics ``on`` (or off)."""
        chosen = [s for s in self.stretches if s.on == on]
        return sum(s.cpu for s in chosen), sum(s.turns for s in chosen)

    def paired(self) -> list[float]:
        """Per pair of neighbouring stretches (off, then on): the on stretch's CPU per turn over
        the off one's, less 1. Pairs where a side answered nothing are left out."""
        out = []
        pairs = zip(self.stretches[0::2], self.stretches[1::2], strict=False)
        for off, on in pairs:
            if off.turns and on.turns and off.cpu > 0:
                out.append((on.cpu / on.turns) / (off.cpu / off.turns) - 1)
        return out

    def report(self) -> list[str]:
        (cpu_off, off), (cpu_on, on) = self.side(False), self.side(True)
        paired = self.paired()
        if not paired:
            return [
                f"  metrics cost  not measured: the run was too short to switch metrics on and "
                f"off every {self.period * 1000:g} ms ({off} turns off, {on} on); more --turns or "
                "a shorter --toggle-ms"
            ]
        per_off, per_on = cpu_off / off, cpu_on / on
        median = statistics.median(paired)
        more = per_on / per_off - 1
        return [
            f"  metrics cost  switched on and off every {self.period * 1000:.0f} ms while the "
            f"clock ran: {per_off * 1e6:.1f} µs of CPU per turn off ({off} turns), "
            f"{per_on * 1e6:.1f} µs on ({on} turns, {self.counted} counted): {100 * more:+.1f}%, "
            f"the limit is +{100 * LIMIT:.0f}%",
            f"  paired        neighbouring stretches, on against off: median {100 * median:+.1f}% "
            f"over {len(paired)} pairs",
            counting_line(per_off),
        ]


class Toggler:
    """Switches metrics on and off every ``period`` seconds between :meth:`start` and
    :meth:`stop`, recording each stretch (see :class:`Toggled`); ``answered()`` counts the turns
    answered so far. The first stretch (off) starts with the first turn answered: what comes
    before (a worker taking its partitions) is no turn's work, and would weigh on one side."""

    def __init__(self, answered: Callable[[], int], period: float) -> None:
        if period <= 0:
            raise ValueError("the period must be positive")
        self.answered = answered
        self.result = Toggled(period)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> Toggled:
        """Stops switching (metrics off); the stretch cut short by the stop is not kept."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # not awaited itself: our own cancellation goes on
        metrics.enable(False)
        return self.result

    async def _run(self) -> None:
        on = False
        metrics.enable(on)
        # Polled: the runs count their turns in plain lists, with nothing to wait on.
        while not self.answered():  # noqa: ASYNC110
            await asyncio.sleep(self.result.period / 50)
        cpu, turns = time.process_time(), self.answered()
        while True:
            await asyncio.sleep(self.result.period)
            now, answered = time.process_time(), self.answered()
            self.result.stretches.append(Stretch(on, now - cpu, answered - turns))
            cpu, turns, on = now, answered, not on
            metrics.enable(on)


@dataclass
class CostRounds:
    """The best case run again and again, alternately without (A) and with (B) metrics, in the
    order A B B A A B B A ...: a machine whose load drifts during the rounds (other processes
    on the same cores) then weighs on both sides alike, and the medians drop a round that an
    outside burst slowed down. CPU time per turn is the figure to trust on a shared machine:
    wall time also counts the time other processes held the cores."""

    without: list[BenchResult]
    with_: list[BenchResult]
    order: str

    def report(self) -> list[str]:
        a, b = self.without, self.with_
        rate_a, rate_b = (statistics.median(r.rate for r in side) for side in (a, b))
        cpu_a, cpu_b = (statistics.median(r.cpu_per_turn for r in side) for side in (a, b))
        # Each round ran one A and one B next to each other: their difference leaves out most of
        # the drift of a shared machine's load, which the medians of the two sides keep.
        paired = [
            100 * (rb.cpu_per_turn - ra.cpu_per_turn) / max(ra.cpu_per_turn, 1e-12)
            for ra, rb in zip(a, b, strict=True)
        ]

        def rates(side: list[BenchResult]) -> str:
            return " ".join(f"{r.rate:.0f}" for r in side)

        def cpus(side: list[BenchResult]) -> str:
            return " ".join(f"{r.cpu_per_turn * 1e6:.0f}" for r in side)

        return [
            f"metrics cost: {len(a)} rounds of the best case ({a[0].turns} turns each) without "
            f"(A) and with (B) metrics, in the order {self.order}; medians:",
            f"  throughput    {rate_a:.0f} turns/s without, {rate_b:.0f} with "
            f"({100 * (rate_a - rate_b) / max(rate_a, 1e-9):+.1f}% lost; A {rates(a)}, "
            f"B {rates(b)})",
            f"  CPU per turn  {cpu_a * 1e6:.1f} µs without, {cpu_b * 1e6:.1f} µs with "
            f"({100 * (cpu_b - cpu_a) / max(cpu_a, 1e-12):+.1f}%, the limit is +5%; A {cpus(a)}, "
            f"B {cpus(b)})",
            f"  paired        CPU per turn with less without, round by round: median "
            f"{statistics.median(paired):+.1f}% ({' '.join(f'{d:+.1f}' for d in paired)})",
            counting_line(cpu_a),
        ]


def cost_order(rounds: int) -> list[bool]:
    """Metrics off (False) or on for each run of ``rounds`` A/B rounds: A B, B A, A B, ..."""
    return [on for i in range(rounds) for on in ((False, True) if i % 2 == 0 else (True, False))]


def counting_line(turn_cpu: float) -> str:
    """The counting alone, free of everything else a turn does, against a turn's CPU seconds
    without metrics."""
    counting = counting_cost()
    return (
        f"  counting      {counting * 1e6:.1f} µs of CPU per turn measured on its own, "
        f"{100 * counting / max(turn_cpu, 1e-12):.1f}% of a turn's CPU without metrics"
    )


@functools.cache  # measured once per process: several reports print it
def counting_cost(turns: int = 20_000) -> float:
    """Seconds of CPU that counting adds to one text turn: what the dialog manager and the queue
    call per turn (bot/dialog.py, bot/queue/partition.py), under a label of its own, with metrics
    on less the same calls with them off (a turn makes them either way: its id, its status)."""

    def turn() -> None:
        with metrics.Metered("probe", "bench-probe"):
            metrics.turn_model("probe")
            now = time.perf_counter()
            metrics.reply_ended(
                "probe", "complete", partial=True, started=now, first_at=now, error=None
            )
            metrics.tokens("probe", 1, 1)
        metrics.count(metrics.QUEUE_ACKED, 0)

    def cpu(on: bool) -> float:
        metrics.enable(on)
        try:
            started = time.process_time()
            for _ in range(turns):
                turn()
            return time.process_time() - started
        finally:
            metrics.enable(False)

    # Alternated, the least of three each: a burst of other work on the machine is left out.
    # Not clamped at 0: on a busy machine the difference can come out negative, and says so.
    off, on = [], []
    for _ in range(3):
        off.append(cpu(False))
        on.append(cpu(True))
    return (min(on) - min(off)) / turns
