"""The trainer: snapshot cadence and format, checkpoint and resume, the sampling throttle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_app.core.segmentation.clustering import (
    BehaviorSegmentation,
    Trainer,
    TrainerSettings,
    learn_due,
)
from stream_app.core.segmentation.clustering.vectorize import FEATURES

GROUPS = [(2.0, 0.0), (40.0, 0.0), (10.0, 8.0)]  # (product views, orders) per group


def feats(views: float, orders: float) -> dict[str, object]:
    return {"tenure_days": 20.0, "recency_days": 3.0 if orders else 3650.0, "orders": orders,
            "orders_per_month": orders, "revenue": 40.0 * orders,
            "avg_order_value": 40.0 if orders else 0.0, "product_views": views,
            "cart_adds": views / 4, "engagement_recent": views + 3 * orders,
            "email_opens": 2.0, "email_click_rate": 0.5,
            "preferred_channel": "web" if orders else "mobile",
            "top_category": "books" if views > 20 else "toys"}


def stream(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        views, orders = GROUPS[rng.integers(3)]
        out.append(feats(views * rng.uniform(0.8, 1.25), orders))
    return out


@pytest.mark.parametrize("algorithm", ["kmeans", "streamkmeans", "dbstream", "denstream"])
def test_snapshot_format_and_scoring(algorithm: str) -> None:
    trainer = Trainer(TrainerSettings(algorithm=algorithm, clusters=3, snapshot_every=3000))
    for f in stream(3000):
        trainer.learn(f)
    snapshot = trainer.maybe_snapshot(123.0)
    assert snapshot is not None
    doc = json.loads(json.dumps(snapshot, allow_nan=False))
    assert doc["version"] == 1 and doc["algorithm"] == algorithm
    assert doc["n_learned"] == 3000 and doc["created_at"] == 123.0
    assert doc["features"] == list(FEATURES)
    assert doc["segments"] and all(len(s["centre"]) == len(FEATURES) for s in doc["segments"])
    names = [s["name"] for s in doc["segments"]]
    assert len(set(names)) == len(names)
    seg = BehaviorSegmentation(min_learned=1000)
    assert seg.load(doc)
    assert seg.describe()["status"] == "ready"


def test_cadence_by_count_then_by_time() -> None:
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=1500, snapshot_every_s=60.0,
                                      snapshot_min=50))
    data = stream(2000)
    for f in data[:1400]:
        trainer.learn(f)
    assert trainer.maybe_snapshot(0.0) is not None  # first one: no earlier snapshot
    for f in data[1400:1440]:
        trainer.learn(f)
    assert trainer.maybe_snapshot(1000.0) is None  # time is up, but only 40 new samples
    for f in data[1440:1500]:
        trainer.learn(f)
    assert trainer.maybe_snapshot(30.0) is None  # 100 samples, but only 30 s later
    second = trainer.maybe_snapshot(61.0)
    assert second is not None and second["version"] == 2
    assert trainer.maybe_snapshot(62.0) is None  # nothing new


def test_no_snapshot_before_warmup() -> None:
    trainer = Trainer(TrainerSettings(snapshot_every=10, warmup=200))
    for f in stream(150):
        trainer.learn(f)
    assert trainer.maybe_snapshot(1e9) is None


def test_resumed_trainer_continues_identically() -> None:
    settings = TrainerSettings(clusters=3, snapshot_every=700)
    data = stream(4000, seed=1)
    original = Trainer(settings)
    for f in data[:2100]:
        original.learn(f)
        original.maybe_snapshot(0.0)
    resumed = Trainer.from_json(original.to_json())
    assert resumed.to_json() == original.to_json()
    out_a, out_b = [], []
    for f in data[2100:]:
        original.learn(f)
        resumed.learn(f)
        out_a.append(original.maybe_snapshot(0.0))
        out_b.append(resumed.maybe_snapshot(0.0))
    assert out_a == out_b and any(s is not None for s in out_a)


def test_checkpoint_format_is_checked() -> None:
    with pytest.raises(ValueError, match="format"):
        Trainer.from_json(b'{"format": 0}')


def test_learn_due_throttles_per_customer() -> None:
    assert learn_due(None, 5.0)
    assert not learn_due(0.0, 86399.0)
    assert learn_due(0.0, 86400.0)
    assert learn_due(0.0, 10.0, every_s=10.0)


def test_a_trainer_resumed_from_an_older_checkpoint_never_reissues_a_version_or_an_id() -> None:
    """The checkpoint is written after the snapshot: a crash between leaves it one version
    behind what subscribers already saw. ``catch_up`` with the last published snapshot keeps
    versions increasing and never mints an id that snapshot used."""
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=700))
    data = iter(stream(20000, seed=2))
    checkpoint, published = None, None
    while published is None or published["version"] < 2:
        trainer.learn(next(data))
        snap = trainer.maybe_snapshot(0.0)
        if snap is not None:
            published = snap
            if checkpoint is None:
                checkpoint = trainer.to_json()  # version 1's; version 2's is "lost"
    stale = Trainer.from_json(checkpoint)
    assert stale.version == 1 and published["version"] == 2
    stale.catch_up(published)
    assert stale.version == 2
    used = {s["id"] for s in published["segments"]} | set(published.get("retired", ()))
    assert all(int(i[1:]) < stale.next_id for i in used)
    for f in data:
        stale.learn(f)
        snap = stale.maybe_snapshot(0.0)
        if snap is not None:
            assert snap["version"] == 3
            assert all(int(s["id"][1:]) < stale.next_id for s in snap["segments"])
            return
    pytest.fail("no snapshot after resuming")
