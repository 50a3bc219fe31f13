"""Graceful shutdown: SIGTERM stops a busy worker within 10 s with its offsets committed and its
state flushed, so the next worker re-applies nothing: no redelivered message, no repeated
segment change, exact counts."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from .conftest import read_topic, wait_for
from .equivalence import final_states

pytestmark = pytest.mark.integration

CUSTOMERS = [f"sd-{i:02d}" for i in range(25)]


def send_orders(producer: KafkaProducer, phase: str, n: int, rate: float = 0.0) -> None:
    for i in range(n):
        if rate and i % 20 == 0:
            time.sleep(20 / rate)
        cid = CUSTOMERS[i % len(CUSTOMERS)]
        producer.send("customer-interactions", key=cid.encode(), value=orjson.dumps({
            "type": "track", "event": "Order Completed", "userId": cid,
            "messageId": f"{phase}-{i}", "timestamp": f"2026-10-{1 + i % 28:02d}T12:00:00Z",
            "properties": {"total": 30.0 + i % 7, "currency": "EUR"}}))
    producer.flush()


@pytest.mark.slow(25)
def test_sigterm_stops_within_10s_and_a_restart_reapplies_nothing(broker, worker_factory,
                                                                  producer):
    worker = worker_factory(tick_interval_s="3600").start()
    # No admin token: the admin endpoints are not served at all.
    assert worker.get("/health").status_code == 200
    assert httpx_delete(worker, "/admin/customers/sd-00").status_code == 404

    # SIGTERM while the worker is busy: events keep coming in the background.
    sender = threading.Thread(target=send_orders, args=(producer, "a", 2000, 400.0))
    sender.start()
    wait_for(lambda: worker.get("/health").json()["stats"].get("applied", 0) >= 400,
             what="the worker busy")
    started = time.monotonic()
    code = worker.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0 and took < 10, f"exit {code} after {took:.1f}s\n{worker.tail()}"
    sender.join(30)

    worker.start()  # a new process: only the broker connects it to the first one
    send_orders(producer, "b", 50)
    app = worker.env["SEGMENTER_APP_ID"]
    deadline, total = time.monotonic() + 60, 0
    while time.monotonic() < deadline and total != 2050:
        time.sleep(1)
        total = sum(s["events"] for s in final_states(broker, app).values())
    assert total == 2050, f"{total} events applied, stats {worker.get('/health').json()}"
    stats = worker.get("/health").json()["stats"]
    # Nothing the first worker had applied came again (its offsets were committed), and
    # nothing was lost (its state was flushed): each customer counts each event once.
    assert stats.get("duplicates", 0) == 0, stats
    counts = {cid: s["events"] for cid, s in final_states(broker, app).items()}
    assert counts == {cid: 82 for cid in CUSTOMERS}  # (2000 + 50) / 25
    changes = [orjson.loads(r.value) for r in read_topic(broker, "segment-changes", expect=1)]
    ids = [c["change_id"] for c in changes]
    assert len(ids) == len(set(ids)), "a segment change was emitted twice"
    print(f"\nSIGTERM to exit: {took:.1f}s")


def httpx_delete(worker, path: str):
    import httpx

    return httpx.delete(worker.base_url + path, timeout=10)
