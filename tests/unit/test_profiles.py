"""Segment profiles: typical values in real units, member statistics and readable names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream_app.core.segmentation.clustering.profiles import build_profiles
from stream_app.core.segmentation.clustering.vectorize import RunningScaler, vectorize

# Archetypes in the units of state.features.features (lifetime counts; tenure ~ 1.6 months)
ARCHETYPES: dict[str, dict[str, float]] = {
    "champions": dict(tenure_days=50, recency_days=2, orders=14, orders_per_month=8.5,
                      revenue=2300, avg_order_value=165, product_views=100, cart_adds=25,
                      engagement_recent=40, email_opens=16, email_click_rate=0.15),
    "loyal": dict(tenure_days=50, recency_days=7, orders=5, orders_per_month=3.0, revenue=280,
                  avg_order_value=56, product_views=20, cart_adds=6, engagement_recent=8,
                  email_opens=8, email_click_rate=0.1),
    "bargain": dict(tenure_days=50, recency_days=8, orders=4, orders_per_month=2.4, revenue=75,
                    avg_order_value=19, product_views=400, cart_adds=60, engagement_recent=60,
                    email_opens=22, email_click_rate=0.35),
    "new": dict(tenure_days=5, recency_days=3, orders=1, orders_per_month=1.0, revenue=45,
                avg_order_value=45, product_views=8, cart_adds=2, engagement_recent=6,
                email_opens=1, email_click_rate=0.2),
    "lapsing": dict(tenure_days=50, recency_days=50, orders=1, orders_per_month=0.6, revenue=40,
                    avg_order_value=40, product_views=5, cart_adds=1, engagement_recent=0.5,
                    email_opens=1, email_click_rate=0.0),
    "window": dict(tenure_days=40, recency_days=3650, orders=0, orders_per_month=0.0, revenue=0,
                   avg_order_value=0, product_views=130, cart_adds=16, engagement_recent=15,
                   email_opens=1, email_click_rate=0.0),
    "email": dict(tenure_days=50, recency_days=9, orders=2, orders_per_month=1.2, revenue=130,
                  avg_order_value=65, product_views=16, cart_adds=3, engagement_recent=6,
                  email_opens=65, email_click_rate=0.45),
}
EXPECTED = {
    "champions": "Frequent high spenders",
    "loyal": "Regular buyers",
    "bargain": "Regular bargain hunters",
    "new": "New customers",
    "lapsing": "Lapsing one-time buyers",
    "window": "Window shoppers",
    "email": "Email-engaged occasional buyers",
}


def population(groups: dict[str, dict[str, float]], per_group: int = 100, seed: int = 0
               ) -> tuple[np.ndarray, list[str]]:
    """Noisy customers around each archetype (+-15 % on every figure)."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for key, base in groups.items():
        for _ in range(per_group):
            rows.append(vectorize({k: v * rng.uniform(0.85, 1.15) for k, v in base.items()}))
            labels.append(key)
    return np.array(rows), labels


def profile(groups: dict[str, dict[str, float]], sizes: dict[str, int] | None = None
            ) -> dict[str, dict[str, Any]]:
    sample, labels = population(groups)
    if sizes is not None:
        keep = np.concatenate([np.flatnonzero(np.array(labels) == k)[:n] for k, n in sizes.items()])
        sample, labels = sample[keep], [labels[i] for i in keep]
    scaler = RunningScaler()
    for x in sample:
        scaler.learn(x)
    scaling = scaler.frozen()
    ids = list(groups)
    centres = np.array([scaling.scale(vectorize(groups[k])) for k in ids])
    return build_profiles(ids, centres, scaling, sample, ["web"] * len(sample),
                          [f"cat-{k}" for k in labels])


def test_archetypes_get_the_names_a_marketer_would_give() -> None:
    assert {k: v["name"] for k, v in profile(ARCHETYPES).items()} == EXPECTED


def test_typical_values_are_in_original_units() -> None:
    t = profile(ARCHETYPES)["champions"]["profile"]["typical"]
    assert t["orders_per_month"] == pytest.approx(8.5, abs=0.01)
    assert t["avg_order_value"] == pytest.approx(165.0, abs=0.01)
    assert t["spend_per_month"] == pytest.approx(8.5 * 165.0, abs=0.1)
    assert t["days_since_last_order"] == pytest.approx(2.0, abs=0.01)
    assert profile(ARCHETYPES)["window"]["profile"]["typical"]["days_since_last_order"] is None


def test_size_share_and_member_statistics() -> None:
    profiles = profile(ARCHETYPES)
    assert sum(p["profile"]["size"] for p in profiles.values()) == 700
    assert sum(p["profile"]["share"] for p in profiles.values()) == pytest.approx(1.0, abs=1e-3)
    bargain = profiles["bargain"]["profile"]
    assert bargain["size"] == 100
    assert bargain["top_categories"] == [{"value": "cat-bargain", "share": 1.0}]
    assert bargain["preferred_channels"] == [{"value": "web", "share": 1.0}]
    assert bargain["relative"]["avg_order_value"] < -0.75  # relative to the average buyer


def test_equal_names_are_made_unique_largest_first() -> None:
    twins = {"w1": ARCHETYPES["window"], "w2": {**ARCHETYPES["window"], "product_views": 110},
             "l": ARCHETYPES["lapsing"], "n": ARCHETYPES["new"]}
    profiles = profile(twins, sizes={"w1": 30, "w2": 90, "l": 100, "n": 100})
    names = [p["name"] for p in profiles.values()]
    assert len(set(names)) == len(names)
    assert profiles["w2"]["name"] == "Window shoppers"  # the larger keeps the plain name
    assert profiles["w1"]["name"].startswith("Window shoppers (")


def test_profiles_are_deterministic() -> None:
    assert profile(ARCHETYPES) == profile(ARCHETYPES)
