"""SEGMENTER_CLUSTERS_KEEP: once the customers are settled, k changes only in ways that keep
that share of the model's window in their clusters (``KMeansModel._recheck_kept``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_app.config import Settings
from stream_app.core.segmentation.clustering import Trainer, TrainerSettings
from stream_app.core.segmentation.clustering.models import (
    KMeansModel,
    _set_centres,
    kept_share,
    model_from_snapshot,
)

from .test_trainer import feats

NAMES = ("a", "b")


def blobs(rng: np.random.Generator, centres: list[tuple[float, float]], counts: list[int]
          ) -> np.ndarray:
    return np.vstack([rng.normal(c, 0.15, size=(n, 2)) for c, n in zip(centres, counts,
                                                                        strict=True)])


def model_holding(points: np.ndarray, centres: np.ndarray, keep: float) -> KMeansModel:
    """A seeded model of ``len(centres)`` clusters on ``points`` (its window)."""
    m = KMeansModel(NAMES, clusters=len(centres), window=len(points), k_min=2, k_max=6,
                    keep=keep)
    for p in points:
        m.learn_one(dict(zip(NAMES, p.tolist(), strict=True)))
    m._resize(len(centres), force=True)
    m._adopt((centres, 0.0), points)
    return m


# two groups, each made of two sub-groups: k = 4 fits better, and going from 2 to 4
# clusters moves half of each group (at least a quarter of the window)
SUB = [(0.0, 0.0), (0.0, 3.0), (8.0, 0.0), (8.0, 3.0)]  # silhouette 0.80 at k = 2, 0.91 at 4


def coarse(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    points = blobs(rng, SUB, [100, 100, 100, 100])
    return points, np.array([[0.0, 1.5], [8.0, 1.5]])


def test_unsettled_the_model_re_clusters_to_a_better_k() -> None:
    points, centres = coarse(np.random.default_rng(1))
    m = model_holding(points, centres, keep=0.95)
    assert not m._settled
    assert m._recheck_k(points)
    assert len(m.centres()) == 4


def test_settled_with_keep_a_wholesale_change_of_k_is_refused() -> None:
    points, centres = coarse(np.random.default_rng(1))
    m = model_holding(points, centres, keep=0.95)
    m.settle(True)
    assert not m._recheck_k(points)
    assert len(m.centres()) == 2
    # without keep the same settled model re-clusters (the gate is what refused)
    free = model_holding(points, centres, keep=0.0)
    free.settle(True)
    assert free._recheck_k(points) and len(free.centres()) == 4


def test_settled_with_keep_a_small_new_group_still_gets_its_own_segment() -> None:
    rng = np.random.default_rng(2)
    points = blobs(rng, [(0.0, 0.0), (5.0, 0.0), (2.5, 6.0)], [200, 200, 12])  # 3 % new
    m = model_holding(points, np.array([[0.0, 0.2], [5.0, 0.2]]), keep=0.95)
    m.settle(True)
    before = m.predict_one({"a": 0.0, "b": 0.0}), m.predict_one({"a": 5.0, "b": 0.0})
    assert m._recheck_k(points)
    assert len(m.centres()) == 3
    labels = np.array([m.predict_one(dict(zip(NAMES, p.tolist(), strict=True))) for p in points])
    assert len(set(labels[-12:])) == 1 and labels[-1] not in before  # the new group, apart
    assert labels[0] != labels[250]  # the two old groups still apart


def test_kept_share_matches_clusters_one_to_one() -> None:
    a = np.array([0, 0, 0, 1, 1, 1])
    assert kept_share(a, np.array([1, 1, 1, 0, 0, 0])) == 1.0  # renumbered, nothing moved
    assert kept_share(a, np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(5 / 6)
    assert kept_share(a, np.array([0, 0, 0, 0, 0, 0])) == pytest.approx(3 / 6)


def test_the_trainer_settles_the_model_on_the_samples_tenure_and_keeps_it_in_checkpoints(
        ) -> None:
    settings = TrainerSettings(clusters=3, clusters_keep=0.95, clusters_settle_days=60.0)
    trainer = Trainer(settings)
    young = feats(30.0, 2.0)  # tenure 20 days
    for _ in range(1000):
        trainer.learn(young)
    assert trainer.model.params["keep"] == 0.95 and not trainer.model._settled
    old = {**young, "tenure_days": 90.0}
    for _ in range(1000):
        trainer.learn(old)
    assert trainer.model._settled
    restored = Trainer.from_json(trainer.to_json())
    assert restored.model._settled and restored.settings.clusters_keep == 0.95
    snap = json.loads(json.dumps(trainer.model.to_snapshot()))
    assert model_from_snapshot(snap)._settled
    # off by default: the model is never told, and carries no keep
    plain = Trainer(TrainerSettings(clusters=3))
    for _ in range(1000):
        plain.learn(old)
    assert "keep" not in plain.model.params and not plain.model._settled


def test_a_bad_keep_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_CLUSTERS_KEEP", "1.5")
    with pytest.raises(ValueError, match="clusters_keep"):
        Settings()
    monkeypatch.setenv("SEGMENTER_CLUSTERS_KEEP", "0.95")
    assert Settings().clusters_keep == 0.95
    with pytest.raises(ValueError, match="keep"):
        KMeansModel(NAMES, keep=1.0)
    assert _set_centres  # the helper the tests above rely on, imported to fail loudly if moved
