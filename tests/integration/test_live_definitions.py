"""Live rule definitions end to end (issue 15.3): an edited definitions file (polled, and on
SIGHUP) and PUT /admin/segmentations switch every worker, which backfills its stored
customers at once: changes with reason `definition changed` and the new versions arrive on
segment-changes (read with kafka-python) without any new event; invalid definitions change
nothing, get 400 and are counted in /metrics; GET /segmentations says what is in force."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stream_app.core.segmentation.rules.live import parse_set

from .conftest import read_topic, send, wait_for

pytestmark = pytest.mark.integration
TOKEN = "t0ken-for-tests-only"

V1 = """
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 100}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
  - name: legacy
    segments:
      - {id: buyer, name: Buyer, when: {feature: orders, ">=": 1}}
"""
V2 = """
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 50}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
  - name: tier
    segments:
      - {id: gold, name: Gold, when: {feature: orders, ">=": 2}}
"""
INVALID = V2.replace("feature: orders", "feature: ordrs")
# customer -> orders' totals: a is small under V1 and big under V2, b gold in tier, c big
ORDERS = {"a": [60], "b": [30, 10], "c": [150]}


def version(text: str) -> int:
    return parse_set(text, format="yaml", source="file").version


def seg_versions(text: str) -> dict[str, int]:
    return {s.name: s.version for s in parse_set(text, format="yaml", source="file")
            .segmentations}


def order(cid: str, i: int, total: float) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": cid,
            "messageId": f"{cid}-{i}", "timestamp": f"2026-05-0{i + 1}T10:00:00Z",
            "properties": {"total": total}}


def store_customers(producer, workers, orders: dict[str, list[float]]) -> None:
    for cid, totals in orders.items():
        for i, total in enumerate(totals):
            send(producer, order(cid, i, total), key=cid.encode())
    producer.flush()
    w = workers[0]

    def stored(cid: str, n: int) -> bool:
        r = w.get(f"/customers/{cid}")
        return r.status_code == 200 and r.json()["features"]["orders"] == n

    for cid, totals in orders.items():
        n = len(totals)
        wait_for(lambda cid=cid, n=n: stored(cid, n), what=f"{cid} stored")


def changes(broker, expect: int) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_topic(broker, "segment-changes",
                                                      expect=expect, idle=1.5)]


def redefined(broker, expect: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The changes whose reason says the definitions moved them, by (customer, segmentation)."""
    docs = changes(broker, expect)
    return {(d["customer_id"], d["segmentation"]): d for d in docs
            if d["reason"].startswith("definition changed")}


def in_force(w) -> int:
    return w.get("/segmentations").json()["version"]


def assert_backfilled_v1_to_v2(broker, expect_total: int) -> None:
    v1, v2 = seg_versions(V1), seg_versions(V2)
    got = wait_for(lambda: len(r := redefined(broker, expect_total)) >= 5 and r,
                   timeout=30, what="backfill changes")
    assert set(got) == {("a", "spend"), ("a", "legacy"), ("b", "legacy"), ("b", "tier"),
                        ("c", "legacy")}
    a = got[("a", "spend")]
    assert (a["previous_segment"], a["segment"]) == ("small", "big")
    assert a["reason"] == (f"definition changed ({v1['spend']:08x} -> {v2['spend']:08x}): "
                           "revenue >= 50")
    assert a["model_version"] == v2["spend"]
    assert got[("b", "tier")]["segment"] == "gold"
    assert got[("b", "tier")]["model_version"] == v2["tier"]
    for cid in "abc":  # legacy is gone: its members leave
        assert got[(cid, "legacy")]["segment"] is None
        assert got[(cid, "legacy")]["model_version"] == version(V2)


def metric(w, name: str) -> float:
    for line in w.get("/metrics").text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in /metrics")


def test_edited_file_backfills_stored_customers_and_a_bad_edit_changes_nothing(
        broker, worker_factory, producer, tmp_path: Path) -> None:
    defs = tmp_path / "segments.yaml"
    defs.write_text(V1)
    w = worker_factory(segments_file=str(defs), segments_poll_s="1", clustering="false",
                       tick_interval_s="3600").start()
    assert in_force(w) == version(V1)
    store_customers(producer, [w], ORDERS)
    before = len(changes(broker, 6))
    assert before == 6  # spend and legacy for each

    defs.write_text(V2)  # no event follows: the backfill alone moves them
    wait_for(lambda: in_force(w) == version(V2), what="V2 in force")
    assert_backfilled_v1_to_v2(broker, before + 5)
    doc = w.get("/segmentations").json()
    assert doc["source"] == "file" and doc["text"] == V2
    assert [s["segmentation"] for s in doc["segmentations"]] == ["spend", "tier"]
    assert w.get("/customers/a").json()["segments"]["spend"]["segment"] == "big"

    settled = len(changes(broker, before + 5))
    defs.write_text(INVALID)
    wait_for(lambda: metric(w, 'segmenter_definitions_rejected_total{source="file"}') == 1,
             what="the bad edit counted")
    assert in_force(w) == version(V2)
    assert len(changes(broker, settled)) == settled
    assert "ordrs" in w.tail(200) and "orders" in w.tail(200)


def test_sighup_and_put_switch_at_once_and_invalid_puts_are_refused(
        broker, worker_factory, producer, tmp_path: Path) -> None:
    defs = tmp_path / "segments.yaml"
    defs.write_text(V1)
    # polled once an hour: only SIGHUP can make it look at the file
    w = worker_factory(segments_file=str(defs), segments_poll_s="3600", clustering="false",
                       tick_interval_s="3600", admin_token=TOKEN).start()
    store_customers(producer, [w], ORDERS)
    before = len(changes(broker, 6))
    defs.write_text(V2)
    assert w.proc is not None
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: in_force(w) == version(V2), timeout=15, what="V2 after SIGHUP")
    assert_backfilled_v1_to_v2(broker, before + 5)
    settled = len(changes(broker, before + 5))

    url = w.base_url + "/admin/segmentations"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.put(url, content=V1).status_code == 401
    assert httpx.put(url, content=V1, headers={"Authorization": "Bearer nope"}
                     ).status_code == 403
    bad = httpx.put(url, content=INVALID, headers=auth)
    assert bad.status_code == 400, bad.text
    assert "ordrs" in bad.json()["detail"] and "orders" in bad.json()["detail"]
    big = httpx.put(url, content=b"#" * (300 * 1024), headers=auth)
    assert big.status_code == 413
    bad_json = httpx.put(url, content=b'{"segmentations": [', headers={
        **auth, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["detail"]
    assert metric(w, 'segmenter_definitions_rejected_total{source="api"}') == 2
    assert in_force(w) == version(V2)
    assert len(changes(broker, settled)) == settled  # nothing changed

    seen = {d["change_id"] for d in changes(broker, settled)}
    # JSON is accepted as well: back to V1, applied before the answer
    as_json = orjson.dumps(parse_set(V1, format="yaml", source="api").definitions.model_dump(
        mode="json", by_alias=True, exclude_none=True))
    ok = httpx.put(url, content=as_json, headers={**auth, "Content-Type": "application/json"},
                   timeout=20)
    assert ok.status_code == 200 and ok.json()["applied"] is True
    assert ok.json()["version"] == version(V1) == in_force(w)
    assert metric(w, "segmenter_definitions_version") == version(V1)
    def moved_back() -> set[tuple[str, str, str | None]]:
        return {(d["customer_id"], d["segmentation"], d["segment"])
                for d in changes(broker, settled + 5) if d["change_id"] not in seen
                and d["reason"].startswith("definition changed")}

    back = wait_for(lambda: len(m := moved_back()) >= 5 and m, what="changes back to V1")
    assert back == {("a", "spend", "small"), ("a", "legacy", "buyer"), ("b", "legacy", "buyer"),
                    ("c", "legacy", "buyer"), ("b", "tier", None)}


@pytest.mark.slow(30)
def test_put_switches_every_worker_and_outlives_a_restart(
        broker, worker_factory, producer, tmp_path: Path) -> None:
    defs = tmp_path / "segments.yaml"
    defs.write_text(V1)
    settings = dict(segments_file=str(defs), clustering="false", tick_interval_s="3600",
                    admin_token=TOKEN)
    w1 = worker_factory("w1", **settings).start()
    w2 = worker_factory("w2", **settings).start()
    wait_for(lambda: all(len(w.get("/health").json().get("assigned_partitions", [])) == 2
                         for w in (w1, w2)), timeout=60, what="two partitions each")
    # customers on every partition, so both workers hold some
    orders = {f"c{i}": [60] for i in range(12)}
    store_customers(producer, [w1, w2], orders)
    before = len(changes(broker, 24))

    r = httpx.put(w1.base_url + "/admin/segmentations", content=V2,
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)
    assert r.status_code == 200 and r.json()["applied"], r.text
    wait_for(lambda: in_force(w2) == version(V2), what="the other worker switched")
    # every customer: spend small -> big (revenue 60 >= 50) and legacy left, on both workers
    want = {(cid, seg) for cid in orders for seg in ("spend", "legacy")}
    got = wait_for(lambda: want <= set(m := redefined(broker, before + 24)) and m,
                   timeout=30, what="every customer backfilled")
    assert all(got[(cid, "spend")]["segment"] == "big" for cid in orders)
    assert w2.get("/segmentations").json()["source"] == "api"
    backfilled = sum(w.get("/segmentations").json()["backfill"]["last"]["customers"]
                     for w in (w1, w2))
    assert backfilled == len(orders)
    assert all(w.get("/segmentations").json()["backfill"]["last"]["customers"] > 0
               for w in (w1, w2))

    # the PUT outlives a restart: the file did not change, so the topic's record is in force
    w2.stop()
    w2.start()
    assert in_force(w2) == version(V2)
