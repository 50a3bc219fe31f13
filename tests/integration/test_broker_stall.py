"""A stalled broker: SIGSTOP for 30 s while events stream in, then SIGCONT.

The worker is not restarted: it must report the stall on /health while it lasts (its clients
just wait and retry, so nothing else would show it), then carry on by itself, and lose
nothing: every event sent before, during and after the stall applied exactly once, and their
segment changes emitted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaProducer

from .conftest import read_topic, wait_for
from .equivalence import final_states

pytestmark = pytest.mark.integration

STALL_S = 30.0
CUSTOMERS = [f"st-{i:02d}" for i in range(30)]


def orders(phase: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        cid = CUSTOMERS[i % len(CUSTOMERS)]
        out.append((cid.encode(), orjson.dumps({
            "type": "track", "event": "Order Completed", "userId": cid,
            "messageId": f"{phase}-{i}", "timestamp": f"2026-10-{1 + i // 60 % 28:02d}T12:00:00Z",
            "properties": {"total": 80.0, "currency": "EUR"}})))
    return out


def health(worker: Any) -> dict[str, Any] | None:
    try:
        return httpx.get(worker.base_url + "/health", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return None


@pytest.mark.slow(40)
def test_a_stalled_broker_is_reported_and_survived(broker, worker_factory):
    worker = worker_factory(clustering="false", tick_interval_s="3600").start()
    # Long client timeouts: the test's own producer waits out the stall like the worker does.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             request_timeout_ms=90_000, max_block_ms=90_000)
    before, during, after = orders("before", 300), orders("during", 150), orders("after", 150)
    for key, value in before:
        producer.send("customer-interactions", key=key, value=value)
    producer.flush()
    wait_for(lambda: worker.get("/health").json()["stats"].get("applied") == len(before),
             what="the first events applied")

    broker.pause()
    paused_at = time.monotonic()
    # Events sent during the stall wait in the client until the broker answers again.
    sender = threading.Thread(target=lambda: [producer.send("customer-interactions", key=k,
                                                            value=v) for k, v in during])
    sender.start()
    reports: list[tuple[float, dict[str, Any]]] = []
    metric_while_stalled = None
    while time.monotonic() - paused_at < STALL_S:
        doc = health(worker)
        if doc is not None:
            reports.append((time.monotonic() - paused_at, doc["broker"]))
            if doc["broker"]["stalled"] and metric_while_stalled is None:
                metric_while_stalled = "segmenter_broker_stalled 1.0" in worker.get(
                    "/metrics").text
        time.sleep(1.0)
    broker.resume()
    resumed_at = time.monotonic()
    sender.join(60)
    producer.flush(90)

    assert worker.proc.poll() is None, worker.tail()
    stalled = [(t, r) for t, r in reports if r["stalled"]]
    assert stalled, f"/health never reported the stall: {reports[-3:]}"
    first = stalled[0][0]
    assert first < 8, f"stall reported only after {first:.1f}s"
    # ... and kept reporting it, with its start and duration, until the broker came back
    assert all(r["stalled"] for t, r in reports if t >= first), reports
    assert metric_while_stalled, "segmenter_broker_stalled was not 1 during the stall"
    last = stalled[-1][1]
    assert last["since"] and last["stalled_for_s"] >= STALL_S - 10 and last["last_error"]

    for key, value in after:
        producer.send("customer-interactions", key=key, value=value)
    producer.flush()
    producer.close()
    total = len(before) + len(during) + len(after)
    wait_for(lambda: (h := health(worker)) and h["stats"].get("applied") == total,
             timeout=120, interval=1, what="every event applied after the stall")
    recovered_s = time.monotonic() - resumed_at
    doc = wait_for(lambda: (h := health(worker)) and not h["broker"]["stalled"] and h,
                   what="the stall cleared on /health")
    assert doc["broker"]["stalls"] >= 1 and doc["stats"].get("duplicates", 0) == 0

    states = final_states(broker, worker.env["SEGMENTER_APP_ID"])
    assert {cid: s["events"] for cid, s in states.items()} == {cid: total // len(CUSTOMERS)
                                                               for cid in CUSTOMERS}
    changes = [orjson.loads(r.value) for r in read_topic(broker, "segment-changes", expect=1)]
    rfm = {c["customer_id"]: c["segment"] for c in changes if c["segmentation"] == "rfm"}
    assert rfm == {cid: "champions" for cid in CUSTOMERS}  # 20 orders of 80 each, recent
    metrics = worker.get("/metrics").text
    assert "segmenter_broker_stalled 0.0" in metrics
    print(f"\nstall reported after {first:.1f}s; all {total} events applied "
          f"{recovered_s:.1f}s after the broker resumed")
