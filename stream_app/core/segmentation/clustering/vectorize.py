"""Customer features -> the numeric vector the clustering sees, and the running scaler.

Why a fixed list: a model snapshot is only meaningful with the exact features, order and
transforms it was trained on; the list is written into every snapshot and checked on load.

Why these transforms: spend, counts and rates are heavy-tailed (one customer with 200 orders
would otherwise own an axis), so they are compared on a log scale (``log1p``). Recency is
capped (never ordered = "a long time ago", not 3650 days) before the log. After the
transforms every feature is standardised with a running mean and variance so that each one
weighs the same in a Euclidean distance.

=========================  ===================================================  =========
vector feature             from :func:`stream_app.core.state.features.features`      transform
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
_LINEAR = np.flatnonzero(~LOGGED)


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
    clipped = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
    out = np.log1p(clipped)  # all columns, then restore the few kept linear: fewer copies
    out[..., _LINEAR] = clipped[..., _LINEAR]
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
    """Frozen standardisation published in a snapshot: ``z = (x - mean) / std`` on the
    features in use, 0 on the others (``active``: see :func:`fit_scaling`)."""

    mean: np.ndarray
    std: np.ndarray
    active: np.ndarray | None = None  # bool per feature; None: all in use

    def scale(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return z if self.active is None else z * self.active

    def unscale(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    @property
    def weights(self) -> np.ndarray:
        """1.0 for a feature in use, 0.0 for one left out of distances."""
        return np.ones(len(self.mean)) if self.active is None else self.active.astype(float)

    def to_json(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.active is not None:
            out["active"] = self.active.tolist()
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Sequence[Any]]) -> Scaling:
        mean, std = np.array(doc["mean"], dtype=np.float64), np.array(doc["std"], dtype=np.float64)
        if mean.shape != (len(FEATURES),) or std.shape != mean.shape or np.any(std <= 0):
            raise ValueError("scaling does not match the feature list")
        active = None
        if doc.get("active") is not None:
            active = np.array(doc["active"], dtype=bool)
            if active.shape != mean.shape:
                raise ValueError("scaling does not match the feature list")
        return cls(mean, std, active)


# A feature is in use for a model generation when at least this share of the customers in
# its fitting sample have a non-zero value. A shop without e-mail (or an order export with
# no browsing) has those features at 0 for everyone, or for all but a stray few: scaled by a
# floor spread, the few would sit several units out and pull centres of their own.
ACTIVE_SHARE = 0.02


def fit_scaling(sample: np.ndarray) -> Scaling:
    """The scaling of one model generation, fitted on unscaled model vectors (rows).

    Mean and spread as :class:`RunningScaler` would give (spread floored at ``MIN_STD``);
    features non-zero for fewer than ``ACTIVE_SHARE`` of the rows, or with a spread below
    ``MIN_STD``, are out of use: they scale to 0 for everyone and weigh nothing.
    """
    x = np.asarray(sample, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    active = ((x != 0.0).mean(axis=0) >= ACTIVE_SHARE) & (std >= MIN_STD)
    return Scaling(mean, np.maximum(std, MIN_STD), active)


class RunningScaler:
    """Online mean and variance of the model vectors the trainer learns from.

    Exact (Welford) for the first ``window`` samples, then exponentially weighted with that
    effective sample size, so the scaling follows a population that drifts (a young shop's
    customers all look new at first) without jumping on every sample.

    Hand-written rather than ``river.preprocessing.StandardScaler``: scoring needs the mean
    and spread as numpy arrays for batch distances, and this is a few lines of numpy.
    """

    def __init__(self, n_features: int = len(FEATURES), window: int = 20_000) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.n = 0
        self.mean = np.zeros(n_features)
        self.var = np.zeros(n_features)

    def learn(self, x: np.ndarray) -> None:
        self.n += 1
        alpha = 1.0 / min(self.n, self.window)
        delta = x - self.mean
        self.mean = self.mean + alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)

    def frozen(self) -> Scaling:
        return Scaling(self.mean.copy(), np.maximum(np.sqrt(self.var), MIN_STD))

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "window": self.window, "mean": self.mean.tolist(),
                "var": self.var.tolist()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunningScaler:
        out = cls(len(doc["mean"]), int(doc["window"]))
        out.n = int(doc["n"])
        out.mean = np.array(doc["mean"], dtype=np.float64)
        out.var = np.array(doc["var"], dtype=np.float64)
        return out
