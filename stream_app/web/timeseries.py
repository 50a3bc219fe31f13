"""Recent history of the worker's metrics for the ops dashboard.

Prometheus keeps history when there is one; the dashboard served by the worker itself must
not need it. :class:`Sampler` reads the worker's registry every ``interval_s`` (counters become
rates, gauges are kept as they are, histograms become a p99 over the last minute) into ring
buffers bounded by ``window_s``, and :meth:`Sampler.snapshot` returns the JSON document that
``/dashboard/data`` serves. No I/O and an injected clock: the same code runs in tests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from ..metrics import (
    BATCH_SECONDS,
    BROKER_STALLED,
    CONSUMER_LAG,
    DEAD_LETTERS,
    DUPLICATES_DROPPED,
    EVENT_TIME_TO_CHANGE,
    EVENTS_IN,
    INGEST_TO_CHANGE,
    MESSAGES_CONSUMED,
    MODEL_AGE,
    MODEL_VERSION,
    SEGMENT_CHANGES,
    SEGMENT_SIZE,
)

Point = tuple[float, float | None]

# series name -> (counter family, factor): the rate per second times the factor.
RATES: dict[str, tuple[str, float]] = {
    "events_per_s": (EVENTS_IN, 1.0),
    "messages_per_s": (MESSAGES_CONSUMED, 1.0),
    "dead_letters_per_s": (DEAD_LETTERS, 1.0),
    "duplicates_per_s": (DUPLICATES_DROPPED, 1.0),
    "changes_per_min": (SEGMENT_CHANGES, 60.0),
}
# series name -> gauge family, summed over its labels.
GAUGES: dict[str, str] = {
    "lag_total": CONSUMER_LAG,
    "broker_stalled": BROKER_STALLED,
}
# series name -> histogram family: its 99th percentile over the quantile window.
QUANTILES: dict[str, str] = {
    "p99_latency_s": INGEST_TO_CHANGE,
    "p99_event_latency_s": EVENT_TIME_TO_CHANGE,
    "p99_batch_s": BATCH_SECONDS,
}
SERIES = (*RATES, *GAUGES, *QUANTILES)
TOTALS: dict[str, str] = {
    "events": EVENTS_IN,
    "messages": MESSAGES_CONSUMED,
    "dead_letters": DEAD_LETTERS,
    "duplicates": DUPLICATES_DROPPED,
    "changes": SEGMENT_CHANGES,
}

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending


@dataclass(slots=True)
class _Reading:
    """What one pass over the registry found."""

    totals: dict[str, float] = field(default_factory=dict)  # counter family -> sum
    gauges: dict[str, float] = field(default_factory=dict)  # gauge family -> sum
    dead_by_reason: dict[str, float] = field(default_factory=dict)
    sizes: dict[tuple[str, str], float] = field(default_factory=dict)
    buckets: dict[str, Buckets] = field(default_factory=dict)  # histogram family -> buckets


def _read(registry: CollectorRegistry) -> _Reading:
    reading = _Reading()
    histograms: dict[str, dict[float, float]] = {}
    quantile_families = set(QUANTILES.values())
    for family in registry.collect():
        name = family.name
        for sample in family.samples:
            if family.type == "counter" and sample.name == f"{name}_total":
                reading.totals[name] = reading.totals.get(name, 0.0) + sample.value
                if name == DEAD_LETTERS:
                    reading.dead_by_reason[sample.labels["reason"]] = sample.value
            elif family.type == "gauge":
                reading.gauges[name] = reading.gauges.get(name, 0.0) + sample.value
                if name == SEGMENT_SIZE:
                    key = (sample.labels["segmentation"], sample.labels["segment"])
                    reading.sizes[key] = sample.value
            elif name in quantile_families and sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                per_bound = histograms.setdefault(name, {})
                per_bound[bound] = per_bound.get(bound, 0.0) + sample.value
    reading.buckets = {name: tuple(sorted(b.items())) for name, b in histograms.items()}
    return reading


def quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket.

    ``None`` without observations; the highest finite bound when the rank falls in +Inf.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta(now: Buckets, then: Buckets | None) -> Buckets:
    if then is None:
        return now
    earlier = dict(then)
    return tuple((bound, max(0.0, count - earlier.get(bound, 0.0))) for bound, count in now)


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 4)


def _points(ring: Iterable[Point], since: float | None) -> list[list[float | None]]:
    return [[t, v] for t, v in ring if since is None or t > since]


class Sampler:
    """Samples a metrics registry into bounded ring buffers; see the module docstring.

    Call :meth:`sample` every ``interval_s`` seconds (a worker timer) and serve
    :meth:`snapshot`. ``clock`` returns epoch seconds.
    """

    def __init__(self, registry: CollectorRegistry, *, interval_s: float = 2.0,
                 window_s: float = 1800.0, quantile_window_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if interval_s <= 0 or window_s < interval_s or quantile_window_s < interval_s:
            raise ValueError("need 0 < interval_s <= window_s and interval_s <= "
                             "quantile_window_s")
        self.registry = registry
        self.interval_s = interval_s
        self.window_s = window_s
        self.quantile_window_s = quantile_window_s
        self._clock = clock
        # A memory bound only: points are pruned by age, this caps a burst of early samples.
        self._maxlen = 2 * math.ceil(window_s / interval_s) + 1
        self._series: dict[str, deque[Point]] = {name: self._ring() for name in SERIES}
        self._dead_by_reason: dict[str, deque[Point]] = {}
        self._sizes: dict[str, dict[str, deque[Point]]] = {}
        self._histories: deque[tuple[float, dict[str, Buckets]]] = deque()
        self._last: tuple[float, _Reading] | None = None

    def _ring(self) -> deque[Point]:
        return deque(maxlen=self._maxlen)

    def sample(self) -> None:
        """Read the registry once and append a point to every series."""
        now = round(self._clock(), 3)
        if self._last is not None and now <= self._last[0]:
            return  # the clock has not moved on: nothing new to say
        reading = _read(self.registry)
        if self._last is not None:
            elapsed = now - self._last[0]
            before = self._last[1]
            for series, (family, factor) in RATES.items():
                rate = _rate(reading.totals.get(family, 0.0), before.totals.get(family, 0.0),
                             elapsed)
                self._series[series].append((now, _clean(factor * rate)))
            for reason, total in reading.dead_by_reason.items():
                rate = _rate(total, before.dead_by_reason.get(reason, 0.0), elapsed)
                self._dead_by_reason.setdefault(reason, self._ring()).append((now, _clean(rate)))
        for series, family in GAUGES.items():
            self._series[series].append((now, _clean(reading.gauges.get(family, 0.0))))
        self._histories.append((now, reading.buckets))
        while len(self._histories) > 1 and self._histories[0][0] < now - self.quantile_window_s:
            self._histories.popleft()
        oldest = self._histories[0][1] if len(self._histories) > 1 else None
        for series, family in QUANTILES.items():
            buckets = reading.buckets.get(family, ())
            then = oldest.get(family) if oldest is not None else None
            self._series[series].append((now, _clean(quantile(0.99, _delta(buckets, then)))))
        for (segmentation, segment), size in reading.sizes.items():
            self._sizes.setdefault(segmentation, {}).setdefault(segment, self._ring()).append(
                (now, _clean(size)))
        self._prune(now)
        self._last = (now, reading)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        rings = [*self._series.values(), *self._dead_by_reason.values()]
        rings += [ring for segments in self._sizes.values() for ring in segments.values()]
        for ring in rings:
            while ring and ring[0][0] < horizon:
                ring.popleft()
        self._sizes = {
            segmentation: kept
            for segmentation, segments in self._sizes.items()
            if (kept := {segment: ring for segment, ring in segments.items() if ring})
        }

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """The dashboard document; with ``since``, only points sampled after it.

        ``sampled_at`` is the time of the latest sample: the client passes it back as
        ``since`` to fetch only what is new.
        """
        sampled_at = self._last[0] if self._last is not None else None
        reading = self._last[1] if self._last is not None else _Reading()
        version = reading.gauges.get(MODEL_VERSION, 0.0)
        return {
            "now": self._clock(),
            "sampled_at": sampled_at,
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "series": {name: _points(ring, since) for name, ring in self._series.items()},
            # Only reasons seen in the window: the chart stacks what happened, not the vocabulary.
            "dead_letters_by_reason": {
                reason: _points(ring, since) for reason, ring in self._dead_by_reason.items()
                if any(v for _, v in ring)},
            "segment_sizes": {
                segmentation: {segment: _points(ring, since)
                               for segment, ring in sorted(segs.items())}
                for segmentation, segs in sorted(self._sizes.items())},
            "model": {
                "version": int(version) if version > 0 else None,
                "age_s": _clean(reading.gauges.get(MODEL_AGE)),
            },
            "totals": {name: reading.totals.get(family, 0.0) for name, family in TOTALS.items()},
        }


def _rate(current: float, previous: float, elapsed: float) -> float:
    # A counter that went down was reset: what it counts now all happened since.
    return (current - previous if current >= previous else current) / elapsed
