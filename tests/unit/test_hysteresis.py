"""BehaviorSegmentation: hysteresis, cold start and snapshot loading.

The snapshots here are written by hand in the published format, with an identity scaling,
so every distance is easy to reason about: segments ``b1`` (no product views) and ``b2``
(e^4 - 1 views a month) differ on one axis only, 4 units apart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stream_app.core.segmentation.base import Decision
from stream_app.core.segmentation.clustering import BehaviorSegmentation, Hysteresis
from stream_app.core.segmentation.clustering.segmentation import WARMING_UP
from stream_app.core.segmentation.clustering.vectorize import FEATURES, vectorize
from stream_app.core.state.customer import CustomerState


def feats(views: float) -> dict[str, Any]:
    """Features of a customer who differs from the others only in product views."""
    return {"tenure_days": 10.0, "recency_days": 3650.0, "orders": 0.0,
            "orders_per_month": 0.0, "revenue": 0.0, "avg_order_value": 0.0,
            "product_views": views, "cart_adds": 0.0, "engagement_recent": 0.0,
            "email_opens": 0.0, "email_click_rate": 0.0}


AT_B1, AT_B2 = feats(0.0), feats(math.expm1(4.0))


def views_at(position: float) -> dict[str, Any]:
    """A customer ``position`` units along the b1 -> b2 axis (0 = b1, 4 = b2)."""
    return feats(math.expm1(position))


def snapshot(version: int = 1, n_learned: int = 5000, segments: dict[str, dict[str, Any]] | None
             = None) -> dict[str, Any]:
    segments = {"b1": AT_B1, "b2": AT_B2} if segments is None else segments
    return {
        "format": 1, "segmentation": "behavior", "version": version, "algorithm": "kmeans",
        "params": {}, "created_at": 0.0, "n_learned": n_learned, "features": list(FEATURES),
        "scaling": {"mean": [0.0] * len(FEATURES), "std": [1.0] * len(FEATURES)},
        "retired": [],
        "segments": [{"id": sid, "name": f"segment {sid}", "centre": vectorize(f).tolist(),
                      "profile": {"size": 1, "share": 0.5}} for sid, f in segments.items()],
    }


def ready(hysteresis: Hysteresis | None = None) -> BehaviorSegmentation:
    seg = BehaviorSegmentation(hysteresis or Hysteresis(margin=0.1, confirmations=2),
                               min_learned=1000)
    assert seg.load(snapshot())
    return seg


class Customer:
    """Plays the worker: stores the membership and aux the segmentation hands back."""

    def __init__(self, seg: BehaviorSegmentation) -> None:
        self.seg = seg
        self.state = CustomerState("c1")
        self.aux: Any = None
        self.changes: list[tuple[str | None, str | None]] = []

    def see(self, f: dict[str, Any]) -> Decision:
        d = self.seg.decide(self.state, f, 0.0, self.aux, explain=True)
        before = self.state.segments.get(self.seg.name)
        if d.segment != before:
            self.changes.append((before, d.segment))
            if d.segment is None:
                self.state.segments.pop(self.seg.name, None)
            else:
                self.state.segments[self.seg.name] = d.segment
        self.aux = d.aux
        return d


def test_first_evaluation_assigns_the_nearest_segment() -> None:
    d = Customer(ready()).see(views_at(1.0))
    assert (d.segment, d.segment_name, d.version) == ("b1", "segment b1", 1)
    assert d.reason == "nearest centre"
    assert d.why["distance"] == pytest.approx(1.0, abs=1e-3)


def wobble(customer: Customer) -> None:
    customer.see(views_at(1.9))
    for step in range(40):  # crosses the midpoint (2.0) on every event
        customer.see(views_at(2.1 if step % 2 == 0 else 1.9))


def test_boundary_customer_does_not_flap() -> None:
    customer = Customer(ready())
    wobble(customer)
    assert customer.changes == [(None, "b1")]


def test_without_hysteresis_the_same_customer_flaps() -> None:
    customer = Customer(ready(Hysteresis(margin=0.0, confirmations=1)))
    wobble(customer)
    assert len(customer.changes) == 41


def test_within_margin_is_kept_even_when_confirmed_repeatedly() -> None:
    customer = Customer(ready())
    customer.see(views_at(1.0))
    for _ in range(10):  # 2.08 vs 1.92: b2 nearer by 8 %, under the 10 % margin
        d = customer.see(views_at(2.08))
    assert d.segment == "b1" and "not closer by the margin" in d.reason and d.aux is None


def test_clear_move_switches_after_confirmations() -> None:
    customer = Customer(ready(Hysteresis(margin=0.1, confirmations=3)))
    customer.see(AT_B1)
    first = customer.see(AT_B2)
    second = customer.see(AT_B2)
    assert (first.segment, second.segment) == ("b1", "b1")
    assert first.aux == {"c": "b2", "n": 1} and second.aux == {"c": "b2", "n": 2}
    assert second.why["pending"] == {"segment": "b2", "count": 2, "needed": 3}
    third = customer.see(AT_B2)
    assert third.segment == "b2" and third.aux is None
    assert customer.changes == [(None, "b1"), ("b1", "b2")]


def test_an_interrupted_candidate_starts_counting_again() -> None:
    customer = Customer(ready(Hysteresis(margin=0.1, confirmations=2)))
    customer.see(AT_B1)
    assert customer.see(AT_B2).segment == "b1"
    assert customer.see(AT_B1).aux is None  # back home: the pending move is forgotten
    assert customer.see(AT_B2).segment == "b1"
    assert customer.see(AT_B2).segment == "b2"


def test_retired_segment_moves_at_once() -> None:
    seg = ready()
    customer = Customer(seg)
    customer.see(AT_B2)
    assert seg.load(snapshot(version=2, segments={"b1": AT_B1, "b3": feats(math.expm1(5.0))}))
    d = customer.see(AT_B2)
    assert d.segment == "b3" and d.reason == "segment b2 retired" and d.version == 2


def test_cold_start_without_snapshot() -> None:
    seg = BehaviorSegmentation()
    d = seg.decide(CustomerState("c1"), AT_B1, 0.0, None, explain=True)
    assert d.segment is None and d.reason == WARMING_UP and d.version is None
    assert seg.describe()["status"] == "no model"


def test_cold_start_with_an_immature_model() -> None:
    seg = BehaviorSegmentation(min_learned=1000)
    seg.load(snapshot(n_learned=999))
    state = CustomerState("c1")
    d = seg.decide(state, AT_B1, 0.0, None, explain=True)
    assert (d.segment, d.reason, d.version) == (None, WARMING_UP, 1)
    assert seg.describe()["status"] == "warming up"
    seg.load(snapshot(version=2, n_learned=1000))
    assert seg.decide(state, AT_B1, 0.0, None, explain=True).segment == "b1"


def test_restarted_worker_keeps_memberships_until_a_snapshot_arrives() -> None:
    state = CustomerState("c1", segments={"behavior": "b2"})
    d = BehaviorSegmentation().decide(state, AT_B1, 0.0, None, explain=True)
    assert d.segment == "b2" and d.version is None


def test_older_or_equal_versions_are_ignored() -> None:
    seg = BehaviorSegmentation(min_learned=0)
    assert seg.load(snapshot(version=5))
    assert not seg.load(snapshot(version=5, segments={"b9": AT_B1}))
    assert not seg.load(snapshot(version=4, segments={"b9": AT_B1}))
    assert seg.version == 5 and [s["id"] for s in seg.describe()["segments"]] == ["b1", "b2"]


def test_snapshots_for_other_features_are_refused() -> None:
    bad = snapshot()
    bad["features"] = list(reversed(FEATURES))
    with pytest.raises(ValueError, match="feature list"):
        BehaviorSegmentation().load(bad)


def test_batch_scoring_matches_single_evaluation_and_plain_distances() -> None:
    seg = ready()
    positions = [0.0, 1.0, 1.99, 2.5, 4.0, 6.0]
    batch = [feats(math.expm1(p)) for p in positions]
    scores = seg.score_many(batch)
    assert scores is not None and scores.ids == ("b1", "b2")
    expected = np.array([[abs(p), abs(p - 4.0)] for p in positions])
    np.testing.assert_allclose(scores.distances, expected, atol=1e-9)
    assert scores.nearest() == ["b1", "b1", "b1", "b2", "b2", "b2"]
    states = [CustomerState(f"c{i}") for i in range(len(batch))]
    many = seg.evaluate_many(states, batch, 0.0, [None] * len(batch))
    assert many == [seg.decide(s, f, 0.0, None, explain=True) for s, f in zip(states, batch, strict=True)]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        Hysteresis(margin=1.0)
    with pytest.raises(ValueError):
        Hysteresis(confirmations=0)


def test_one_customer_scored_in_python_as_numpy_scores_a_batch() -> None:
    """The worker scores one customer at a time in plain Python; a batch goes through numpy.
    Same transforms, scaling and distances, on a model with a real scaling and seven centres,
    for customers anywhere in the feature space (negative inputs clip, as in numpy)."""
    rng = np.random.default_rng(7)
    names = ("tenure_days", "recency_days", "orders", "orders_per_month", "revenue",
             "avg_order_value", "product_views", "cart_adds", "engagement_recent",
             "email_opens")

    def random_feats() -> dict[str, Any]:
        f = {k: float(rng.choice([0.0, -1.0, rng.lognormal(2, 2)])) for k in names}
        f["email_click_rate"] = float(rng.uniform(0, 1))
        return f

    centres = {f"s{i}": random_feats() for i in range(7)}
    snap = snapshot(segments=centres)
    snap["scaling"] = {"mean": rng.normal(1, 1, len(FEATURES)).tolist(),
                       "std": rng.uniform(0.2, 3, len(FEATURES)).tolist()}
    seg = BehaviorSegmentation(min_learned=1000)
    assert seg.load(snap)
    batch = [random_feats() for _ in range(300)]
    scores = seg.score_many(batch)
    assert scores is not None
    one = np.array([seg.distances(f) for f in batch])
    np.testing.assert_allclose(one, scores.distances, rtol=1e-9, atol=1e-9)
    states = [CustomerState(f"c{i}") for i in range(len(batch))]
    many = seg.evaluate_many(states, batch, 0.0, [None] * len(batch))
    assert [d.segment for d in many] == [seg.decide(s, f, 0.0, None, explain=True).segment
                                         for s, f in zip(states, batch, strict=True)]


@pytest.mark.parametrize("hysteresis", [Hysteresis(), Hysteresis(margin=0.0, confirmations=1),
                                        Hysteresis(margin=0.3, confirmations=3)])
def test_decide_is_evaluate_without_the_decisions_that_change_nothing(
        hysteresis: Hysteresis) -> None:
    """The worker calls ``decide`` after every event: None exactly when ``evaluate`` would
    keep the segment and leave ``aux`` empty, else the very Decision ``evaluate`` returns.
    Walked along the b1 -> b2 axis and back, so customers stay, wait for confirmation,
    move and fall back."""
    seg = BehaviorSegmentation(hysteresis, min_learned=1000)
    assert seg.load(snapshot())
    customer = Customer(seg)
    positions = [0.5, 1.9, 2.1, 1.9, 2.3, 2.6, 3.5, 1.5, 2.05, 1.0, 0.0, 4.0, 4.0, 2.2, 1.8]
    saw_none = saw_decision = 0
    for pos in positions * 3:
        f = views_at(pos)
        decided = seg.decide(customer.state, f, 0.0, customer.aux)
        before = (customer.state.segments.get(seg.name), customer.aux)
        evaluated = customer.see(f)
        if decided is None:
            saw_none += 1
            assert (evaluated.segment, evaluated.aux) == before
        else:
            saw_decision += 1
            assert decided == evaluated
    assert saw_none and saw_decision
    # warming up, and without a model: always a Decision, as evaluate
    cold = BehaviorSegmentation(hysteresis, min_learned=10_000)
    assert cold.decide(CustomerState("c"), views_at(1.0), 0.0, None) == cold.decide(
        CustomerState("c"), views_at(1.0), 0.0, None, explain=True)
    assert cold.load(snapshot())
    assert cold.decide(CustomerState("c"), views_at(1.0), 0.0, None) == cold.decide(
        CustomerState("c"), views_at(1.0), 0.0, None, explain=True)
