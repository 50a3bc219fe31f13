"""Rule segmentations end to end: a rule segment, a lapse as event time advances, an anonymous
prospect, a changed definition, and a bad definitions file refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from .conftest import read_topic, send, wait_for

pytestmark = pytest.mark.integration


def ev(kind: str, cid: str, mid: str, ts: str, anonymous: bool = False, **props):
    base = {"anonymousId": cid} if anonymous else {"userId": cid}
    if kind == "page":
        return {"type": "page", "messageId": mid, "timestamp": ts, **base}
    return {"type": "track", "event": kind, "messageId": mid, "timestamp": ts,
            "properties": props, **base}


def changes_for(broker, cid: str, segmentation: str, expect: int = 1) -> list[dict]:
    recs = read_topic(broker, "segment-changes", expect=expect, idle=1.0)
    docs = [orjson.loads(r.value) for r in recs]
    return [d for d in docs if d["customer_id"] == cid and d["segmentation"] == segmentation]


def test_rules_time_driven_lapse_and_anonymous_prospect(broker, worker_factory, producer):
    # idle after 2 s: a partition without new events stops holding the clock back (the
    # clock is the smallest event time over the partitions still receiving events)
    w = worker_factory(tick_interval_s="1", idle_advance_after_s="2").start()
    # champion-like buyer: 6 orders in January
    for i in range(6):
        send(producer, ev("Order Completed", "vip", f"v{i}", f"2026-01-0{i + 1}T10:00:00Z",
                          total=150), key=b"vip")
    # an anonymous visitor who browses a lot and fills a cart, no order
    for i in range(6):
        send(producer, ev("Product Viewed", "anon-hot", f"h{i}", f"2026-01-05T10:0{i}:00Z",
                          anonymous=True, category="tents"), key=b"anon-hot")
    for i in range(2):
        send(producer, ev("Product Added", "anon-hot", f"ha{i}", f"2026-01-05T10:1{i}:00Z",
                          anonymous=True), key=b"anon-hot")
    producer.flush()

    vip = wait_for(lambda: (r := w.get("/customers/vip")).status_code == 200
                   and r.json()["features"]["orders"] == 6 and r.json(), what="vip")
    assert vip["segments"]["rfm"]["segment"] == "champions"
    assert vip["segments"]["rfm"]["why"]["matched"]
    assert vip["segments"]["lifecycle"]["segment"] == "active"
    hot = wait_for(lambda: (r := w.get("/customers/anonymous_id:anon-hot")).status_code == 200
                   and r.json()["features"]["cart_adds"] == 2 and r.json(), what="prospect")
    assert hot["anonymous"] is True
    assert hot["segments"]["prospects"]["segment"] == "hot_prospect"

    # Event time advances (someone else is active 70 days later): vip goes silent > 60 days
    # and lapses without sending anything, at the next time tick.
    send(producer, ev("page", "other", "o1", "2026-03-20T10:00:00Z"), key=b"other")
    producer.flush()

    def lapsed():
        return w.get("/customers/vip").json()["segments"]["lifecycle"]["segment"] == "lapsing"

    wait_for(lapsed, timeout=30, what="vip to lapse on event time")
    lc = changes_for(broker, "vip", "lifecycle", expect=3)
    assert [c["segment"] for c in lc][-1] == "lapsing"
    assert lc[-1]["previous_segment"] == "active"
    assert lc[-1]["occurred_at"].startswith("2026-03-20")
    ids = [c["change_id"] for c in lc]
    assert len(ids) == len(set(ids))
    # The anonymous prospect was targeted as hot, then cooled down as time passed (> 30 days
    # silent it is no prospect any more).
    prospects = [c["segment"] for c in changes_for(broker, "anonymous_id:anon-hot", "prospects")]
    assert "hot_prospect" in prospects and prospects[-1] is None


def test_changed_definitions_re_evaluate_and_say_so(broker, worker_factory, producer, tmp_path):
    defs = tmp_path / "segments.yaml"
    defs.write_text("""
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 100}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
""")
    w = worker_factory(segments_file=str(defs)).start()
    send(producer, ev("Order Completed", "s1", "s1-1", "2026-05-01T10:00:00Z", total=60),
         key=b"s1")
    producer.flush()
    wait_for(lambda: (r := w.get("/customers/s1")).status_code == 200
             and r.json()["segments"]["spend"]["segment"] == "small", what="small spender")
    w.stop()
    defs.write_text(defs.read_text().replace('">=": 100', '">=": 50'))
    w.start()
    send(producer, ev("page", "s1", "s1-2", "2026-05-02T10:00:00Z"), key=b"s1")
    producer.flush()
    wait_for(lambda: w.get("/customers/s1").json()["segments"]["spend"]["segment"] == "big",
             what="re-evaluated under the new definition")
    change = changes_for(broker, "s1", "spend", expect=2)[-1]
    assert change["segment"] == "big" and "definition changed" in change["reason"]


def test_bad_definitions_file_is_refused_at_startup(tmp_path: Path, broker):
    # a deep path, longer than a terminal line: the message must still name it whole
    defs = tmp_path / ("definitions-" + "d" * 100) / "segments.yaml"
    defs.parent.mkdir()
    defs.write_text("""
segmentations:
  - name: geo
    segments:
      - {id: dach, name: DACH, when: {and: [{trait: country, in: [DE, AT, CH]},
                                            {feature: ordrs_30d, ">=": 1}]}}
""")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")},
           "SEGMENTER_BROKER_URL": broker.url, "SEGMENTER_SEGMENTS_FILE": str(defs),
           "SEGMENTER_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "stream_app", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "ordrs_30d" in out.stderr and "orders_30d" in out.stderr
    assert str(defs) in out.stderr, out.stderr
