"""Kafka over TLS, end to end: a worker with SEGMENTER_SECURITY_PROTOCOL=SSL does everything
(topic creation, consuming, producing, table changelogs, the broker watch) through TLS.

Tansu 0.6 cannot serve TLS itself, so a TLS-terminating proxy (:class:`tls.TlsProxy`) stands
in front of it and the broker advertises the proxy's address: clients reach the broker only
through TLS, verified against a self-signed CA made for the test. SASL: see test_sasl.py.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_app.host.broker import EmbeddedBroker, free_port

from .conftest import kafka_request_answered, wait_for
from .tls import TlsProxy, self_signed

pytestmark = pytest.mark.integration


@dataclass
class TlsBroker:
    inner: EmbeddedBroker
    proxy: TlsProxy
    cafile: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def client_config(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "SSL",
                "ssl_context": ssl.create_default_context(cafile=str(self.cafile))}


def api_versions_answered(host: str, port: int) -> bool:
    """Does a plaintext Kafka ApiVersions request get an answer?"""
    return kafka_request_answered(host, port, 18)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """Overrides conftest's broker: worker_factory then points workers at the TLS proxy."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    port = free_port()
    with EmbeddedBroker(log_path=tmp_path / "broker.log", advertised=f"127.0.0.1:{port}") as b, \
            TlsProxy(cert, key, (b.host, b.port), port) as proxy:
        yield TlsBroker(b, proxy, cert)


def test_a_worker_talks_to_kafka_only_over_tls(broker: TlsBroker, worker_factory: Any) -> None:
    # A plaintext client cannot talk to the TLS listener.
    assert api_versions_answered(broker.inner.host, broker.inner.port)  # the broker behind
    assert not api_versions_answered("127.0.0.1", broker.proxy.port)

    worker = worker_factory(security_protocol="SSL", ssl_cafile=str(broker.cafile)).start()
    handshakes = broker.proxy.handshakes
    producer = KafkaProducer(**broker.client_config(), linger_ms=5)
    for i in range(20):
        producer.send("customer-interactions", key=b"tls-user", value=orjson.dumps({
            "type": "track", "event": "Order Completed", "userId": "tls-user",
            "messageId": f"tls-{i}", "timestamp": f"2026-10-01T12:{i:02d}:00Z",
            "properties": {"total": 50.0, "currency": "EUR"}}))
    producer.send("customer-interactions", key=b"junk", value=b"{not json")
    producer.flush()
    producer.close()

    doc = wait_for(lambda: (r := worker.get("/customers/tls-user")).status_code == 200
                   and r.json()["features"]["orders"] == 20 and r.json(), what="20 orders")
    assert doc["segments"]["rfm"]["segment"] == "champions"

    consumer = KafkaConsumer(**broker.client_config(), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        def records(topic: str) -> list[Any]:
            parts = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in parts])
            consumer.seek_to_beginning()
            got = consumer.poll(timeout_ms=3000)
            return [r for rs in got.values() for r in rs]

        changes = wait_for(lambda: records("segment-changes"), what="segment changes over TLS")
        assert {orjson.loads(r.value)["customer_id"] for r in changes} == {"tls-user"}
        dead = wait_for(lambda: records("customer-interactions-dlq"), what="dead letter")
        assert dict(dead[0].headers)["segmenter.dlq.reason"] == b"not_json"
    finally:
        consumer.close()

    # the broker watch (its own aiokafka client) gets answers over TLS too
    health = wait_for(lambda: (h := worker.get("/health").json())["broker"]["last_ok"] and h,
                      timeout=20, what="a broker-watch probe answered")
    assert health["broker"]["stalled"] is False
    assert broker.proxy.handshakes > handshakes  # the worker's clients connected through TLS
