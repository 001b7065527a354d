"""Counters, gauges and histograms as plain dictionaries, exported at scrape time.

prometheus_client's own metric objects take a lock and check their labels on every ``inc()``
and ``observe()``: 4.5 µs for the seven calls of a turn where fmbot is benchmarked (``fmbot
bench``), against 1.2 µs now. fmbot counts only on its event loop's thread (the turn, the
queue, the Bot API session and the ``/metrics`` server all run there), so a count here is one
dictionary update, and :class:`Families` turns the dictionaries into prometheus_client metric
families when a scrape asks: the exposition format stays prometheus_client's.

Not for threads: two threads adding to one series at once may lose an addition.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

Labels = tuple[str, ...]


class Family:
    """One metric family: its name (without ``_total``), help text and label names."""

    __slots__ = ("doc", "labelnames", "name")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)

    def collect(self) -> Metric:
        raise NotImplementedError

    def _checked(self, labels: Labels) -> Labels:
        # Checked when scraped, not when counted (that would cost every count): a call site
        # with the wrong labels fails the first scrape of any test that reaches it.
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {labels} for {self.labelnames}")
        return labels


class _Series(Family):
    """A value per series (a counter's or a gauge's)."""

    __slots__ = ("values",)
    exported: ClassVar[type[CounterMetricFamily | GaugeMetricFamily]]

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        # An unlabelled series is exported (as 0) before its first count, as prometheus_client
        # does: a rate() over it then starts at the process's start, not at its first job.
        self.values: dict[Labels, float] = {} if self.labelnames else {(): 0.0}

    def collect(self) -> Metric:
        family = self.exported(self.name, self.doc, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(self._checked(labels), value)
        return family


class Counter(_Series):
    __slots__ = ()
    exported = CounterMetricFamily

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount


class Gauge(_Series):
    __slots__ = ()
    exported = GaugeMetricFamily

    def set(self, value: float, labels: Labels = ()) -> None:
        self.values[labels] = value

    def remove(self, labels: Labels) -> None:
        self.values.pop(labels, None)


class Histogram(Family):
    """Per series a row of counts, one per bucket (the last is +Inf), then the sum."""

    __slots__ = ("buckets", "rows")

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, doc, labelnames)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"{name}: buckets must be distinct and ascending")
        self.buckets = (*buckets, math.inf) if buckets[-1] != math.inf else tuple(buckets)
        self.rows: dict[Labels, list[float]] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        row = self.rows.get(labels)
        if row is None:
            row = self.rows[labels] = [0.0] * (len(self.buckets) + 1)
        row[-1] += value
        if value == value:  # NaN is in no bucket (and so not in the count), as prometheus_client
            # A bucket counts the values up to and including its bound (Prometheus's ``le``).
            row[bisect.bisect_left(self.buckets, value)] += 1

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, row in list(self.rows.items()):
            cumulative, total = [], 0.0
            for bound, count in zip(self.buckets, row, strict=False):  # the row's last: the sum
                total += count
                cumulative.append((_bound(bound), total))
            family.add_metric(self._checked(labels), cumulative, row[-1])
        return family


def _bound(bound: float) -> str:
    # The text prometheus_client writes for its own buckets: "0.5", "1.0", "+Inf".
    return "+Inf" if bound == math.inf else repr(float(bound))


class Families(Collector):
    """A registry collector over fmbot's families."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)

    def collect(self) -> Iterable[Metric]:
        for family in self.families:
            yield family.collect()
