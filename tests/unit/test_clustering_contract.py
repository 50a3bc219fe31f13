"""One contract, checked against every clustering configuration the service offers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from stream_app.config import ClusterModel
from stream_app.core.segmentation.clustering.models import (
    MODELS,
    Clusterer,
    make_model,
    model_from_snapshot,
)
from stream_app.core.segmentation.clustering.vectorize import FEATURES

CONFIGURATIONS = sorted(MODELS)


def blobs(n: int = 3000, seed: int = 0) -> tuple[list[dict[str, float]], np.ndarray]:
    """Three well-separated groups in the model's feature space."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, len(FEATURES)))
    centres[0, :4], centres[1, 4:8], centres[2, 8:] = 3.0, 3.0, -3.0
    labels = rng.integers(0, 3, n)
    points = centres[labels] + rng.normal(0.0, 0.2, (n, len(FEATURES)))
    return [dict(zip(FEATURES, p.tolist(), strict=True)) for p in points], labels


POINTS, LABELS = blobs()
PROBES = POINTS[:200]
# One diffuse group: density models find several touching micro-clusters here (River's
# DenStream then merges them in predict_one, which once altered the live model).
CLOUD = [dict(zip(FEATURES, p, strict=True))
         for p in np.random.default_rng(1).normal(0.0, 0.6, (3000, len(FEATURES))).tolist()]


def trained(algorithm: str, points: list[dict[str, float]] = POINTS) -> Clusterer:
    model = make_model(algorithm, clusters=3, seed=7)
    for x in points:
        model.learn_one(x)
    return model


def roundtrip(model: Clusterer) -> Clusterer:
    doc = json.loads(json.dumps(model.to_snapshot(), allow_nan=False))
    return model_from_snapshot(doc)


def test_every_configured_algorithm_is_offered() -> None:
    assert set(CONFIGURATIONS) == {m.value for m in ClusterModel}


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
@pytest.mark.parametrize("learned", [0, 1, 5])
def test_untrained_model_knows_nothing(algorithm: str, learned: int) -> None:
    model = trained(algorithm, POINTS[:learned])
    assert model.predict_one(POINTS[0]) is None
    assert model.centres() == {}


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
def test_learn_and_predict_types(algorithm: str) -> None:
    model = make_model(algorithm, clusters=3)
    assert all(model.learn_one(x) is None for x in POINTS)
    centres = model.centres()
    assert centres, "a model trained on 3000 points has clusters"
    for raw_id, centre in centres.items():
        assert isinstance(raw_id, int)
        assert len(centre) == len(FEATURES)
        assert all(isinstance(v, float) and np.isfinite(v) for v in centre)
    for x in PROBES:
        predicted = model.predict_one(x)
        assert isinstance(predicted, int) and predicted in centres


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
def test_snapshot_round_trip_reproduces_predictions_and_learning(algorithm: str) -> None:
    model = trained(algorithm, POINTS[:2000])
    restored = roundtrip(model)
    assert restored.centres() == model.centres()
    assert [restored.predict_one(x) for x in PROBES] == [model.predict_one(x) for x in PROBES]
    # the restored model also goes on learning exactly as the original does
    for x in POINTS[2000:]:
        model.learn_one(x)
        restored.learn_one(x)
    assert restored.to_snapshot() == model.to_snapshot()
    assert [restored.predict_one(x) for x in PROBES] == [model.predict_one(x) for x in PROBES]


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
@pytest.mark.parametrize("learned", [0, 1, 150])
def test_snapshot_round_trip_while_warming_up(algorithm: str, learned: int) -> None:
    model = trained(algorithm, POINTS[:learned])
    restored = roundtrip(model)
    assert [restored.predict_one(x) for x in PROBES] == [model.predict_one(x) for x in PROBES]
    for x in POINTS[learned:1500]:
        model.learn_one(x)
        restored.learn_one(x)
    assert restored.to_snapshot() == model.to_snapshot()


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
def test_deterministic_given_seed(algorithm: str) -> None:
    assert trained(algorithm).to_snapshot() == trained(algorithm).to_snapshot()


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
def test_neither_learning_nor_predicting_mutates_input(algorithm: str) -> None:
    model = make_model(algorithm, clusters=3)
    originals = copy.deepcopy(POINTS[:1500])
    for x in POINTS[:1500]:
        model.learn_one(x)
    for x in PROBES:
        model.predict_one(x)
    assert POINTS[:1500] == originals


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
@pytest.mark.parametrize("points", [POINTS, CLOUD], ids=["blobs", "cloud"])
def test_predicting_does_not_change_the_model(algorithm: str, points: list[dict[str, float]]
                                              ) -> None:
    model = trained(algorithm, points)
    before = model.to_snapshot()
    for x in points[:200]:
        model.predict_one(x)
    model.centres()
    assert model.to_snapshot() == before


@pytest.mark.parametrize("algorithm", CONFIGURATIONS)
def test_missing_feature_is_an_error(algorithm: str) -> None:
    model = make_model(algorithm)
    partial = dict(POINTS[0])
    del partial[FEATURES[3]]
    with pytest.raises(KeyError):
        model.learn_one(partial)


def test_unknown_algorithm_and_format_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown clustering algorithm"):
        make_model("birch")
    doc = make_model("kmeans").to_snapshot()
    with pytest.raises(ValueError, match="format"):
        model_from_snapshot({**doc, "format": 99})
