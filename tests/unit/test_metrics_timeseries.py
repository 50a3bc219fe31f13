"""Metric helpers of the worker and the dashboard sampler over a real registry."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from stream_app.core.events.interaction import KINDS
from stream_app.core.events.parse import REASONS
from stream_app.metrics import (
    CONSUMER_LAG,
    MAX_SEGMENTS_PER_SEGMENTATION,
    SEGMENT_SIZE,
    Metrics,
)
from stream_app.web.timeseries import Sampler, quantile


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Metrics:
    return Metrics(clock=clock)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --- metrics ---------------------------------------------------------------------------------
def test_every_kind_and_reason_is_exported_from_the_start(metrics: Metrics) -> None:
    for kind in KINDS:
        assert value(metrics, "segmenter_events_in_total", kind=kind) == 0
    for reason in REASONS:
        assert value(metrics, "segmenter_dead_letters_total", reason=reason) == 0


def test_batch_counts_fold_unknown_labels_into_other(metrics: Metrics) -> None:
    metrics.count_events(["order", "page_view", "made-up"])
    metrics.count_events({"order": 1})
    metrics.count_dead_letters(["not_json", "cosmic_ray", "cosmic_ray"])
    metrics.count_duplicates(3)
    metrics.count_duplicates(0)
    metrics.observe_batch(4, 0.02)

    assert value(metrics, "segmenter_events_in_total", kind="order") == 2
    assert value(metrics, "segmenter_events_in_total", kind="page_view") == 1
    assert value(metrics, "segmenter_events_in_total", kind="other") == 1
    assert value(metrics, "segmenter_events_in_total", kind="made-up") is None
    assert value(metrics, "segmenter_dead_letters_total", reason="not_json") == 1
    assert value(metrics, "segmenter_dead_letters_total", reason="other") == 2
    assert value(metrics, "segmenter_duplicates_dropped_total") == 3
    assert value(metrics, "segmenter_messages_consumed_total") == 4
    assert value(metrics, "segmenter_batch_size_count") == 1
    assert value(metrics, "segmenter_batch_processing_seconds_sum") == pytest.approx(0.02)


def test_changes_count_per_segmentation_and_observe_both_latencies(metrics: Metrics) -> None:
    now = 1000.0
    metrics.record_changes([("behavior", now - 0.2, now - 50.0), ("behavior", now + 3.0, now),
                            ("value_tier", now - 1.0, now - 7200.0)], now=now)

    assert value(metrics, "segmenter_segment_changes_total", segmentation="behavior") == 2
    assert value(metrics, "segmenter_segment_changes_total", segmentation="value_tier") == 1
    ingest = "segmenter_ingest_to_segment_change_seconds"
    assert value(metrics, f"{ingest}_count") == 3
    # A record stamped in the future (clock skew) counts as no delay, not a negative one.
    assert value(metrics, f"{ingest}_sum") == pytest.approx(1.2)
    assert value(metrics, f"{ingest}_bucket", le="0.005") == 1
    event = "segmenter_event_time_to_segment_change_seconds"
    assert value(metrics, f"{event}_sum") == pytest.approx(7250.0)
    assert value(metrics, f"{event}_bucket", le="3600.0") == 2


def test_lag_keeps_only_partitions_assigned_now(metrics: Metrics) -> None:
    metrics.set_consumer_lag({("customer-interactions", 0): 5, ("customer-interactions", 1): 7})
    metrics.set_consumer_lag({("customer-interactions", 1): 2})

    assert value(metrics, CONSUMER_LAG, topic="customer-interactions", partition="0") is None
    assert value(metrics, CONSUMER_LAG, topic="customer-interactions", partition="1") == 2


def test_segment_sizes_are_replaced_and_capped(metrics: Metrics) -> None:
    metrics.set_segment_sizes({"behavior": {"c0": 3, "c1": 4}, "rules": {"vip": 1}})
    many = {f"s{i}": i + 1 for i in range(MAX_SEGMENTS_PER_SEGMENTATION + 5)}
    metrics.set_segment_sizes({"behavior": many})

    assert value(metrics, SEGMENT_SIZE, segmentation="rules", segment="vip") is None
    assert value(metrics, SEGMENT_SIZE, segmentation="behavior", segment="c0") is None
    # The five smallest segments (sizes 1..5) are summed into "other".
    assert value(metrics, SEGMENT_SIZE, segmentation="behavior", segment="other") == 15
    assert value(metrics, SEGMENT_SIZE, segmentation="behavior", segment="s0") is None
    top = MAX_SEGMENTS_PER_SEGMENTATION + 4
    assert value(metrics, SEGMENT_SIZE, segmentation="behavior", segment=f"s{top}") == top + 1
    sizes = [s for f in metrics.registry.collect() if f.name == SEGMENT_SIZE for s in f.samples]
    assert len(sizes) == MAX_SEGMENTS_PER_SEGMENTATION + 1


def test_model_gauges_and_broker_stall(metrics: Metrics, clock: Clock) -> None:
    assert value(metrics, "segmenter_model_version") == 0
    assert math.isnan(value(metrics, "segmenter_model_age_seconds") or 0.0)

    metrics.set_model(4, trained_at=clock.now - 90)
    clock.now += 10
    metrics.set_broker_stalled(True)

    assert value(metrics, "segmenter_model_version") == 4
    assert value(metrics, "segmenter_model_age_seconds") == 100
    assert value(metrics, "segmenter_broker_stalled") == 1
    metrics.set_broker_stalled(False)
    assert value(metrics, "segmenter_broker_stalled") == 0


def test_exposition_negotiates_the_format(metrics: Metrics) -> None:
    metrics.count_events(["order"])
    body, content_type = metrics.exposition(None)
    text = body.decode()

    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'segmenter_events_in_total{kind="order"} 1.0' in text
    assert "# TYPE segmenter_consumer_lag gauge" in text
    assert "_created" not in text

    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


# --- sampler ---------------------------------------------------------------------------------
def series(doc: dict, name: str) -> list[list[float]]:
    return doc["series"][name]


def test_counters_become_rates_and_gauges_stay_values(metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, interval_s=2.0, clock=clock)
    sampler.sample()
    first = sampler.snapshot()
    assert series(first, "events_per_s") == []  # a rate needs two samples
    assert series(first, "lag_total") == [[clock.now, 0.0]]

    metrics.count_events(["order"] * 10)
    metrics.record_changes([("behavior", clock.now, clock.now)] * 4, now=clock.now)
    metrics.set_consumer_lag({("t", 0): 3, ("t", 1): 4})
    clock.now += 2.0
    sampler.sample()
    doc = sampler.snapshot()

    assert series(doc, "events_per_s") == [[clock.now, 5.0]]
    assert series(doc, "changes_per_min") == [[clock.now, 120.0]]
    assert series(doc, "lag_total")[-1] == [clock.now, 7.0]
    assert doc["totals"]["events"] == 10
    assert doc["sampled_at"] == clock.now
    json.dumps(doc, allow_nan=False)


class _Resettable(Collector):
    """A counter whose process restarted: its total goes down."""

    def __init__(self) -> None:
        self.total = 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("segmenter_events_in", "events", value=self.total)


def test_a_counter_reset_counts_from_zero(clock: Clock) -> None:
    registry = CollectorRegistry()
    counter = _Resettable()
    registry.register(counter)
    sampler = Sampler(registry, interval_s=1.0, clock=clock)
    counter.total = 100
    sampler.sample()
    counter.total = 6
    clock.now += 2.0
    sampler.sample()

    assert series(sampler.snapshot(), "events_per_s") == [[clock.now, 3.0]]


@pytest.mark.parametrize(("buckets", "expected"), [
    (((0.1, 50.0), (0.5, 100.0), (math.inf, 100.0)), 0.1 + 0.4 * 49 / 50),
    (((0.1, 0.0), (0.5, 0.0), (math.inf, 10.0)), 0.5),  # beyond the last bound
    (((0.1, 0.0), (math.inf, 0.0)), None),  # no observations
    ((), None),
])
def test_quantile_follows_prometheus(buckets: tuple, expected: float | None) -> None:
    result = quantile(0.99, buckets)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_p99_covers_only_the_quantile_window(metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, interval_s=2.0, quantile_window_s=10.0, clock=clock)
    sampler.sample()
    metrics.record_changes([("behavior", clock.now - 2.0, clock.now - 2.0)] * 100, now=clock.now)
    clock.now += 2.0
    sampler.sample()
    assert series(sampler.snapshot(), "p99_latency_s")[-1][1] == pytest.approx(1.0 + 1.5 * 0.99)

    for _ in range(6):  # 12 s without changes: the slow ones leave the window
        clock.now += 2.0
        sampler.sample()
    assert series(sampler.snapshot(), "p99_latency_s")[-1] == [clock.now, None]


def test_window_bounds_history_and_since_gives_only_new_points(
        metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, interval_s=2.0, window_s=20.0, clock=clock)
    metrics.set_segment_sizes({"behavior": {"c0": 1, "c1": 2}})
    for _ in range(5):
        sampler.sample()
        clock.now += 2.0
    metrics.set_segment_sizes({"behavior": {"c1": 5}})
    for _ in range(20):
        sampler.sample()
        clock.now += 2.0

    doc = sampler.snapshot()
    lags = series(doc, "lag_total")
    assert len(lags) == 11  # 20 s window sampled every 2 s, both ends included
    assert lags[0][0] >= doc["sampled_at"] - 20.0
    assert list(doc["segment_sizes"]["behavior"]) == ["c1"]  # c0 left more than a window ago

    newer = sampler.snapshot(since=lags[-3][0])
    assert [t for t, _ in series(newer, "lag_total")] == [lags[-2][0], lags[-1][0]]
    assert newer["segment_sizes"]["behavior"]["c1"] == [[lags[-2][0], 5.0], [lags[-1][0], 5.0]]


def test_dead_letters_by_reason_lists_reasons_seen_in_the_window(
        metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, interval_s=2.0, window_s=10.0, clock=clock)
    sampler.sample()
    metrics.count_dead_letters(["not_json"] * 4)
    clock.now += 2.0
    sampler.sample()
    assert sampler.snapshot()["dead_letters_by_reason"] == {"not_json": [[clock.now, 2.0]]}

    for _ in range(6):
        clock.now += 2.0
        sampler.sample()
    assert sampler.snapshot()["dead_letters_by_reason"] == {}


def test_model_in_the_document(metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, clock=clock)
    sampler.sample()
    assert sampler.snapshot()["model"] == {"version": None, "age_s": None}

    metrics.set_model(2, trained_at=clock.now - 28)
    clock.now += 2.0
    sampler.sample()
    assert sampler.snapshot()["model"] == {"version": 2, "age_s": 30.0}


def test_a_sample_at_an_unchanged_time_is_skipped(metrics: Metrics, clock: Clock) -> None:
    sampler = Sampler(metrics.registry, clock=clock)
    sampler.sample()
    metrics.set_consumer_lag({("t", 0): 9})
    sampler.sample()
    assert series(sampler.snapshot(), "lag_total") == [[clock.now, 0.0]]


def test_snapshot_before_any_sample(metrics: Metrics, clock: Clock) -> None:
    doc = Sampler(metrics.registry, clock=clock).snapshot()
    assert doc["sampled_at"] is None
    assert all(points == [] for points in doc["series"].values())
    assert doc["segment_sizes"] == {}


@pytest.mark.parametrize("kwargs", [{"interval_s": 0}, {"window_s": 1.0}, {"quantile_window_s": 1.0}])
def test_sampler_rejects_inconsistent_intervals(metrics: Metrics, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Sampler(metrics.registry, **kwargs)
