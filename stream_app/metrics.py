"""Prometheus metrics of one worker, in one registry served at ``/metrics``.

The worker calls the ``Metrics`` helpers once per batch with what the batch produced, so the
hot path pays a few dictionary operations per batch, not per event. Labels stay bounded:
event kinds and dead-letter reasons come from fixed vocabularies (anything else is counted
as ``other``), segments are segment ids capped per segmentation, partitions are partitions.
Customer ids never become labels.

Sizes, lag and changes are per worker; ``sum by (...)`` across workers gives the cluster.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import choose_encoder

from .core.events.interaction import KINDS
from .core.events.parse import REASONS

if TYPE_CHECKING:
    from .core.processing import StepResult

# Family names: the dashboard sampler, Grafana and the docs read these.
EVENTS_IN = "segmenter_events_in"
DEAD_LETTERS = "segmenter_dead_letters"
MESSAGES_CONSUMED = "segmenter_messages_consumed"
DUPLICATES_DROPPED = "segmenter_duplicates_dropped"
SEGMENT_CHANGES = "segmenter_segment_changes"
INGEST_TO_CHANGE = "segmenter_ingest_to_segment_change_seconds"
EVENT_TIME_TO_CHANGE = "segmenter_event_time_to_segment_change_seconds"
CONSUMER_LAG = "segmenter_consumer_lag"
SEGMENT_SIZE = "segmenter_segment_size"
MODEL_VERSION = "segmenter_model_version"
MODEL_AGE = "segmenter_model_age_seconds"
BATCH_SIZE = "segmenter_batch_size"
BATCH_SECONDS = "segmenter_batch_processing_seconds"
BROKER_STALLED = "segmenter_broker_stalled"
DEFINITIONS_VERSION = "segmenter_definitions_version"
DEFINITIONS_REJECTED = "segmenter_definitions_rejected"
BACKFILL_CUSTOMERS = "segmenter_backfill_customers"
BACKFILL_SECONDS = "segmenter_backfill_seconds"

OTHER = "other"
MAX_SEGMENTS_PER_SEGMENTATION = 100

# The *_created series double the exposition and nothing reads them (process-wide switch).
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0)
# Event time can lag far behind (offline devices, replays of history): buckets reach a week.
_EVENT_TIME_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                       6 * 3600.0, 86400.0, 7 * 86400.0)
_BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000)
_BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0)


class Metrics:
    """Every metric family of the worker, registered in :attr:`registry`.

    ``clock`` (epoch seconds) only drives the model-age gauge; tests inject their own.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        # the totals /health shows ("stats"), counted in the same calls as the families
        self.totals: Counter[str] = Counter()
        self._clock = clock
        self._kinds = frozenset(KINDS)
        self._reasons = frozenset(REASONS)

        self.events_in = PromCounter(
            EVENTS_IN, "Valid events consumed, by interaction kind", ["kind"], registry=reg)
        self.dead_letters = PromCounter(
            DEAD_LETTERS, "Rejected events sent to the dead-letter topic, by reason",
            ["reason"], registry=reg)
        self.messages_consumed = PromCounter(
            MESSAGES_CONSUMED, "Kafka messages consumed from the input topic (a batch "
            "envelope is one message)", registry=reg)
        self.duplicates_dropped = PromCounter(
            DUPLICATES_DROPPED, "Redelivered events dropped by messageId", registry=reg)
        self.segment_changes = PromCounter(
            SEGMENT_CHANGES, "Segment changes published, by segmentation", ["segmentation"],
            registry=reg)
        self.ingest_to_change = Histogram(
            INGEST_TO_CHANGE, "Seconds from the Kafka record timestamp of the causing event "
            "to publishing the segment change", buckets=_LATENCY_BUCKETS, registry=reg)
        self.event_time_to_change = Histogram(
            EVENT_TIME_TO_CHANGE, "Seconds from the event time of the causing event to "
            "publishing the segment change", buckets=_EVENT_TIME_BUCKETS, registry=reg)
        self.consumer_lag = Gauge(
            CONSUMER_LAG, "Messages between the committed position and the end of each "
            "assigned partition", ["topic", "partition"], registry=reg)
        self.segment_size = Gauge(
            SEGMENT_SIZE, "Customers currently in each segment (customers owned by this "
            "worker)", ["segmentation", "segment"], registry=reg)
        self.model_version = Gauge(
            MODEL_VERSION, "Version of the clustering model in use (0: none yet)", registry=reg)
        self.model_age = Gauge(
            MODEL_AGE, "Seconds since the clustering model in use was trained (NaN: none yet)",
            registry=reg)
        self.batch_size = Histogram(
            BATCH_SIZE, "Messages per processed batch", buckets=_BATCH_SIZE_BUCKETS,
            registry=reg)
        self.batch_seconds = Histogram(
            BATCH_SECONDS, "Seconds to process one batch", buckets=_BATCH_SECONDS_BUCKETS,
            registry=reg)
        self.broker_stalled = Gauge(
            BROKER_STALLED, "1 while the worker cannot reach the broker, else 0", registry=reg)
        self.definitions_version = Gauge(
            DEFINITIONS_VERSION, "Version (content hash) of the rule definitions in force",
            registry=reg)
        self.definitions_rejected = PromCounter(
            DEFINITIONS_REJECTED, "New rule definitions refused as invalid, by where they "
            "came from (api: PUT /admin/segmentations, file, topic)", ["source"], registry=reg)
        self.backfill_customers = PromCounter(
            BACKFILL_CUSTOMERS, "Stored customers re-evaluated under new rule definitions",
            registry=reg)
        self.backfill_seconds = Gauge(
            BACKFILL_SECONDS, "Duration of the last backfill pass over this worker's "
            "customers", registry=reg)
        for source in ("api", "file", "topic"):
            self.definitions_rejected.labels(source)

        # Known label values start at zero so rate() and the dashboard see them from the start.
        for kind in (*KINDS, OTHER):
            self.events_in.labels(kind)
        for reason in (*REASONS, OTHER):
            self.dead_letters.labels(reason)
        self._trained_at: float | None = None
        self.model_age.set_function(self._model_age)
        self._lag_keys: set[tuple[str, str]] = set()
        self._size_keys: set[tuple[str, str]] = set()

    # --- per batch ----------------------------------------------------------------------------
    def account(self, result: StepResult, *, now: float) -> None:
        """One pipeline call's result: events, dead letters, duplicates, changes, routed."""
        t = self.totals
        t["applied"] += result.applied
        t["duplicates"] += result.duplicates
        t["dead_letters"] += len(result.dead_letters)
        t["changes"] += len(result.changes)
        t["routed"] += len(result.routed)
        if result.events_by_kind:
            self.count_events(result.events_by_kind)
        if result.dead_letters:
            self.count_dead_letters(rej.reason for _, rej in result.dead_letters)
        if result.duplicates:
            self.count_duplicates(result.duplicates)
        if result.changes:
            self.record_changes(((c.record.segmentation, c.ingest_ts, c.event_ts)
                                 for c in result.changes), now=now)

    def observe_batch(self, messages: int, seconds: float) -> None:
        """One processed batch of ``messages`` Kafka messages that took ``seconds``."""
        self.totals["messages"] += messages
        self.messages_consumed.inc(messages)
        self.batch_size.observe(messages)
        self.batch_seconds.observe(seconds)

    def count_events(self, kinds: Iterable[str] | Mapping[str, int]) -> None:
        """A batch's valid events: their kinds (``i.kind for i in good``) or counts by kind."""
        for kind, n in Counter(kinds).items():
            self.events_in.labels(kind if kind in self._kinds else OTHER).inc(n)

    def count_dead_letters(self, reasons: Iterable[str] | Mapping[str, int]) -> None:
        """The rejections of a batch: their reason codes, or counts by reason."""
        for reason, n in Counter(reasons).items():
            self.dead_letters.labels(reason if reason in self._reasons else OTHER).inc(n)

    def count_duplicates(self, n: int) -> None:
        if n:
            self.duplicates_dropped.inc(n)

    def record_changes(self, changes: Iterable[tuple[str, float, float]], *,
                       now: float) -> None:
        """Published changes as ``(segmentation, record_ts, event_ts)``, epoch seconds.

        ``record_ts`` is the Kafka timestamp of the record that caused the change and
        ``event_ts`` its event time; ``now`` is when the changes were published.
        """
        per_segmentation: Counter[str] = Counter()
        for segmentation, record_ts, event_ts in changes:
            per_segmentation[segmentation] += 1
            # Clocks of producers and workers differ: a change is never observed before 0.
            self.ingest_to_change.observe(max(0.0, now - record_ts))
            self.event_time_to_change.observe(max(0.0, now - event_ts))
        for segmentation, n in per_segmentation.items():
            self.segment_changes.labels(segmentation).inc(n)

    # --- periodic state -----------------------------------------------------------------------
    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Lag of every partition this worker owns now; partitions not given are removed."""
        keys = {(topic, str(partition)): lag for (topic, partition), lag in lags.items()}
        for key in self._lag_keys - keys.keys():
            self.consumer_lag.remove(*key)
        for key, lag in keys.items():
            self.consumer_lag.labels(*key).set(lag)
        self._lag_keys = set(keys)

    def set_segment_sizes(self, sizes: Mapping[str, Mapping[str, int]]) -> None:
        """Customers per segment, ``{segmentation: {segment_id: count}}``; replaces the last.

        Beyond :data:`MAX_SEGMENTS_PER_SEGMENTATION` segments the smallest are summed into
        ``other``, so a misconfigured segmentation cannot flood the metrics.
        """
        current: dict[tuple[str, str], int] = {}
        for segmentation, segments in sizes.items():
            ranked = sorted(segments.items(), key=lambda item: item[1], reverse=True)
            for segment, count in ranked[:MAX_SEGMENTS_PER_SEGMENTATION]:
                current[(segmentation, segment)] = count
            rest = ranked[MAX_SEGMENTS_PER_SEGMENTATION:]
            if rest:
                current[(segmentation, OTHER)] = (
                    current.get((segmentation, OTHER), 0) + sum(n for _, n in rest))
        for key in self._size_keys - current.keys():
            self.segment_size.remove(*key)
        for key, count in current.items():
            self.segment_size.labels(*key).set(count)
        self._size_keys = set(current)

    def set_model(self, version: int, trained_at: float) -> None:
        """The clustering model now in use and when it was trained (epoch seconds)."""
        self.model_version.set(version)
        self._trained_at = trained_at

    def set_broker_stalled(self, stalled: bool) -> None:
        self.broker_stalled.set(1 if stalled else 0)

    # --- exposition ---------------------------------------------------------------------------
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The ``/metrics`` response for a request's ``Accept`` header: body, Content-Type.

        Prometheus text by default, OpenMetrics when the scraper asks for it.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def _model_age(self) -> float:
        if self._trained_at is None:
            return math.nan
        return max(0.0, self._clock() - self._trained_at)
