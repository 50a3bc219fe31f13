"""Customer features -> the numeric vector the clustering sees, and the running scaler.

Why a fixed list: a model snapshot is only meaningful with the exact features, order and
transforms it was trained on; the list is written into every snapshot and checked on load.

Why these transforms: spend, counts and rates are heavy-tailed (one customer with 200 orders
would otherwise own an axis), so they are compared on a log scale (``log1p``). Recency is
capped (never ordered = "a long time ago", not 3650 days) before the log. After the
transforms every feature is standardised with a running mean and variance so that each one
weighs the same in a Euclidean distance.

=========================  ===================================================  =========
vector feature             from :func:`stream_app.state.features.features`      transform
=========================  ===================================================  =========
days_since_last_order      ``recency_days`` capped at 365 (never ordered: 365)  log1p
orders                     lifetime ``orders``                                  log1p
orders_per_month           ``orders_per_month``                                 log1p
net_revenue                ``revenue`` (net of refunds)                         log1p
avg_order_value            ``avg_order_value``                                  log1p
product_views_per_month    ``product_views`` / months of tenure (>= 1)          log1p
cart_adds_per_month        ``cart_adds`` / months of tenure (>= 1)              log1p
engagement_recent          ``engagement_recent`` (decayed activity score)       log1p
email_opens_per_month      ``email_opens`` / months of tenure (>= 1)            log1p
email_click_rate           ``email_click_rate`` (clicks / opens, 0..1)          none
tenure_days                ``tenure_days``                                      log1p
=========================  ===================================================  =========
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECENCY_CAP_DAYS = 365.0
DAYS_PER_MONTH = 30.44
# Below this standard deviation (in transformed units) a feature is treated as constant:
# dividing by a near-zero spread would turn rounding noise into the dominant axis.
MIN_STD = 0.05

FEATURES: tuple[str, ...] = (
    "days_since_last_order",
    "orders",
    "orders_per_month",
    "net_revenue",
    "avg_order_value",
    "product_views_per_month",
    "cart_adds_per_month",
    "engagement_recent",
    "email_opens_per_month",
    "email_click_rate",
    "tenure_days",
)
LOGGED = np.array([name != "email_click_rate" for name in FEATURES])


def original(feats: Mapping[str, Any]) -> list[float]:
    """The vector features in their original units (days, counts, money), in FEATURES order."""
    months = max(feats["tenure_days"] / DAYS_PER_MONTH, 1.0)
    return [
        min(feats["recency_days"], RECENCY_CAP_DAYS),
        feats["orders"],
        feats["orders_per_month"],
        feats["revenue"],
        feats["avg_order_value"],
        feats["product_views"] / months,
        feats["cart_adds"] / months,
        feats["engagement_recent"],
        feats["email_opens"] / months,
        feats["email_click_rate"],
        feats["tenure_days"],
    ]


def transform(values: np.ndarray) -> np.ndarray:
    """Original units -> model units (rows are customers). Negative inputs clip to 0."""
    out = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
    out[..., LOGGED] = np.log1p(out[..., LOGGED])
    return out


def inverse(values: np.ndarray) -> np.ndarray:
    """Model units -> original units (the inverse of :func:`transform` on its range)."""
    out = np.array(values, dtype=np.float64)
    out[..., LOGGED] = np.expm1(out[..., LOGGED])
    return out


def vectorize(feats: Mapping[str, Any]) -> np.ndarray:
    """One customer's features -> unscaled model vector."""
    return transform(np.array(original(feats)))


def vectorize_many(feats: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Many customers at once (one numpy call for the transforms): shape (n, len(FEATURES))."""
    if not feats:
        return np.empty((0, len(FEATURES)))
    return transform(np.array([original(f) for f in feats]))


@dataclass(frozen=True, slots=True)
class Scaling:
    """Frozen standardisation published in a snapshot: ``z = (x - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    def scale(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def unscale(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Sequence[float]]) -> Scaling:
        mean, std = np.array(doc["mean"], dtype=np.float64), np.array(doc["std"], dtype=np.float64)
        if mean.shape != (len(FEATURES),) or std.shape != mean.shape or np.any(std <= 0):
            raise ValueError("scaling does not match the feature list")
        return cls(mean, std)


class RunningScaler:
    """Online mean and variance (Welford) of the model vectors the trainer learns from.

    Hand-written rather than ``river.preprocessing.StandardScaler`` because scoring needs the
    mean and spread as numpy arrays for batch distances, and this is five lines of numpy.
    """

    def __init__(self, n_features: int = len(FEATURES)) -> None:
        self.n = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def learn(self, x: np.ndarray) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (x - self.mean)

    def frozen(self) -> Scaling:
        var = self.m2 / self.n if self.n else np.ones_like(self.m2)
        return Scaling(self.mean.copy(), np.maximum(np.sqrt(var), MIN_STD))

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunningScaler:
        out = cls(len(doc["mean"]))
        out.n = int(doc["n"])
        out.mean = np.array(doc["mean"], dtype=np.float64)
        out.m2 = np.array(doc["m2"], dtype=np.float64)
        return out
