"""Issue 14: after a replay of history, every customer with data holds a behavioural segment
within 30 s of the first ready model, and an id of the current model within 30 s of each
new version, without waiting for its next event or time tick."""

from __future__ import annotations

import time

import orjson
import pytest

from stream_app.simulate_long import horizon_populations

from .conftest import wait_for

pytestmark = pytest.mark.integration


def behaviour(worker):  # type: ignore[no-untyped-def]
    doc = worker.get("/segments").json()
    return next(s for s in doc["segmentations"] if s["name"] == "behavior")


def test_customers_are_rescored_within_seconds_of_a_model_version(broker, worker_factory,
                                                                  producer):
    # Ticks an hour apart: only re-scoring can assign the customers whose last event came
    # before the first ready model (most of them: the model needs samples from many days).
    w = worker_factory(model_min_learned="300", model_snapshot_every="400",
                       tick_interval_s="3600").start()
    pop = horizon_populations(customers=250, days=300.0, seed=3)[1]  # purchase-only
    events = list(pop)
    customers = {e["userId"] for e in events}
    for event in events:
        producer.send("customer-interactions", orjson.dumps(event),
                      key=event["userId"].encode())
    producer.flush()

    def applied():
        stats = w.get("/health").json()["stats"]
        return stats.get("applied", 0) + stats.get("duplicates", 0) >= len(events) and stats

    wait_for(applied, timeout=120, interval=1.0, what=f"all {len(events)} events applied")
    ready = wait_for(lambda: behaviour(w).get("status") == "ready", timeout=120,
                     what="a ready model")
    assert ready
    seen_ready = time.monotonic()

    seen: dict = {}

    def everyone() -> dict | None:
        b = behaviour(w)
        seen.update(customers=b["customers"], version=b["version"])
        return b if b["customers"] == len(customers) else None

    try:
        b = wait_for(everyone, timeout=30, interval=0.5,
                     what=f"all {len(customers)} customers in a behavioural segment")
    except AssertionError as exc:  # what /segments counted, and what the worker did
        raise AssertionError(f"{exc}; last seen {seen}; worker log:\n{w.tail(40)}") from None
    assert time.monotonic() - seen_ready <= 30.0
    # and in ids of the model now loaded: no customer left in a retired id
    version = b["version"]

    def current_ids() -> dict | None:
        b = behaviour(w)
        held = [s for s in b["segments"] if s.get("retired") and s["size"]]
        return b if not held and b["customers"] == len(customers) else None

    latest = wait_for(current_ids, timeout=30, interval=0.5,
                      what=f"every customer in an id of model version {version} or later")
    assert latest["version"] >= version
