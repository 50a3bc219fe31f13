"""The model follower: a snapshot that cannot be loaded is skipped, and the newer ones
behind it are loaded (a bad one once made the follower restart from the beginning every 2 s,
so nothing newer was ever loaded)."""

from __future__ import annotations

import orjson
import pytest
from kafka import KafkaProducer

from stream_app.core.segmentation.clustering import Trainer, TrainerSettings
from stream_app.host.modeling import MODEL_KEY

from ..unit.test_trainer import stream
from .conftest import wait_for

pytestmark = pytest.mark.integration


def snapshots(n: int) -> list[dict]:
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=500))
    out = []
    for f in stream(500 * (n + 1), seed=4):
        trainer.learn(f)
        snap = trainer.maybe_snapshot(0.0)
        if snap is not None:
            out.append(snap)
        if len(out) == n:
            return out
    raise AssertionError("trainer published too few snapshots")


def test_an_unloadable_snapshot_is_skipped_and_newer_ones_load(broker, worker_factory):
    first, second = snapshots(2)
    w = worker_factory(model_min_learned="100").start()
    topic = w.env["SEGMENTER_APP_ID"] + "-model"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    bad_features = {**second, "version": 99, "features": ["nonsense"]}
    for value in (orjson.dumps(first), b"{not json", orjson.dumps([1, 2]),
                  orjson.dumps(bad_features), orjson.dumps({**second, "segments": None}),
                  orjson.dumps(second)):
        producer.send(topic, key=MODEL_KEY, value=value, partition=0)
    producer.flush()
    producer.close()

    def loaded():
        doc = w.get("/segments").json()
        behavior = next(s for s in doc["segmentations"] if s["name"] == "behavior")
        return behavior.get("version") == second["version"] and behavior

    wait_for(loaded, timeout=60, what=f"model version {second['version']} loaded")
    assert w.proc is not None and w.proc.poll() is None
