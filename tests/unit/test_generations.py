"""Issue 14: a scaling fixed per model generation, features out of use, k from the data,
set-change events, and re-scoring when a model version loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_app.core.segmentation.clustering import BehaviorSegmentation, Trainer, TrainerSettings
from stream_app.core.segmentation.clustering.models import choose_k, silhouette
from stream_app.core.segmentation.clustering.stable import set_changes
from stream_app.core.segmentation.clustering.vectorize import (
    FEATURES,
    MIN_STD,
    fit_scaling,
    vectorize,
    vectorize_many,
)
from stream_app.host.modeling import SET_CHANGE_PREFIX, set_change_records

from .test_trainer import feats, stream

EMAIL = FEATURES.index("email_opens_per_month")
VIEWS = FEATURES.index("product_views_per_month")


def test_fit_scaling_leaves_out_features_nobody_uses() -> None:
    x = vectorize_many(stream(500))
    x[:, EMAIL] = 0.0  # a shop without e-mail ...
    x[:3, VIEWS] = 0.0
    x[3:, VIEWS] = 0.0
    x[:3, VIEWS] = 0.7  # ... and browsing seen for 3 customers in 500 (below 2 %)
    scaling = fit_scaling(x)
    assert not scaling.active[EMAIL] and not scaling.active[VIEWS]
    z = scaling.scale(x)
    assert np.all(z[:, EMAIL] == 0.0) and np.all(z[:, VIEWS] == 0.0)
    assert scaling.active[FEATURES.index("orders")]
    assert np.all(scaling.std >= MIN_STD)
    # the plain-Python distance of one customer agrees with the batch scoring
    seg = BehaviorSegmentation(min_learned=1)
    centres = z[:4]
    seg.load({"format": 1, "segmentation": "behavior", "version": 1, "n_learned": 10,
              "features": list(FEATURES), "scaling": scaling.to_json(), "retired": [],
              "algorithm": "kmeans", "params": {}, "created_at": 0.0,
              "segments": [{"id": f"b{i}", "name": f"s{i}", "centre": c.tolist(),
                            "profile": {}} for i, c in enumerate(centres)]})
    one = feats(30.0, 2.0)
    batch = seg.score_many([one])
    assert batch is not None
    assert np.allclose(seg.distances(one), batch.distances[0])


def test_the_scaling_stays_fixed_within_a_generation_and_moves_on_drift() -> None:
    # drift=1.0 (the default is 3.0) so that a tenfold change of one feature is a drift
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=1000, snapshot_min=1,
                                      drift=1.0))
    snaps = []
    for i, f in enumerate(stream(6000)):
        trainer.learn(f)
        if (i + 1) % 1000 == 0:
            snaps.append(trainer.maybe_snapshot(float(i)))
    steady = [s for s in snaps if s is not None]
    assert len(steady) >= 4
    assert len({json.dumps(s["scaling"]) for s in steady}) == 1  # a steady population
    assert {s["generation"] for s in steady} == {1}
    ids = [tuple(seg["id"] for seg in s["segments"]) for s in steady]
    assert len(set(ids)) == 1 and all(not s["set_changes"] for s in steady[1:])
    # the population moves: everyone browses ten times as much
    for f in stream(3000, seed=1):
        trainer.learn({**f, "product_views": 10.0 * f["product_views"]})
    moved = trainer.maybe_snapshot(10_000.0)
    assert moved is not None and moved["generation"] == 2
    assert moved["scaling"] != steady[-1]["scaling"]


def test_checkpoint_keeps_the_generation() -> None:
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=1000))
    for f in stream(2500):
        trainer.learn(f)
    restored = Trainer.from_json(trainer.to_json())
    assert restored.generation == trainer.generation >= 1
    assert restored.scaling is not None and trainer.scaling is not None
    assert np.array_equal(restored.scaling.mean, trainer.scaling.mean)
    for f in stream(1500, seed=3):
        trainer.learn(f)
        restored.learn(f)
    assert restored.maybe_snapshot(5.0) == trainer.maybe_snapshot(5.0)


def test_choose_k_finds_separated_groups() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 6.0, size=(5, 4))
    points = np.concatenate([c + rng.normal(0.0, 0.5, size=(120, 4)) for c in centres])
    k, fitted, _ = choose_k(points, 2, 9, 3, np.random.default_rng(1))
    assert k == 5 and fitted.shape == (5, 4)
    labels = np.repeat(np.arange(5), 120)
    assert silhouette(points, labels) > 0.7
    assert silhouette(points, rng.integers(0, 5, len(points))) < 0.1


def test_the_trainer_chooses_k_within_bounds() -> None:
    trainer = Trainer(TrainerSettings(clusters=8, clusters_min=2, clusters_max=6,
                                      snapshot_every=3000))
    for f in stream(3000):
        trainer.learn(f)
    snapshot = trainer.maybe_snapshot(1.0)
    assert snapshot is not None
    assert len(snapshot["segments"]) == 3  # three groups in the stream, not 8
    assert snapshot["params"]["k_min"] == 2 and snapshot["params"]["k_max"] == 6


def test_set_changes_name_what_happened() -> None:
    prev = {"b1": [0.0, 0.0], "b2": [10.0, 0.0], "b3": [0.0, 10.0], "b4": [30.0, 30.0]}
    cur = {"b1": [0.1, 0.0], "b5": [1.5, 0.0], "b2": [9.0, 0.0], "b6": [-30.0, 5.0]}
    out = set_changes(prev, cur, max_distance=1.0)
    assert {"change": "split", "segment": "b5", "from": "b1"} in out
    assert {"change": "appeared", "segment": "b6"} in out
    assert {"change": "retired", "segment": "b3"} in out
    assert {"change": "retired", "segment": "b4"} in out
    merged = set_changes({"b1": [0.0, 0.0], "b2": [1.2, 0.0]}, {"b1": [0.6, 0.0]},
                         max_distance=1.0)
    assert merged == [{"change": "merged", "segment": "b2", "into": "b1"}]


def test_set_change_records_and_the_dashboard_description() -> None:
    snapshot = {"segmentation": "behavior", "version": 7, "generation": 2, "created_at": 5.0,
                "segments": [{"id": "b9", "name": "Window shoppers"}],
                "set_changes": [{"change": "appeared", "segment": "b9"},
                                {"change": "merged", "segment": "b3", "into": "b9"}]}
    records = set_change_records(snapshot)
    assert [k for k, _ in records] == [SET_CHANGE_PREFIX + b"7:0", SET_CHANGE_PREFIX + b"7:1"]
    docs = [json.loads(v) for _, v in records]
    assert docs[0]["type"] == "segment_set_change" and docs[0]["segment_name"] == "Window shoppers"
    assert docs[1]["into_name"] == "Window shoppers" and docs[1]["version"] == 7

    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=3000))
    for f in stream(3000):
        trainer.learn(f)
    first = trainer.maybe_snapshot(1.0)
    assert first is not None
    seg = BehaviorSegmentation(min_learned=1000)
    seg.load(first)
    described = seg.describe()
    assert described["generation"] == 1
    assert {c["change"] for c in described["set_changes"]} == {"appeared"}
    assert all(c["version"] == 1 and c.get("name") for c in described["set_changes"])


@pytest.mark.parametrize("rescore", [True, False])
def test_customers_are_rescored_when_the_first_model_loads(rescore: bool) -> None:
    from stream_app.evaluation import Evaluation, EvaluationSettings
    from stream_app.simulate_long import horizon_populations

    pop = horizon_populations(customers=150, days=120.0)[1]
    ev = Evaluation(EvaluationSettings(trainer=TrainerSettings(snapshot_every=500),
                                       min_learned=1000, rescore=rescore))
    ev.feed(pop)
    r = ev.finish()
    assert r.first_ready_at is not None
    if rescore:  # every customer with data holds a segment at once
        assert r.unassigned_after_first_ready == 0
    else:  # without re-scoring, customers wait for their next event or tick
        assert r.unassigned_after_first_ready > 10
    assert len(r.members) == r.customers  # after the final tick everyone has one


def test_vectorize_is_unchanged_by_the_scaling_work() -> None:
    one = feats(10.0, 2.0)
    assert np.allclose(vectorize(one), vectorize_many([one])[0])
