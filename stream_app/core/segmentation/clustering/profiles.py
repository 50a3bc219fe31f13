"""Segment profiles a marketer can read: size, typical behaviour in real units, a name.

A profile is computed when a snapshot is made, from two things the trainer has:

* the segment's centre, turned back into original units (orders per month, order value,
  days since the last order, ...) - "typical" values, on the log scale the model uses, so they
  read like medians rather than means dragged by a few big spenders;
* a recent sample of learned customers, each assigned to its nearest centre: the share of the
  sample in the segment, and the channels and categories its members prefer.

The name comes from the centre relative to the population (standard deviations from the
average customer of the sample; for purchase figures, from the average buyer) plus a few
absolute facts ("never ordered", "one order", "no order for a month"). It is deterministic
and unique within a snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .stable import id_order
from .vectorize import FEATURES, MIN_STD, Scaling, inverse

TOP_N = 3
PURCHASE = frozenset({"days_since_last_order", "orders", "orders_per_month", "net_revenue",
                      "avg_order_value"})
MIN_REFERENCE = 20  # fewer buyers than this in the sample: compare with everyone instead
_ORDERS = FEATURES.index("orders")


def assign(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of ``z`` (both already scaled)."""
    if len(z) == 0 or len(centres) == 0:
        return np.empty(0, dtype=np.int64)
    d2 = (z * z).sum(1)[:, None] - 2.0 * z @ centres.T + (centres * centres).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def typical(centre_z: np.ndarray, scaling: Scaling) -> dict[str, float]:
    """A scaled centre in original units, keyed by feature name."""
    values = inverse(scaling.unscale(centre_z))
    return {name: max(float(v), 0.0) for name, v in zip(FEATURES, values, strict=True)}


def relative(centre: np.ndarray, sample: np.ndarray) -> dict[str, float]:
    """How far an (unscaled) centre lies from the average customer, in standard deviations.

    Purchase figures are compared with the average *buyer*: non-buyers sit at zero spend
    and would make every buyer look like a big spender.
    """
    buyers = sample[sample[:, _ORDERS] > 0.0]
    out = {}
    for j, name in enumerate(FEATURES):
        ref = buyers if name in PURCHASE and len(buyers) >= MIN_REFERENCE else sample
        spread = max(float(ref[:, j].std()), MIN_STD) if len(ref) else 1.0
        mean = float(ref[:, j].mean()) if len(ref) else 0.0
        out[name] = (float(centre[j]) - mean) / spread
    return out


def name_for(z: Mapping[str, float], t: Mapping[str, float]) -> str:
    """A short readable name from relative position ``z`` (:func:`relative`) and typical
    values ``t`` (:func:`typical`)."""
    if t["orders"] < 0.5:
        if z["product_views_per_month"] > 0.0 or z["cart_adds_per_month"] > 0.0:
            return "Window shoppers"
        if z["email_opens_per_month"] > 0.5:
            return "Email readers who never bought"
        return "Inactive prospects"
    if z["tenure_days"] < -1.0 and t["tenure_days"] < 30.0:
        return "New customers" + (" (high spenders)" if z["avg_order_value"] > 1.0 else "")
    one_time = t["orders"] < 1.5
    # lapsing: no order for a month, and (repeat buyers) for three of their usual gaps
    usual_gap = 30.44 / t["orders_per_month"] if t["orders_per_month"] > 0 else 0.0
    words = []
    if t["days_since_last_order"] > max(30.0, 0.0 if one_time else 3.0 * usual_gap):
        words.append("lapsing")
    if z["email_opens_per_month"] > 1.0:
        words.append("email-engaged")
    if one_time:
        words.append("one-time")
    elif z["orders_per_month"] > 1.0:
        words.append("frequent")
    elif z["orders_per_month"] > 0.0:
        words.append("regular")
    else:
        words.append("occasional")
    if z["avg_order_value"] > 0.75:
        words.append("high spenders")
    elif z["avg_order_value"] < -0.75:
        words.append("bargain hunters" if z["product_views_per_month"] > 0.5
                     else "small-basket buyers")
    else:
        words.append("buyers")
    text = " ".join(words)
    return text[0].upper() + text[1:]


def build_profiles(ids: Sequence[str], centres: np.ndarray, scaling: Scaling,
                   sample: np.ndarray, channels: Sequence[str | None],
                   categories: Sequence[str | None]) -> dict[str, dict[str, Any]]:
    """Stable id -> ``{"name", "profile"}`` for the segments of one snapshot.

    ``centres`` are scaled; ``sample`` holds unscaled model vectors of recently learned
    customers, with each one's preferred channel and top category beside it.
    """
    members = assign(scaling.scale(sample), centres) if len(sample) else np.empty(0, int)
    total = len(members)
    out: dict[str, dict[str, Any]] = {}
    for k, sid in enumerate(ids):
        mask = members == k
        size = int(mask.sum())
        t = typical(centres[k], scaling)
        z = relative(scaling.unscale(centres[k]), sample)
        out[sid] = {
            "name": name_for(z, t),
            "profile": {
                "size": size,
                "share": round(size / total, 4) if total else 0.0,
                "typical": _readable(t),
                "relative": {name: round(v, 2) for name, v in z.items()},
                "preferred_channels": _top([c for c, m in zip(channels, mask, strict=True) if m]),
                "top_categories": _top([c for c, m in zip(categories, mask, strict=True) if m]),
            },
        }
    _make_unique(out)
    return out


def _readable(t: Mapping[str, float]) -> dict[str, float | None]:
    ordered = t["orders"] >= 0.5
    return {
        "spend_per_month": round(t["orders_per_month"] * t["avg_order_value"], 2),
        "orders_per_month": round(t["orders_per_month"], 2),
        "avg_order_value": round(t["avg_order_value"], 2),
        "net_revenue": round(t["net_revenue"], 2),
        "orders": round(t["orders"], 1),
        "days_since_last_order": round(t["days_since_last_order"], 1) if ordered else None,
        "product_views_per_month": round(t["product_views_per_month"], 1),
        "cart_adds_per_month": round(t["cart_adds_per_month"], 1),
        "email_opens_per_month": round(t["email_opens_per_month"], 1),
        "email_click_rate": round(t["email_click_rate"], 3),
        "engagement_recent": round(t["engagement_recent"], 1),
        "tenure_days": round(t["tenure_days"], 1),
    }


def _top(values: Sequence[str | None]) -> list[dict[str, Any]]:
    known = [v for v in values if v is not None]
    counts = Counter(known)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
    return [{"value": v, "share": round(n / len(known), 3)} for v, n in ranked]


def _make_unique(out: dict[str, dict[str, Any]]) -> None:
    """Disambiguate equal names: the largest segment keeps the plain name; the others get
    their top category, then a number if that still collides."""
    by_name: dict[str, list[str]] = {}
    for sid, entry in out.items():
        by_name.setdefault(entry["name"], []).append(sid)
    taken = set(by_name)
    for name, sids in by_name.items():
        ranked = sorted(sids, key=lambda s: (-out[s]["profile"]["size"], id_order(s)))
        for sid in ranked[1:]:
            cats = out[sid]["profile"]["top_categories"]
            candidate = f"{name} ({cats[0]['value']})" if cats else name
            n = 2
            base = candidate
            while candidate in taken:
                candidate = f"{base} #{n}"
                n += 1
            taken.add(candidate)
            out[sid]["name"] = candidate
