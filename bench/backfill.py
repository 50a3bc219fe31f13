"""Backfill under new rule definitions: how long until every stored customer is re-evaluated.

    python bench/backfill.py [--customers 100000] [--partitions 4] [--skip-e2e]

1. **step**: the pure :meth:`stream_app.core.processing.Step.backfill`, in-process, over a dict
   table of N customers (one order and one page view each, through ``Step.run``), in the
   worker's chunks, after switching from the shipped definitions to the same plus a new
   segmentation every customer enters (so every customer is stale and emits one change).
2. **end to end**: an embedded broker and one ``segmenter worker`` (memory store, clustering
   off); the same N customers produced to the input topic in batch envelopes and applied;
   then ``PUT /admin/segmentations`` with the new definitions. Measured from the PUT: until
   the N-th change of the new segmentation is readable on ``segment-changes`` (a kafka-python
   consumer that has read everything before the PUT), and the worker's own figure for the
   pass (``GET /segmentations`` -> ``backfill.last.seconds``).

Prints the figures; the target (issue 15.3) is N = 100,000 in under a minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_app.core.routing import partition_of  # noqa: E402
from stream_app.core.segmentation.rules.definitions import DEFAULTS  # noqa: E402
from stream_app.host.broker import EmbeddedBroker, free_port  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
NEW_SEGMENTATION = """
  - name: value_tier
    description: added while the service runs (bench/backfill.py)
    segments:
      - {id: high, name: High value, when: {feature: revenue, ">=": 200}}
      - {id: mid, name: Mid value, when: {feature: revenue, ">=": 50}}
      - {id: low, name: Low value, when: {feature: orders, ">=": 0}}
"""


def default_text() -> str:
    return (ROOT / "stream_app" / "core" / "segmentation" / "rules" / DEFAULTS).read_text()


def events_of(i: int) -> list[dict[str, Any]]:
    cid = f"u-{i:07d}"
    ts = T0 + (i % 86400) * 30
    iso = datetime.fromtimestamp(ts, UTC).isoformat()
    return [{"type": "track", "event": "Order Completed", "userId": cid,
             "messageId": f"{cid}-o", "timestamp": iso,
             "properties": {"total": float(10 + i % 300)}},
            {"type": "page", "userId": cid, "messageId": f"{cid}-p", "timestamp": iso,
             "name": "Home"}]


def step_phase(n: int, partitions: int) -> dict[str, Any]:
    from stream_app.core.processing import TICK_CHUNK, Message, Step
    from stream_app.core.segmentation.rules.live import parse_set

    old = parse_set(default_text(), format="yaml", source="defaults")
    new = parse_set(default_text() + NEW_SEGMENTATION, format="yaml", source="api")
    step = Step(input_topic="in", routed_topic="routed", partitions=1,
                segmentations=old.segmentations)
    table: dict[str, Any] = {}
    batch = []
    offset = 0
    for i in range(n):
        for ev in events_of(i):
            batch.append(Message("in", 0, offset, ev["userId"].encode(), orjson.dumps(ev), T0))
            offset += 1
        if len(batch) >= 4000:
            step.run(0, batch, table, T0 + 86400 * 40)
            batch = []
    step.run(0, batch, table, T0 + 86400 * 40)
    keys = [k for k in table if not k.startswith("\x00")]
    step.redefine(new.segmentations, new.version)
    started = time.perf_counter()
    changes = written = 0
    for start in range(0, len(keys), TICK_CHUNK):
        res = step.backfill(0, table, keys[start:start + TICK_CHUNK], time.time())
        changes += len(res.changes)
        written += res.written
    seconds = time.perf_counter() - started
    return {"customers": len(keys), "rewritten": written, "changes": changes,
            "seconds": seconds, "per_s": len(keys) / seconds}


def applied(url: str) -> int:
    """Events the worker applied (0 while it is too busy to answer)."""
    try:
        return int(httpx.get(url + "/health", timeout=10).json()["stats"].get("applied", 0))
    except (httpx.HTTPError, ValueError, KeyError):
        return 0


def e2e_phase(n: int, partitions: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    with TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as b:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
        env.update({"SEGMENTER_BROKER_URL": b.url, "SEGMENTER_APP_ID": "bench-backfill",
                    "SEGMENTER_PARTITIONS": str(partitions), "SEGMENTER_WEB_PORT": str(port),
                    "SEGMENTER_DATA_DIR": str(Path(tmp) / "data"),
                    "SEGMENTER_CLUSTERING": "false", "SEGMENTER_TICK_INTERVAL_S": "3600",
                    "SEGMENTER_ADMIN_TOKEN": TOKEN, "SEGMENTER_LOG_LEVEL": "info",
                    "PYTHONUNBUFFERED": "1"})
        log = open(Path(tmp) / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "stream_app", "worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            else:
                raise SystemExit("worker not healthy in 120 s")
            producer = KafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=20,
                                     max_request_size=4 * 1024 * 1024)
            by_partition: dict[int, list[dict[str, Any]]] = {}
            t_load = time.monotonic()
            for i in range(n):
                cid = f"u-{i:07d}"
                p = partition_of(cid, partitions)
                bucket = by_partition.setdefault(p, [])
                bucket.extend(events_of(i))
                if len(bucket) >= 400:
                    producer.send("customer-interactions", orjson.dumps({"batch": bucket}),
                                  partition=p)
                    by_partition[p] = []
            for p, bucket in by_partition.items():
                if bucket:
                    producer.send("customer-interactions", orjson.dumps({"batch": bucket}),
                                  partition=p)
            producer.flush()
            producer.close()
            while applied(url) < 2 * n:
                if proc.poll() is not None:
                    raise SystemExit("the worker stopped:\n" + (Path(tmp) / "worker.log")
                                     .read_text(errors="replace")[-3000:])
                time.sleep(1.0)
            loaded = time.monotonic() - t_load
            time.sleep(3.0)  # the last batches' state settles
            # a consumer of segment-changes, through everything sent so far before the PUT
            consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=None,
                                     enable_auto_commit=False, fetch_max_bytes=16 * 1024**2)
            parts = consumer.partitions_for_topic("segment-changes") or set()
            consumer.assign([TopicPartition("segment-changes", p) for p in parts])
            consumer.seek_to_beginning()
            quiet = time.monotonic()
            while time.monotonic() - quiet < 3.0:
                if any(consumer.poll(timeout_ms=500, max_records=50_000).values()):
                    quiet = time.monotonic()
            new = default_text() + NEW_SEGMENTATION
            t_put = time.monotonic()
            r = httpx.put(url + "/admin/segmentations", content=new,
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            r.raise_for_status()
            version = r.json()["version"]
            seen = 0
            readable = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and seen < n:
                for records in consumer.poll(timeout_ms=500, max_records=50_000).values():
                    for rec in records:
                        if b'"segmentation":"value_tier"' in rec.value:
                            seen += 1
                if seen >= n:
                    readable = time.monotonic() - t_put
            while True:
                try:
                    doc = httpx.get(url + "/segmentations", timeout=10).json()
                except httpx.HTTPError:
                    continue
                last = doc["backfill"]["last"] or {}
                if last.get("version") == version and not doc["backfill"]["running"]:
                    break
                time.sleep(0.2)
            consumer.close()
            return {"customers": n, "load_seconds": loaded,
                    "worker_pass_s": last.get("seconds"), "pass_customers": last.get("customers"),
                    "pass_changes": last.get("changes"), "new_changes_read": seen,
                    "put_to_last_change_readable_s": readable}
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    s = step_phase(args.customers, args.partitions)
    print(f"step: {s['customers']:,} customers backfilled in {s['seconds']:.2f} s "
          f"({s['per_s']:,.0f}/s), {s['changes']:,} changes, {s['rewritten']:,} rewritten",
          flush=True)
    if args.skip_e2e:
        return 0
    e = e2e_phase(args.customers, args.partitions)
    print(f"end to end ({args.partitions} partitions, one worker, memory store): "
          f"{e['customers']:,} customers loaded in {e['load_seconds']:.1f} s; the worker's "
          f"pass took {e['worker_pass_s']} s ({e['pass_customers']:,} customers, "
          f"{e['pass_changes']:,} changes); {e['new_changes_read']:,} changes of the new "
          f"segmentation readable {e['put_to_last_change_readable_s']:.1f} s after the PUT",
          flush=True)
    ok = (e["put_to_last_change_readable_s"] or 1e9) < 60 and e["new_changes_read"] >= \
        args.customers
    print(f"target: {args.customers:,} customers in < 60 s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
