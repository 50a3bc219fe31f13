"""Gradual transitions (issue 14): a model version moves at most the budget's share of the
trainer's sample to another segment, and the published segments still reach the model's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.segmentation.clustering import profiles
from stream_app.core.segmentation.clustering.trainer import Trainer, TrainerSettings
from stream_app.core.segmentation.clustering.transition import step
from stream_app.core.segmentation.clustering.vectorize import Scaling, vectorize

from .test_stable_ids import _feats


def blobs(rng: np.random.Generator, centres: list[list[float]], n: int) -> np.ndarray:
    return np.vstack([rng.normal(c, 0.3, size=(n, len(c))) for c in centres])


def nearest(sample: np.ndarray, centres: dict[str, np.ndarray]) -> list[str]:
    ids = list(centres)
    return [ids[i] for i in profiles.assign(sample, np.array([centres[i] for i in ids]))]


def test_a_cheap_change_is_published_at_once() -> None:
    rng = np.random.default_rng(1)
    sample = blobs(rng, [[0, 0], [5, 0]], 200)
    start = {"b1": np.array([0.0, 0.0]), "b2": np.array([5.0, 0.0])}
    target = {"b1": np.array([0.1, 0.0]), "b2": np.array([5.1, 0.0])}
    out = step(start, target, sample, 0.02)
    assert out.fraction == 1.0 and set(out.positions) == {"b1", "b2"}
    assert np.allclose(out.positions["b1"], target["b1"])


def test_a_split_comes_in_a_budget_at_a_time_and_arrives() -> None:
    rng = np.random.default_rng(2)
    # two groups under one segment; the model now has a segment for each
    sample = blobs(rng, [[0, 0], [3, 0], [10, 0]], 300)
    positions = {"b1": np.array([1.5, 0.0]), "b2": np.array([10.0, 0.0])}
    target = {"b1": np.array([0.0, 0.0]), "b2": np.array([10.0, 0.0]),
              "b3": np.array([3.0, 0.0])}
    steps = 0
    published = dict(positions)
    while True:
        held = nearest(sample, published)
        out = step(positions, target, sample, 0.05)
        shown = {sid: c for sid, c in out.positions.items()
                 if out.held[sid] > 0 or sid in published}
        moved = np.mean([a != b for a, b in zip(held, nearest(sample, shown), strict=True)])
        assert moved <= 0.05 + 1e-9
        positions, published, steps = out.positions, shown, steps + 1
        if out.fraction == 1.0:
            break
        assert steps < 100
    assert steps > 4  # a third of the sample moves: at least 7 steps of 5 %
    assert set(published) == {"b1", "b2", "b3"}
    assert np.allclose(published["b3"], target["b3"])


def test_a_segment_that_goes_away_hands_its_customers_over_and_leaves() -> None:
    rng = np.random.default_rng(3)
    sample = blobs(rng, [[0, 0], [3, 0], [10, 0]], 300)
    positions = {"b1": np.array([0.0, 0.0]), "b2": np.array([3.0, 0.0]),
                 "b3": np.array([10.0, 0.0])}
    target = {"b1": np.array([1.5, 0.0]), "b3": np.array([10.0, 0.0])}
    for _ in range(100):
        out = step(positions, target, sample, 0.05)
        assert out.moved <= 0.05 + 1e-9
        positions = {sid: c for sid, c in out.positions.items()
                     if sid in target or out.held[sid] > 0}
        if out.fraction == 1.0:
            break
    assert set(positions) == {"b1", "b3"}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), k_from=st.integers(1, 5), k_to=st.integers(1, 5),
       budget=st.sampled_from([0.01, 0.03, 0.1]))
def test_no_step_moves_more_than_the_budget(seed: int, k_from: int, k_to: int,
                                            budget: float) -> None:
    rng = np.random.default_rng(seed)
    sample = rng.normal(0, 3, size=(300, 3))
    start = {f"b{i}": rng.normal(0, 3, size=3) for i in range(k_from)}
    target = {f"b{i + 2}": rng.normal(0, 3, size=3) for i in range(k_to)}  # some shared ids
    out = step(start, target, sample, budget)
    assert out.moved <= budget + 1e-9 or out.fraction == 0.0
    if out.fraction == 0.0:  # nothing moved at all: the start as it was
        assert out.moved == 0.0
        assert all(np.allclose(out.positions[sid], c) for sid, c in start.items())
    held = nearest(sample, start)
    now = nearest(sample, out.positions)
    assert np.mean([a != b for a, b in zip(held, now, strict=True)]) == out.moved


def test_the_trainer_bounds_every_version_and_still_follows_a_new_group() -> None:
    budget = 0.02
    trainer = Trainer(TrainerSettings(clusters=4, clusters_max=0, snapshot_every=500,
                                      min_share=0.05, move_budget=budget))
    rng = np.random.default_rng(7)
    groups = [(2.0, 0.0), (40.0, 0.0), (10.0, 8.0), (25.0, 20.0)]
    snapshots: list[dict] = []
    partial = 0
    for rounds, present in ((60, [0, 1, 2]), (400, [0, 1, 2, 3])):
        for _ in range(rounds):
            for _ in range(50):
                views, orders = groups[present[rng.integers(len(present))]]
                trainer.learn(_feats(views * rng.uniform(0.8, 1.25), orders))
            before = trainer.last
            snapshot = trainer.maybe_snapshot(0.0)
            if snapshot is None:
                continue
            snapshots.append(snapshot)
            partial += trainer.in_transit
            if before is None or before["scaling"] != snapshot["scaling"]:
                continue  # a new generation: its scaling moves borders by itself
            sample = np.array([x for x, _, _ in trainer._sample])
            moved = np.mean([a != b for a, b in zip(_held(before, sample),
                                                     _held(snapshot, sample), strict=True)])
            assert moved <= budget + 1e-9, (snapshot["version"], moved)
    assert partial > 0  # the new group came in over several versions ...
    assert not trainer.in_transit  # ... and arrived
    last = snapshots[-1]
    typical = np.array([vectorize(_feats(v, o)) for v, o in groups])
    assert len(set(_held(last, typical))) == 4  # the new group has a segment of its own
    assert len(last["segments"]) == 4, [s["set_changes"] for s in snapshots]


def _held(snapshot: dict, sample: np.ndarray) -> list[str]:
    scaling = Scaling.from_json(snapshot["scaling"])
    centres = {seg["id"]: np.array(seg["centre"]) for seg in snapshot["segments"]}
    return nearest(scaling.scale(sample), centres)
