"""The collector's Prometheus metrics, served at ``/metrics``. Labels are bounded: routes
and status codes come from fixed sets, reason codes from the parser's vocabulary."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..core.events.parse import REASONS

REQUESTS = "segmenter_collector_requests"
EVENTS = "segmenter_collector_events"
REJECTED = "segmenter_collector_rejected_events"
REQUEST_SECONDS = "segmenter_collector_request_seconds"
KAFKA_AVAILABLE = "segmenter_collector_kafka_available"
BROKER_STALLED = "segmenter_broker_stalled"

OTHER = "other"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(REQUESTS, "Tracking API requests by route and HTTP status",
                                ["route", "status"], registry=r)
        self.events = Counter(EVENTS, "Events by outcome: accepted (in Kafka), rejected "
                              "(invalid), ignored (group calls)", ["outcome"], registry=r)
        self.rejected = Counter(REJECTED, "Invalid events by reason code", ["reason"],
                                registry=r)
        self.seconds = Histogram(REQUEST_SECONDS, "Request handling time, Kafka acks included",
                                 buckets=_BUCKETS, registry=r)
        self.available = Gauge(KAFKA_AVAILABLE, "1 while Kafka takes records, 0 while the "
                               "collector answers 503", registry=r)
        self.stalled = Gauge(BROKER_STALLED, "1 while the broker does not answer probes",
                             registry=r)
        self.available.set(1)

    def count_request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def count_events(self, accepted: int, rejected: list[str], ignored: int) -> None:
        if accepted:
            self.events.labels("accepted").inc(accepted)
        if ignored:
            self.events.labels("ignored").inc(ignored)
        if rejected:
            self.events.labels("rejected").inc(len(rejected))
            for reason in rejected:
                self.rejected.labels(reason if reason in REASONS else OTHER).inc()

    def set_broker_stalled(self, stalled: bool) -> None:  # called by health.BrokerWatch
        self.stalled.set(1 if stalled else 0)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
