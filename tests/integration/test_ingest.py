"""Events flow from Kafka into per-customer state: valid, duplicate, batched, malformed."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from .conftest import read_topic, send, wait_for

pytestmark = pytest.mark.integration


def order(uid: str, mid: str, total: float, ts: str = "2026-10-01T12:00:00Z", **extra):
    return {"type": "track", "event": "Order Completed", "userId": uid, "messageId": mid,
            "timestamp": ts, "properties": {"total": total, "currency": "EUR", **extra}}


def test_events_land_in_state_and_bad_ones_in_the_dlq(broker, worker, producer):
    # valid, keyed by customer
    for i in range(3):
        send(producer, order("alice", f"a-{i}", 40.0 + i), key=b"alice")
    # duplicate delivery (producer retry / replay): same messageId
    send(producer, order("alice", "a-0", 40.0), key=b"alice")
    # unkeyed: must be re-keyed to the customer's partition
    send(producer, {"type": "track", "event": "Product Viewed", "userId": "alice",
                    "messageId": "a-v1", "timestamp": "2026-10-01T11:00:00Z",
                    "properties": {"category": "Shoes"}})
    # identify with traits
    send(producer, {"type": "identify", "userId": "alice", "messageId": "a-id",
                    "timestamp": "2026-09-01T00:00:00Z",
                    "traits": {"age": 34, "gender": "female",
                               "address": {"country": "DE", "city": "Berlin"},
                               "interests": ["Running", "outdoor"]}}, key=b"alice")
    # a batch envelope with one bad element
    send(producer, {"batch": [order("bob", "b-1", 10.0), order("bob", "b-2", -5.0),
                              order("bob", "b-3", 12.5)]}, key=b"bob")
    # malformed messages
    bad = [b"\xff\xfenot utf8", b"{not json", orjson.dumps([1, 2]),
           orjson.dumps({"type": "teleport", "userId": "x"}),
           orjson.dumps({"type": "page", "messageId": "no-ids"}),
           orjson.dumps(order("carol", "c-1", 5, ts="2999-01-01T00:00:00Z")),
           b"x" * (300 * 1024)]
    for raw in bad:
        send(producer, raw, key=b"junk")
    producer.flush()

    doc = wait_for(lambda: (r := worker.get("/customers/alice")).status_code == 200
                   and r.json()["features"]["orders"] == 3 and r.json()["traits"]
                   and r.json()["features"]["product_views"] == 1 and r.json(),
                   what="alice's orders")
    f = doc["features"]
    assert f["orders"] == 3 and f["revenue"] == pytest.approx(40 + 41 + 42)
    assert f["product_views"] == 1 and f["top_category"] in ("shoes",)
    assert doc["traits"]["country"] == "DE" and doc["traits"]["age"] == 34
    assert doc["traits"]["interests"] == ["outdoor", "running"]
    assert doc["segments"] == {} or isinstance(doc["segments"], dict)

    bob = wait_for(lambda: (r := worker.get("/customers/bob")).status_code == 200 and r.json(),
                   what="bob")
    assert bob["features"]["orders"] == 2 and bob["features"]["revenue"] == pytest.approx(22.5)
    assert worker.get("/customers/nobody").status_code == 404

    dead = read_topic(broker, "customer-interactions-dlq", expect=len(bad) + 1)
    reasons = sorted(dict(r.headers)["segmenter.dlq.reason"].decode() for r in dead)
    assert reasons == sorted(["not_utf8", "not_json", "not_an_object", "unknown_type",
                              "missing_id", "future_timestamp", "too_large",
                              "negative_amount"])
    by_reason = {dict(r.headers)["segmenter.dlq.reason"].decode(): r for r in dead}
    utf = by_reason["not_utf8"]
    assert utf.value == b"\xff\xfenot utf8"  # original bytes, untouched
    hdr = dict(utf.headers)
    assert hdr["segmenter.dlq.topic"] == b"customer-interactions"
    assert int(hdr["segmenter.dlq.offset"]) >= 0 and int(hdr["segmenter.dlq.partition"]) >= 0
    neg = by_reason["negative_amount"]
    assert dict(neg.headers)["segmenter.dlq.batch_index"] == b"1"
    assert orjson.loads(neg.value)["messageId"] == "b-2"

    health = worker.get("/health").json()
    assert health["stats"]["dead_letters"] == len(bad) + 1
    assert health["stats"]["duplicates"] >= 1


def test_anonymous_history_merges_into_the_identified_customer(broker, worker, producer):
    anon = "anon-123"
    for i in range(3):
        send(producer, {"type": "track", "event": "Product Viewed", "anonymousId": anon,
                        "messageId": f"v{i}", "timestamp": f"2026-10-0{i + 1}T10:00:00Z",
                        "properties": {"category": "tents"}}, key=anon.encode())
    send(producer, {"type": "track", "event": "Product Added", "anonymousId": anon,
                    "messageId": "add1", "timestamp": "2026-10-04T10:00:00Z"}, key=anon.encode())
    producer.flush()
    # an anonymous customer's key: anonymous_id:<id> (its own id space, never a user's)
    wait_for(lambda: worker.get(f"/customers/anonymous_id:{anon}").status_code == 200,
             what="anonymous state")
    assert worker.get(f"/customers/{anon}").status_code == 404  # no user of that id
    # login: identify links the anonymous id to the user
    send(producer, {"type": "identify", "userId": "dave", "anonymousId": anon, "messageId": "id1",
                    "timestamp": "2026-10-05T10:00:00Z", "traits": {"age": 29}}, key=b"dave")
    producer.flush()
    dave = wait_for(lambda: (r := worker.get("/customers/dave")).status_code == 200
                    and r.json()["features"]["product_views"] == 3 and r.json(), what="merge")
    assert dave["features"]["cart_adds"] == 1 and anon in dave["anonymous_ids"]
    wait_for(lambda: worker.get(f"/customers/anonymous_id:{anon}").json().get("merged_into")
             == "dave", what="anon merged into the user")
    # a later anonymous-only event for the same id lands on the user
    send(producer, {"type": "track", "event": "Product Viewed", "anonymousId": anon,
                    "messageId": "v9", "timestamp": "2026-10-06T10:00:00Z"}, key=anon.encode())
    producer.flush()
    wait_for(lambda: worker.get("/customers/dave").json()["features"]["product_views"] == 4,
             what="aliased event applied to the user")


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_worker_keeps_state_across_kill_and_restart(store, broker, worker_factory, producer):
    """memory: rebuilt from the changelog; rocksdb: kept on disk plus the changelog tail."""
    w = worker_factory(store, store=store).start()
    for i in range(25):
        send(producer, order("erin", f"e-{i}", 10.0), key=b"erin")
        if i % 7 == 0:
            producer.flush()  # several record batches: the broker's end-offset bug matters
    producer.flush()
    wait_for(lambda: (r := w.get("/customers/erin")).status_code == 200
             and r.json()["features"]["orders"] == 25, what="25 orders")
    w.kill()
    w.start()
    doc = w.get("/customers/erin").json()
    assert doc["features"]["orders"] == 25
    send(producer, order("erin", "e-25", 10.0), key=b"erin")
    send(producer, order("erin", "e-3", 10.0), key=b"erin")  # old duplicate
    producer.flush()
    wait_for(lambda: w.get("/customers/erin").json()["features"]["orders"] == 26, what="26")


def test_bad_setting_fails_at_startup_naming_the_setting(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SEGMENTER_WEB_PORT": "not-a-port",
           "SEGMENTER_BROKER_URL": "http://wrong"}
    out = subprocess.run([sys.executable, "-m", "stream_app", "worker"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "SEGMENTER_WEB_PORT" in out.stderr and "SEGMENTER_BROKER_URL" in out.stderr
