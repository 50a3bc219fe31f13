"""Features at a point in event time (stream_app.core.state.features)."""

from __future__ import annotations

import copy

import pytest

from stream_app.core.events import interaction as ix
from stream_app.core.events.interaction import Interaction
from stream_app.core.state.customer import DAY, CustomerState, StateConfig
from stream_app.core.state.features import NEVER_DAYS, features

from .statefold import apply_many

T0 = 1_700_000_000.0


def rec(kind: str, ts: float, **kw: object) -> Interaction:
    return Interaction(kind=kind, customer_id="u1", message_id=f"{kind}@{ts}", ts=ts,
                       user_id="u1", **kw)  # type: ignore[arg-type]


def state(*recs: Interaction) -> CustomerState:
    s, _ = apply_many(None, list(recs))
    assert s is not None
    return s


def test_never_ordered() -> None:
    f = features(state(rec(ix.PAGE_VIEW, T0), rec(ix.PRODUCT_VIEW, T0 + 60)), T0 + DAY)
    assert f["recency_days"] == NEVER_DAYS
    assert (f["orders"], f["has_ordered"], f["avg_order_value"], f["refund_rate"]) == (0, 0, 0, 0)
    assert (f["orders_30d"], f["revenue_30d"], f["revenue_recent"], f["orders_recent"]) == (
        0, 0, 0, 0)
    assert f["cart_abandon_rate"] == 0.0 and f["email_click_rate"] == 0.0
    assert f["days_since_seen"] == pytest.approx(1.0, abs=1e-3)


def test_order_windows_and_recency() -> None:
    now = T0 + 200 * DAY
    s = state(*(rec(ix.ORDER, now - d * DAY, amount=a) for d, a in
                ((10, 10.0), (30, 20.0), (31, 40.0), (90, 80.0), (91, 160.0))))
    f = features(s, now)
    assert (f["orders_30d"], f["revenue_30d"]) == (2.0, 30.0)  # 30 days ago is inside
    assert (f["orders_90d"], f["revenue_90d"]) == (4.0, 150.0)
    assert f["recency_days"] == pytest.approx(10.0)
    assert (f["orders"], f["revenue"], f["avg_order_value"]) == (5.0, 310.0, 62.0)
    assert f["has_ordered"] == 1.0


def test_features_move_with_event_time() -> None:
    s = state(rec(ix.ORDER, T0, amount=100.0))
    assert features(s, T0)["orders_30d"] == 1.0
    later = features(s, T0 + 31 * DAY)
    assert later["orders_30d"] == 0.0 and later["orders_90d"] == 1.0
    assert later["recency_days"] == pytest.approx(31.0)
    assert later["days_since_seen"] == pytest.approx(31.0)


def test_now_before_last_seen_is_clamped() -> None:
    s = state(rec(ix.ORDER, T0, amount=100.0), rec(ix.PAGE_VIEW, T0 + DAY))
    assert features(s, T0 - 100 * DAY) == features(s, T0 + DAY)


def test_decayed_values_at_now() -> None:
    cfg = StateConfig()
    s = state(rec(ix.ORDER, T0, amount=100.0))
    f = features(s, T0 + cfg.half_life_days * DAY, cfg)
    assert f["revenue_recent"] == pytest.approx(50.0)
    assert f["orders_recent"] == pytest.approx(0.5)
    assert f["engagement_recent"] == pytest.approx(1.5)
    fast = StateConfig(half_life_days=15.0)
    assert features(state(rec(ix.ORDER, T0, amount=100.0)), T0 + 30 * DAY, fast)[
        "revenue_recent"] == pytest.approx(25.0)


def test_refunds_net_revenue_never_negative() -> None:
    s = state(rec(ix.ORDER, T0, amount=10.0), rec(ix.REFUND, T0 + 1, amount=25.0))
    f = features(s, T0 + 1)
    assert f["revenue"] == 0.0 and f["revenue_recent"] == 0.0
    assert f["refunds"] == 1.0 and f["refund_rate"] == 1.0
    assert f["avg_order_value"] == 10.0  # gross


def test_pending_cart_counts_as_abandoned_once_the_delay_passed() -> None:
    s = state(rec(ix.CART_ADD, T0))
    assert features(s, T0 + DAY)["carts_abandoned"] == 0.0
    f = features(s, T0 + DAY + 1)
    assert f["carts_abandoned"] == 1.0 and f["cart_abandon_rate"] == 1.0
    s = state(rec(ix.CART_ADD, T0), rec(ix.PAGE_VIEW, T0 + 2 * DAY),
              rec(ix.ORDER, T0 + 3 * DAY, amount=1.0))
    f = features(s, T0 + 3 * DAY)
    assert (f["carts_abandoned"], f["cart_abandon_rate"]) == (1.0, 0.5)


def test_tenure_and_rates() -> None:
    s = state(rec(ix.ORDER, T0, amount=1.0), rec(ix.ORDER, T0 + 61 * DAY, amount=1.0),
              rec(ix.EMAIL_OPEN, T0 + DAY), rec(ix.EMAIL_OPEN, T0 + DAY + 1),
              rec(ix.EMAIL_CLICK, T0 + DAY + 2), rec(ix.SCREEN_VIEW, T0 + 2),
              rec(ix.PAGE_VIEW, T0 + 3))
    f = features(s, T0 + 61 * DAY)
    assert f["tenure_days"] == pytest.approx(61.0)
    assert f["orders_per_month"] == pytest.approx(2 / (61 / 30.44))
    assert f["email_click_rate"] == 0.5
    assert f["page_views"] == 2.0  # pages and screens together
    young = state(rec(ix.ORDER, T0, amount=1.0), rec(ix.ORDER, T0 + 1, amount=1.0))
    assert features(young, T0 + 1)["orders_per_month"] == 2.0  # at least a month of tenure


def test_categorical_features_break_ties_deterministically() -> None:
    s = state(rec(ix.PAGE_VIEW, T0, channel="web", categories=("bags",)),
              rec(ix.PAGE_VIEW, T0 + 1, channel="mobile", categories=("shoes",)))
    f = features(s, T0 + 1)
    assert (f["preferred_channel"], f["top_category"]) == ("web", "shoes")  # max name on ties
    s = state(rec(ix.ORDER, T0, channel="store", categories=("bags",), amount=1.0),
              rec(ix.PAGE_VIEW, T0 + 1, channel="web", categories=("shoes",)),
              rec(ix.PAGE_VIEW, T0 + 2, channel="web"))
    f = features(s, T0 + 2)
    assert (f["preferred_channel"], f["top_category"]) == ("web", "bags")
    empty = features(state(rec(ix.IDENTIFY, T0)), T0)
    assert empty["preferred_channel"] is None and empty["top_category"] is None


def test_flags() -> None:
    anon = CustomerState(customer_id="a1", anonymous=True, email_unsubscribed=True)
    f = features(anon, T0)
    assert (f["is_anonymous"], f["email_unsubscribed"]) == (1.0, 1.0)


def test_features_are_flat_and_pure() -> None:
    s = state(rec(ix.ORDER, T0, amount=5.0, channel="web", categories=("x",)),
              rec(ix.CART_ADD, T0 + 1))
    before = copy.deepcopy(s)
    f = features(s, T0 + 40 * DAY)
    assert s == before
    categorical = {"preferred_channel", "top_category"}
    for name, value in f.items():
        if name in categorical:
            assert value is None or isinstance(value, str)
        else:
            assert isinstance(value, float), name
