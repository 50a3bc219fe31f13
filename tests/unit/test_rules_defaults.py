"""Every shipped default segment, reached by customers built from interactions.

States come from :func:`stream_app.core.state.customer.apply_many`, features from
:func:`stream_app.core.state.features.features` at event time, as in the worker, with the
predictions of a fixed BG/NBD and Gamma-Gamma model added as the step adds them.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from stream_app.core.events import interaction as ix
from stream_app.core.events.interaction import Interaction
from stream_app.core.predictive import BgNbdParams, GammaGammaParams
from stream_app.core.predictive.live import LivePredictions
from stream_app.core.segmentation.rules import load_segmentations
from stream_app.core.state.customer import DAY, CustomerState
from stream_app.core.state.features import features

from .statefold import apply_many

T0 = 1_700_000_000.0  # "now" of every case unless it says otherwise
SEGMENTATIONS = {s.name: s for s in load_segmentations()}
_messages = itertools.count()


def event(kind: str, days_ago: float = 0.0, *, amount: float = 0.0,
          categories: tuple[str, ...] = (), channel: str | None = "web",
          traits: dict[str, Any] | None = None, anonymous: bool = False) -> Interaction:
    return Interaction(kind=kind, customer_id="anon-1" if anonymous else "c1",
                       message_id=f"m{next(_messages)}", ts=T0 - days_ago * DAY,
                       user_id=None if anonymous else "c1",
                       anonymous_id="anon-1" if anonymous else None, amount=amount,
                       categories=categories, channel=channel, traits=traits)


def orders(*days_ago: float, amount: float = 50.0) -> list[Interaction]:
    return [event(ix.ORDER, d, amount=amount) for d in days_ago]


def views(n: int, days_ago: float = 0.0, **kw: Any) -> list[Interaction]:
    return [event(ix.PRODUCT_VIEW, days_ago, **kw) for _ in range(n)]


def traits(**values: Any) -> list[Interaction]:
    return [event(ix.IDENTIFY, 0.0, traits=values, channel=None)]


def customer(*batches: list[Interaction]) -> CustomerState:
    state, _ = apply_many(None, [rec for batch in batches for rec in batch])
    assert state is not None
    return state


# about one purchase day a 40 days, a quarter drop out after each, 30 a transaction on average
MODEL = LivePredictions.fixed(BgNbdParams(0.5, 20.0, 0.8, 3.0), GammaGammaParams(6.0, 4.0, 15.0))


def segment(segmentation: str, state: CustomerState, now: float = T0,
            model: LivePredictions = MODEL) -> str | None:
    seg = SEGMENTATIONS[segmentation]
    feats = {**features(state, now), **model.of(state.purchases, now)}
    return seg.decide(state, feats, now, None, explain=True).segment


CASES: list[tuple[str, str | None, list[Interaction]]] = [
    # RFM: recency (days since last order), frequency (orders), monetary (net revenue)
    ("rfm", "champions", orders(1, 5, 10, 20, 28, amount=120.0)),
    ("rfm", "loyal", orders(60, 70, 80, 85)),
    ("rfm", "loyal", orders(1, 5, 10, 20, 28, amount=20.0)),  # champion frequency, not value
    ("rfm", "potential_loyalists", orders(45, 50)),
    ("rfm", "new_customers", orders(10)),
    ("rfm", "needs_attention", orders(50)),
    ("rfm", "needs_attention", orders(70, 75, 80)),
    ("rfm", "at_risk", orders(120, 150, 200)),
    ("rfm", "at_risk", orders(200, amount=400.0)),
    ("rfm", "hibernating", orders(200)),
    ("rfm", "lost", orders(400, 500)),
    ("rfm", None, views(3)),
    # lifecycle, at the customer's latest event
    ("lifecycle", "prospect", views(2, 5)),
    ("lifecycle", "new", orders(10)),
    ("lifecycle", "active", orders(20, 45)),
    ("lifecycle", "active", orders(45) + views(1, 5)),
    ("lifecycle", "lapsing", orders(70, 100)),
    ("lifecycle", "lapsing", views(4, 90)),
    ("lifecycle", "churned", orders(200)),
    # prospects: never ordered, by purchase intent
    ("prospects", "hot_prospect", views(5, 2) + [event(ix.CART_ADD, 1) for _ in range(2)]),
    ("prospects", "hot_prospect", views(6, 3) + [event(ix.CHECKOUT, 3)]),
    ("prospects", "warm_prospect", views(3, 20)),
    ("prospects", "warm_prospect", views(1, 3) + [event(ix.CART_ADD, 3)]),
    ("prospects", None, views(1, 3)),
    ("prospects", None, views(20, 1) + orders(1)),
    # demographic: age bands (bounds included) and gender
    ("age_band", "under_18", traits(age=17)),
    ("age_band", "age_18_24", traits(age=18)),
    ("age_band", "age_18_24", traits(age=24)),
    ("age_band", "age_25_34", traits(age=25)),
    ("age_band", "age_25_34", traits(age=34)),
    ("age_band", "age_35_44", traits(age=40)),
    ("age_band", "age_45_54", traits(age=54)),
    ("age_band", "age_55_64", traits(age=55)),
    ("age_band", "age_65_plus", traits(age=65)),
    ("age_band", None, traits(gender="female")),
    ("gender", "female", traits(gender="F")),
    ("gender", "male", traits(gender="male")),
    ("gender", "other_gender", traits(gender="non-binary")),
    ("gender", None, traits(age=30)),
    # geographic: country code or name, region for the US west
    ("geographic", "us_west", traits(country="US", region="CA")),
    ("geographic", "north_america", traits(country="US", region="NY")),
    ("geographic", "north_america", traits(country="Canada")),
    ("geographic", "uk_ireland", traits(country="GB")),
    ("geographic", "dach", traits(country="de")),
    ("geographic", "france_benelux", traits(country="NL")),
    ("geographic", "nordics", traits(country="NO")),
    ("geographic", "southern_europe", traits(country="Italy")),
    ("geographic", "rest_of_world", traits(country="JP")),
    ("geographic", None, traits(age=30)),
    # psychographic: interests, lifestyle, values; the earlier segment wins
    ("psychographic", "eco_conscious", traits(values=["sustainability"], interests=["tech"])),
    ("psychographic", "eco_conscious", traits(lifestyle=["vegan"])),
    ("psychographic", "active_outdoor", traits(interests=["fitness", "tech"])),
    ("psychographic", "active_outdoor", traits(lifestyle=["athletic"])),
    ("psychographic", "tech_enthusiast", traits(interests=["gaming"])),
    ("psychographic", "style_conscious", traits(interests=["fashion", "reading"])),
    ("psychographic", "home_and_family", traits(interests=["cooking"])),
    ("psychographic", "home_and_family", traits(lifestyle=["parent"])),
    ("psychographic", "culture_and_travel", traits(interests=["travel"])),
    ("psychographic", None, traits(interests=["knitting"])),
    # category affinity: the top category (orders weigh 3, views 1)
    ("category_affinity", "tech", views(2, categories=("electronics",))),
    ("category_affinity", "fashion_beauty",
     views(2, categories=("books",)) + [event(ix.ORDER, amount=30.0, categories=("beauty",))]),
    ("category_affinity", "home_living", views(1, categories=("grocery",))),
    ("category_affinity", "family_kids", views(1, categories=("toys",))),
    ("category_affinity", "sports_outdoor", views(1, categories=("sports",))),
    ("category_affinity", "media", views(1, categories=("books",))),
    ("category_affinity", "other_category", views(1, categories=("pets",))),
    ("category_affinity", None, views(3)),
    # preferred channel
    ("channel", "email", views(1) + [event(ix.EMAIL_OPEN, channel="email") for _ in range(2)]),
    ("channel", None, [event(k, channel="email")
                       for k in (ix.EMAIL_OPEN, ix.EMAIL_CLICK, ix.EMAIL_UNSUBSCRIBE)]),
    ("channel", "web", views(2)),
    ("channel", "mobile", views(2, channel="mobile")),
    ("channel", "other_channel", views(2, channel="store")),
    ("channel", None, views(2, channel=None)),
    # retention, from the predictions (p_alive 0.94, 3.9 orders expected in 30 days)
    ("retention", "likely_to_buy_soon", orders(*range(0, 60, 5))),
    ("retention", "probably_gone", orders(*range(65, 125, 5))),  # then 65 days silent: 0.02
    ("retention", "at_risk_high_value",  # p_alive 0.42, 470 expected in 90 days
     orders(100, 90, 80, 70, 60, 40, amount=300.0)),
    ("retention", "steady", orders(30)),  # one order: nothing says they left (p_alive 1)
    ("retention", "steady", orders(20, 45)),
    ("retention", None, views(3)),  # no order: no predictions
]


@pytest.mark.parametrize(("segmentation", "expected", "events"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_default_segment(segmentation: str, expected: str | None,
                         events: list[Interaction]) -> None:
    assert segment(segmentation, customer(events)) == expected


def test_every_default_segment_has_a_case() -> None:
    shipped = {(s.name, seg["id"]) for s in SEGMENTATIONS.values()
               for seg in s.describe()["segments"]}
    assert {(name, sid) for name, sid, _ in CASES if sid is not None} == shipped


# --- time moves customers without any event from them -----------------------------------------

def test_a_silent_customer_lapses_then_churns() -> None:
    s = customer(orders(0, 25))
    assert segment("lifecycle", s) == "active"
    assert segment("lifecycle", s, T0 + 60 * DAY) == "active"
    assert segment("lifecycle", s, T0 + 61 * DAY) == "lapsing"
    assert segment("lifecycle", s, T0 + 180 * DAY) == "lapsing"
    assert segment("lifecycle", s, T0 + 181 * DAY) == "churned"


def test_a_new_customer_becomes_active_then_a_prospect_lapses() -> None:
    buyer = customer(orders(0))
    assert [segment("lifecycle", buyer, T0 + d * DAY) for d in (0, 31)] == ["new", "active"]
    visitor = customer(views(1))
    assert [segment("lifecycle", visitor, T0 + d * DAY) for d in (60, 61)] == [
        "prospect", "lapsing"]


def test_rfm_moves_with_recency() -> None:
    s = customer(orders(0))
    days = (0, 31, 91, 366)
    assert [segment("rfm", s, T0 + d * DAY) for d in days] == [
        "new_customers", "needs_attention", "hibernating", "lost"]


def test_an_anonymous_hot_prospect_cools_down() -> None:
    s = customer(views(8, anonymous=True), [event(ix.CART_ADD, anonymous=True) for _ in range(2)])
    assert s.anonymous
    assert segment("prospects", s) == "hot_prospect"
    assert segment("lifecycle", s) == "prospect"
    assert segment("prospects", s, T0 + 15 * DAY) == "warm_prospect"
    assert segment("prospects", s, T0 + 31 * DAY) is None


def test_only_time_driven_segmentations_are_time_sensitive() -> None:
    assert {name for name, s in SEGMENTATIONS.items() if s.time_sensitive} == {
        "rfm", "lifecycle", "prospects", "retention"}


def test_retention_holds_no_one_while_no_model_is_fitted() -> None:
    s = customer(orders(*range(0, 60, 5)))
    assert segment("retention", s) == "likely_to_buy_soon"
    assert segment("retention", s, model=LivePredictions()) is None


def test_a_frequent_buyer_who_falls_silent_is_at_risk_then_probably_gone() -> None:
    s = customer(orders(*range(0, 60, 5), amount=50.0))  # every 5 days, then silence
    assert [segment("retention", s, T0 + d * DAY) for d in (0, 20, 60)] == [
        "likely_to_buy_soon", "at_risk_high_value", "probably_gone"]
