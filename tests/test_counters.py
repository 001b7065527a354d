"""bot.observe.counters exports what prometheus_client's own metric objects would, sample for
sample, for the same counts: the exposition a scrape parses does not change with the counting."""

from __future__ import annotations

import math
import random

import prometheus_client as prom
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.observe import counters

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.fixture
def registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)


def test_counters_gauges_and_histograms_expose_as_prometheus_client_does(
    registries: tuple[CollectorRegistry, CollectorRegistry],
) -> None:
    theirs, ours = registries
    their_counter = prom.Counter("t_requests", "Requests.", ["model", "outcome"], registry=theirs)
    their_plain = prom.Counter("t_enqueued", "Jobs.", registry=theirs)
    their_gauge = prom.Gauge("t_pending", "Pending.", ["partition"], registry=theirs)
    their_hist = prom.Histogram("t_seconds", "Time.", ["channel"], buckets=BUCKETS, registry=theirs)
    counter = counters.Counter("t_requests", "Requests.", ["model", "outcome"])
    plain = counters.Counter("t_enqueued", "Jobs.")
    gauge = counters.Gauge("t_pending", "Pending.", ["partition"])
    hist = counters.Histogram("t_seconds", "Time.", ["channel"], BUCKETS)
    ours.register(counters.Families([counter, plain, gauge, hist]))
    assert samples(ours) == samples(theirs)  # the unlabelled counter is there at 0 in both

    rng = random.Random(7)
    # Values on the bucket bounds too: a bound's bucket counts it (``le``), both sides alike.
    values = [rng.choice([*BUCKETS, 0.0, 7.5, 100.0, -1.0, math.inf]) for _ in range(50)]
    values += [rng.uniform(0, 6) for _ in range(200)]
    for value in values:
        channel = rng.choice(["web", "telegram"])
        their_hist.labels(channel).observe(value)
        hist.observe(value, (channel,))
        model, outcome = rng.choice(["a", "b"]), rng.choice(["ok", "error"])
        amount = rng.choice([1, 3, 0.5])
        their_counter.labels(model, outcome).inc(amount)
        counter.inc((model, outcome), amount)
        their_plain.inc()
        plain.inc()
        partition = str(rng.randrange(4))
        their_gauge.labels(partition).set(value)
        gauge.set(value, (partition,))
    their_hist.labels("web").observe(math.nan)  # in the sum (NaN then) and in no bucket
    hist.observe(math.nan, ("web",))
    their_gauge.remove("2")
    gauge.remove(("2",))
    gauge.remove(("no such partition",))  # a partition never sampled: nothing to remove

    expected = samples(theirs)
    nan = ("t_seconds_sum", (("channel", "web"),))
    assert math.isnan(expected.pop(nan)) and math.isnan(samples(ours).pop(nan))
    assert {k: v for k, v in samples(ours).items() if k != nan} == expected
    assert expected[("t_seconds_count", (("channel", "web"),))] > 0
    assert ("t_pending", (("partition", "2"),)) not in expected


def test_histogram_buckets_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        counters.Histogram("t_bad", "Bad.", [], (1, 0.5))
    with pytest.raises(ValueError, match="ascending"):
        counters.Histogram("t_empty", "Empty.", [], ())


def test_a_series_with_the_wrong_labels_fails_the_scrape() -> None:
    registry = CollectorRegistry(auto_describe=True)
    counter = counters.Counter("t_turns", "Turns.", ["channel", "status"])
    registry.register(counters.Families([counter]))
    counter.inc(("web", "ok"))
    assert samples(registry) == {("t_turns_total", (("channel", "web"), ("status", "ok"))): 1.0}
    counter.inc(("web",))  # a status forgotten
    with pytest.raises(ValueError, match=r"t_turns: labels \('web',\) for \('channel', 'status'\)"):
        generate_latest(registry)
