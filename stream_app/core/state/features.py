"""Customer state -> features at a point in event time (the watermark).

``features(state, now)`` is the one flat view that clustering, rule segments, the HTTP API and
profiles all read. Pure.
"""

from __future__ import annotations

import math
from typing import Any

from .customer import DAY, CustomerState, StateConfig, _decay_factor

NEVER_DAYS = 3650.0  # "days since" when something never happened
_30_DAYS = 30 * DAY
_90_DAYS = 90 * DAY


def features(s: CustomerState, now: float, cfg: StateConfig = StateConfig()) -> dict[str, Any]:
    """Numeric features (floats) plus a few categorical ones (strings or None)."""
    now = max(now, s.last_seen)
    tenure_days = max((now - s.first_seen) / DAY, 0.0)
    months = max(tenure_days / 30.44, 1.0)
    decay = _decay_factor(max(now - s.decay_ref, 0.0), cfg)
    # This runs after every applied event: the 30-day window is looked at only when the
    # 90-day one holds something, and sum() adds the same amounts in the same order as ever.
    amounts_90d = [a for ts, a in s.recent_orders if now - ts <= _90_DAYS]
    amounts_30d = [a for ts, a in s.recent_orders if now - ts <= _30_DAYS] if amounts_90d else []
    orders_30d = len(amounts_30d)
    orders_90d = len(amounts_90d)
    revenue_30d = sum(amounts_30d, 0.0)
    revenue_90d = sum(amounts_90d, 0.0)
    net = max(s.revenue - s.refunded, 0.0)
    pending_abandon = (
        s.cart_pending_since is not None and now - s.cart_pending_since > cfg.cart_abandon_after_s
    )
    carts_abandoned = s.carts_abandoned + (1 if pending_abandon else 0)
    cart_sessions = carts_abandoned + s.orders
    return {
        "tenure_days": tenure_days,
        "days_since_seen": max((now - s.last_seen) / DAY, 0.0),
        "recency_days": (now - s.last_order_at) / DAY if s.last_order_at is not None else NEVER_DAYS,
        "orders": float(s.orders),
        "orders_30d": float(orders_30d),
        "orders_90d": float(orders_90d),
        "orders_per_month": s.orders / months,
        "revenue": net,
        "revenue_30d": revenue_30d,
        "revenue_90d": revenue_90d,
        "revenue_recent": max(s.revenue_recent * decay, 0.0),
        "orders_recent": s.orders_recent * decay,
        "avg_order_value": s.revenue / s.orders if s.orders else 0.0,
        "refunds": float(s.refunds),
        "refund_rate": s.refunds / s.orders if s.orders else 0.0,
        "product_views": float(s.product_views),
        "cart_adds": float(s.cart_adds),
        "checkouts": float(s.checkouts),
        "carts_abandoned": float(carts_abandoned),
        "cart_abandon_rate": carts_abandoned / cart_sessions if cart_sessions else 0.0,
        "page_views": float(s.page_views + s.screen_views),
        "sessions": float(s.sessions),
        "engagement_recent": s.engagement_recent * decay,
        "email_opens": float(s.email_opens),
        "email_clicks": float(s.email_clicks),
        "email_click_rate": s.email_clicks / s.email_opens if s.email_opens else 0.0,
        "email_unsubscribed": 1.0 if s.email_unsubscribed else 0.0,
        "support_contacts": float(s.support_contacts),
        "has_ordered": 1.0 if s.orders else 0.0,
        "is_anonymous": 1.0 if s.anonymous else 0.0,
        "preferred_channel": _top(s.channels),
        "top_category": _top(s.categories),
    }


def _top(counts: dict[str, float]) -> str | None:
    if not counts:
        return None
    # the largest count, ties to the largest name: the max of (count, name) pairs, in one
    # C-level call (counts are finite sums of weights)
    return max(zip(counts.values(), counts, strict=True))[1]


def days(value: float) -> float:
    return value / DAY


def finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
