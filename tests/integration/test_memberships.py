"""Subscribing to segments, end to end on the embedded broker with real clients.

- The compacted ``segment-memberships`` topic, read with kafka-python, equals the workers'
  state after a run with a merge and an erasure (tombstones), on a memberships topic created
  beforehand with another partition count (records by key over its actual partitions).
- The README's subscriber (examples/subscriber.py), started after everything happened, ends
  with everyone's current segments.
- ``GET /segments/{segmentation}/{segment}/members`` paged through one of 2 workers returns
  each member exactly once; bad input gets 400, no token 401; ``segmenter members`` exports
  the same ids as CSV and JSON lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from stream_app.core.routing import partition_for

from .conftest import read_topic, send, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-token-for-memberships-test"
API = "api-token-for-memberships-test"
DEFINITIONS = """
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 100}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
  - name: visits
    segments:
      - {id: visitor, name: Visitor, when: {feature: page_views, ">=": 1}}
"""
QUIET = {"clustering": "false", "predictions": "false"}


def order(cid: str, mid: str, total: float, anonymous: str | None = None) -> dict[str, Any]:
    doc = {"type": "track", "event": "Order Completed", "userId": cid, "messageId": mid,
           "timestamp": "2026-05-01T10:00:00Z", "properties": {"total": total}}
    if anonymous:
        doc["anonymousId"] = anonymous
    return doc


def visit(anonymous: str, mid: str) -> dict[str, Any]:
    return {"type": "page", "anonymousId": anonymous, "messageId": mid, "name": "Home",
            "timestamp": "2026-05-01T09:00:00Z"}


def segments_of(worker: Any, cid: str) -> dict[str, str] | None:
    """The customer's segments as the workers hold them (None: no customer)."""
    r = worker.get(f"/customers/{cid}")
    if r.status_code == 404 or "merged_into" in r.json():
        return None
    return {name: s["segment"] for name, s in r.json()["segments"].items() if s["segment"]}


def compacted(records: list[Any]) -> dict[str, dict[str, Any]]:
    view: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.value is None:
            view.pop(r.key.decode(), None)
        else:
            view[r.key.decode()] = orjson.loads(r.value)
    return view


def test_memberships_topic_and_a_late_subscriber_equal_the_workers_state(
        broker, worker_factory, producer, tmp_path):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("segment-memberships", 3, 1,
                                  topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    defs = tmp_path / "segments.yaml"
    defs.write_text(DEFINITIONS)
    w = worker_factory(segments_file=str(defs), admin_token=ADMIN, **QUIET).start()

    users = [f"m-{i:02d}" for i in range(24)]
    for i, cid in enumerate(users):
        send(producer, order(cid, f"{cid}-o1", 30 + 10 * i), key=cid.encode())
    # an anonymous visitor (in 'visits') who then orders as m-00: merged into the user
    send(producer, visit("browser-7", "v-1"), key=b"browser-7")
    producer.flush()
    wait_for(lambda: segments_of(w, "anonymous_id:browser-7") == {"visits": "visitor"},
             what="the anonymous visitor")
    send(producer, order("m-00", "m-00-o2", 5, anonymous="browser-7"), key=b"m-00")
    producer.flush()
    wait_for(lambda: segments_of(w, "m-00") == {"spend": "small", "visits": "visitor"},
             what="the merge")
    r = httpx.delete(f"{w.base_url}/admin/customers/m-05",
                     headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 202, r.text
    wait_for(lambda: segments_of(w, "m-05") is None, what="the erasure")
    wait_for(lambda: all(segments_of(w, cid) is not None for cid in users if cid != "m-05"),
             what="every customer")

    expected = {cid: segs for cid in [*users, "anonymous_id:browser-7"]
                if (segs := segments_of(w, cid))}
    assert len(expected) == 23 and expected["m-23"] == {"spend": "big"}

    records = read_topic(broker, "segment-memberships", expect=len(users) + 3)
    for r in records:  # the default partitioner over the topic's actual 3 partitions
        assert r.partition == partition_for(r.key.decode(), 3), r
    assert {r.partition for r in records} == {0, 1, 2}
    view = compacted(records)
    assert {cid: {k: v for k, v in doc["segments"].items() if v} for cid, doc in view.items()
            } == expected
    assert all(set(doc["segments"]) == {"spend", "visits"} for doc in view.values())
    assert view["m-00"]["updated_at"] == "2026-05-01T10:00:00Z"
    # the erased customer and the merged visitor: tombstones, last of their keys
    for gone in ("m-05", "anonymous_id:browser-7"):
        assert [r.value for r in records if r.key == gone.encode()][-1] is None

    # the README's subscriber, started after all this, knows everyone's segments; also
    # when segment-changes kept nothing of it (retention passed: an empty topic here)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("segment-changes-expired", 2, 1)])
    admin.close()
    for changes in ("segment-changes", "segment-changes-expired"):
        out = subprocess.run([sys.executable, str(ROOT / "examples/subscriber.py"),
                              "--bootstrap", broker.bootstrap, "--changes-topic", changes,
                              "--once"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == expected, changes


def test_members_paged_across_two_workers_and_exported(broker, worker_factory, producer,
                                                       tmp_path):
    defs = tmp_path / "segments.yaml"
    defs.write_text(DEFINITIONS)
    common = {"segments_file": str(defs), "api_token": API, "admin_token": ADMIN, **QUIET}
    w1 = worker_factory("w1", **common).start()
    w2 = worker_factory("w2", **common).start()
    big = {f"b-{i:03d}" for i in range(45)}
    for i, cid in enumerate(sorted(big)):
        send(producer, order(cid, f"{cid}-o", 100 + i), key=cid.encode())
    for i in range(15):
        send(producer, order(f"s-{i:03d}", f"s-{i}-o", 20), key=f"s-{i:03d}".encode())
    producer.flush()
    auth = {"Authorization": f"Bearer {API}"}

    def assigned(w: Any) -> list[int]:
        return w.wait_healthy()["assigned_partitions"]

    wait_for(lambda: assigned(w1) and assigned(w2), what="both workers own partitions")

    def page(w: Any, **params: Any) -> httpx.Response:
        return httpx.get(f"{w.base_url}/segments/spend/big/members", params=params,
                         headers=auth, timeout=30)

    def all_pages(w: Any, limit: int) -> list[str]:
        got: list[str] = []
        cursor = None
        for _ in range(100):
            r = page(w, limit=limit, **({"cursor": cursor} if cursor else {}))
            assert r.status_code == 200, r.text
            doc = r.json()
            assert len(doc["members"]) <= limit
            got += doc["members"]
            cursor = doc["next_cursor"]
            if cursor is None:
                return got
        raise AssertionError("paging does not end")

    def sizes() -> dict[str, int]:
        doc = httpx.get(f"{w1.base_url}/segments", timeout=10).json()
        spend = next(s for s in doc["segmentations"] if s["name"] == "spend")
        return {s["id"]: s["size"] for s in spend["segments"]}

    wait_for(lambda: sizes() == {"big": 45, "small": 15}, timeout=60, what="every customer")
    for w, limit in ((w1, 7), (w2, 10), (w1, 45), (w2, 1)):
        ids = all_pages(w, limit)
        assert ids == sorted(big), (limit, ids)  # each member once, in id order
    # each worker answers locally for its own partitions only
    local = [set(page(w, limit=1000, scope="local").json()["members"]) for w in (w1, w2)]
    assert local[0] and local[1] and not local[0] & local[1] and local[0] | local[1] == big

    assert httpx.get(f"{w1.base_url}/segments/spend/big/members").status_code == 401
    for params, words in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                          ({"limit": "ten"}, "limit"), ({"cursor": "%%%"}, "cursor"),
                          ({"cursor": "x" * 3000}, "cursor")):
        r = page(w1, **params)
        assert r.status_code == 400 and words in r.json()["error"], (params, r.text)
    r = httpx.get(f"{w1.base_url}/segments/nope/big/members", headers=auth)
    assert r.status_code == 400 and "spend" in r.json()["error"]

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")},
           "SEGMENTER_API_TOKEN": API}
    for name in ("big.csv", "big.jsonl"):
        out = tmp_path / name
        run = subprocess.run([sys.executable, "-m", "stream_app", "members", "spend", "big",
                              "--out", str(out), "--url", w2.base_url, "--page-size", "10"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        lines = out.read_text().splitlines()
        if name.endswith(".csv"):
            assert lines[0] == "customer_id" and lines[1:] == sorted(big)
        else:
            assert [json.loads(line)["customer_id"] for line in lines] == sorted(big)
        assert "45 members of spend/big" in run.stderr
    # a member erased meanwhile is not listed any more, within the workers' 30 s of reuse
    # of their scan too
    r = httpx.delete(f"{w1.base_url}/admin/customers/b-000",
                     headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 202, r.text
    wait_for(lambda: httpx.get(f"{w1.base_url}/customers/b-000", headers=auth).status_code
             == 404, what="the erasure")
    assert all_pages(w2, 10) == sorted(big - {"b-000"})

    bad = subprocess.run([sys.executable, "-m", "stream_app", "members", "spend", "big",
                          "--url", w2.base_url], env={**env, "SEGMENTER_API_TOKEN": "wrong"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "invalid token" in bad.stderr


@pytest.mark.slow(30)
def test_memberships_after_kill_9_equal_the_state_and_repeat_only_exact_copies(
        broker, worker_factory, producer, tmp_path):
    """A worker killed mid-stream replays what it had not stored: the memberships records of
    those batches are written again, the same bytes; the compacted topic ends equal to the
    state. Offsets committed every second, so the kills land on uncommitted work."""
    import time

    rounds = 30
    defs = tmp_path / "segments.yaml"
    # a segment per order count: every order moves every customer, one record each time
    defs.write_text(DEFINITIONS + "  - name: level\n    segments:\n" + "".join(
        f"      - {{id: o{n}, name: Level {n}, when: {{feature: orders, \">=\": {n}}}}}\n"
        for n in range(rounds, 0, -1)))
    w = worker_factory(segments_file=str(defs), commit_interval_s="1", **QUIET).start()
    customers = [f"k-{i:02d}" for i in range(40)]
    kills = 0
    for r in range(rounds):  # each customer's revenue grows 10 a round: small, then big
        for cid in customers:
            doc = order(cid, f"{cid}-{r}", 10)
            doc["timestamp"] = f"2026-05-01T10:{r:02d}:00Z"
            send(producer, doc, key=cid.encode())
        producer.flush()
        time.sleep(0.15)
        if r in (9, 19):
            w.kill()
            kills += 1
            w.start()
    assert kills == 2

    def done() -> bool:
        return all((r := w.get(f"/customers/{cid}")).status_code == 200
                   and r.json()["features"]["orders"] == rounds for cid in customers)

    wait_for(done, timeout=90, what="every order applied once")
    expected = {cid: segments_of(w, cid) for cid in customers}
    assert all(segs == {"spend": "big", "level": f"o{rounds}"} for segs in expected.values())

    records = read_topic(broker, "segment-memberships", expect=rounds * len(customers))
    assert compacted_segments(records) == expected
    assert all(set(orjson.loads(r.value)["segments"]) == {"spend", "visits", "level"}
               for r in records)
    by_key: dict[bytes, list[bytes]] = {}
    repeats = 0
    for rec in records:
        by_key.setdefault(rec.key, []).append(rec.value)
    for key, values in by_key.items():
        times = [orjson.loads(v)["updated_at"] for v in values]
        assert times == sorted(times), key  # never back in time, even across the kills
        for a, b in zip(values, values[1:], strict=False):
            if orjson.loads(a)["updated_at"] == orjson.loads(b)["updated_at"]:
                assert a == b, key  # a repeat is an exact copy
                repeats += 1
    print(f"\n{len(records)} memberships records, {repeats} repeats after {kills} kills")


def compacted_segments(records: list[Any]) -> dict[str, dict[str, str]]:
    return {cid: {k: v for k, v in doc["segments"].items() if v}
            for cid, doc in compacted(records).items()}
