"""Segment sizes kept from the changes equal a recount of the stored states (what a worker
does after a rebalance), at every step of a simulated stream."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from stream_app.config import load_settings
from stream_app.core.pipeline import Pipeline
from stream_app.core.processing import DELETED, Message
from stream_app.core.routing import partition_of
from stream_app.core.segmentation.registry import build_segmentations
from stream_app.core.state.sizes import SegmentSizes
from stream_app.simulate import simulate


def test_sizes_from_changes_equal_a_recount_of_the_table(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, partitions=2)
    pipeline = Pipeline(s, build_segmentations(s))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = list(simulate(customers=80, days=30, seed=3, start=start))
    table: dict[str, object] = {}
    kept = SegmentSizes()
    moved = 0
    for i in range(0, len(events), 50):
        by_partition: dict[int, list[Message]] = {}
        for j, event in enumerate(events[i:i + 50]):
            key = str(event.get("userId") or event.get("anonymousId"))
            p = partition_of(key, s.partitions)
            by_partition.setdefault(p, []).append(
                Message(s.input_topic, p, i + j, key.encode(), orjson.dumps(event),
                        start.timestamp()))
        for p, msgs in sorted(by_partition.items()):
            done = pipeline.run(p, msgs, table, start.timestamp() + 86400 * 40)
            for key, entry in done.writes.items():
                if entry is DELETED:
                    table.pop(key, None)
                else:
                    table[key] = entry
            kept.account(p, done.result.changes)
            moved += len(done.result.changes)
        counted = SegmentSizes()
        counted.recount(range(s.partitions), table.items(),
                        lambda cid: partition_of(cid, s.partitions))
        assert kept.totals(range(s.partitions)) == counted.totals(range(s.partitions))
    assert moved > 100
    assert sum(kept.totals([0]).get("rfm", {}).values()) > 0
