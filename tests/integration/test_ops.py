"""Ops surface against a real broker: every metric family moves; replay / simulate / tail work."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import send, wait_for

pytestmark = pytest.mark.integration


def scrape(worker) -> dict[str, list]:
    text = worker.get("/metrics").text
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


def total(samples, suffix: str = "", **labels) -> float:
    return sum(s.value for s in samples if s.name.endswith(suffix)
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_metric_family_moves_when_events_flow(broker, worker, producer):
    before = scrape(worker)
    assert total(before["segmenter_events_in"]) == 0
    for i in range(40):
        send(producer, {"type": "track", "event": "Order Completed", "userId": f"m{i % 10}",
                        "messageId": f"o{i}", "properties": {"total": 20 + i}},
             key=f"m{i % 10}".encode())
    send(producer, {"type": "page", "userId": "m1", "messageId": "o1"}, key=b"m1")  # dup id
    send(producer, b"{broken", key=b"m1")
    producer.flush()

    def moved():
        m = scrape(worker)
        return (total(m["segmenter_events_in"], "_total", kind="order") == 40
                and total(m.get("segmenter_segment_size", [])) > 0 and m)

    m = wait_for(moved, timeout=40, what="metrics to move")
    assert total(m["segmenter_dead_letters"], "_total", reason="not_json") == 1
    assert total(m["segmenter_duplicates_dropped"], "_total") == 1
    assert total(m["segmenter_messages_consumed"], "_total") >= 42
    assert total(m["segmenter_segment_changes"], "_total") > 0
    assert total(m["segmenter_ingest_to_segment_change_seconds"], "_count") > 0
    assert total(m["segmenter_event_time_to_segment_change_seconds"], "_count") > 0
    assert total(m["segmenter_batch_size"], "_count") > 0
    assert total(m["segmenter_batch_processing_seconds"], "_count") > 0
    sizes = {s.labels["segmentation"] for s in m["segmenter_segment_size"]}
    assert {"rfm", "lifecycle"} <= sizes
    lag_parts = {s.labels["partition"] for s in m["segmenter_consumer_lag"]}
    assert lag_parts, "consumer lag is reported per partition"
    assert "segmenter_broker_stalled" in m and "segmenter_model_version" in m


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_replay_csv_and_jsonl_end_with_events_applied(broker, worker, tmp_path: Path):
    env = {**os.environ, **worker.env}
    rows = tmp_path / "orders.csv"
    with rows.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cust", "when", "amount", "cat"])
        for i in range(30):
            w.writerow([f"c{i % 3}", f"2026-0{1 + i % 9}-1{i % 10}T10:00:00Z", 10 + i, "toys"])
    out = cli("replay", str(rows), "--mapping",
              "customer=cust,timestamp=when,amount=amount,category=cat", env=env)
    assert out.returncode == 0, out.stderr
    assert "replayed 30 events" in out.stderr + out.stdout
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"".join(orjson.dumps(
        {"type": "track", "event": "Product Viewed", "userId": "c0", "messageId": f"j{i}",
         "timestamp": f"2026-10-0{1 + i % 9}T00:00:00Z"}) + b"\n" for i in range(12)))
    assert cli("replay", str(lines), "--rate", "200", env=env).returncode == 0
    doc = wait_for(lambda: (r := worker.get("/customers/c0")).status_code == 200
                   and r.json()["features"]["orders"] == 10
                   and r.json()["features"]["product_views"] == 12 and r.json(),
                   what="replayed events applied")
    assert doc["features"]["revenue"] == pytest.approx(sum(10 + i for i in range(0, 30, 3)))
    # replaying the same file again applies nothing twice (deterministic message ids)
    assert cli("replay", str(rows), "--mapping",
               "customer=cust,timestamp=when,amount=amount,category=cat", env=env).returncode == 0
    time.sleep(3)
    assert worker.get("/customers/c0").json()["features"]["orders"] == 10
    bad = tmp_path / "bad.csv"
    bad.write_text("cust,when,amount\nc1,not-a-time,5\n")
    res = cli("replay", str(bad), "--mapping", "customer=cust,timestamp=when,amount=amount",
              env=env)
    assert res.returncode != 0 and "bad.csv:2" in res.stderr + res.stdout


def test_simulate_publishes_and_tail_follows_changes(broker, worker, tmp_path: Path):
    env = {**os.environ, **worker.env}
    truth = tmp_path / "truth.json"
    out = cli("simulate", "--customers", "20", "--days", "10", "--truth", str(truth), env=env)
    assert out.returncode == 0, out.stderr
    labels = orjson.loads(truth.read_bytes())
    assert len(labels) == 20
    tail = subprocess.Popen([sys.executable, "-m", "stream_app", "tail", "--from-beginning",
                             "--json", "--segmentation", "lifecycle"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 40
        first = ""
        while time.monotonic() < deadline and not first:
            first = tail.stdout.readline()
        change = orjson.loads(first)
        assert change["segmentation"] == "lifecycle" and change["customer_id"]
    finally:
        tail.terminate()
        tail.wait(10)
    seg = cli("segments", "--url", worker.base_url, env=env)
    assert seg.returncode == 0 and "lifecycle" in seg.stdout
