"""The rule condition language: every operator, combinators, windows at event time, missing
values, load-time errors, and the field catalogue kept in step with features and traits."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from stream_app.core.events.models import Address, Traits
from stream_app.core.events.parse import flatten_traits
from stream_app.core.predictive import BgNbdParams, GammaGammaParams
from stream_app.core.predictive.live import PREDICTION_FEATURES, LivePredictions
from stream_app.core.predictive.summary import from_orders
from stream_app.core.segmentation.rules.compiled import compile_rules
from stream_app.core.segmentation.rules.fields import (
    FEATURE_KINDS,
    NULLABLE_FEATURES,
    TIME_FEATURES,
    TRAIT_KINDS,
)
from stream_app.core.segmentation.rules.language import Condition
from stream_app.core.state.customer import DAY, CustomerState
from stream_app.core.state.features import features

T0 = 1_700_000_000.0
CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)


def match(doc: dict[str, Any], feats: dict[str, Any] | None = None,
          traits: dict[str, Any] | None = None, state: CustomerState | None = None,
          now: float = T0) -> str | None:
    """What matched of the condition (None: no match), by the service's one evaluator."""
    s = state if state is not None else CustomerState("c1", traits=traits or {})
    rules = compile_rules([CONDITION.validate_python(doc)])
    return rules.explain(0, s, feats or {}, now) if rules.first_match(s, feats or {}, now) == 0 \
        else None


def error(doc: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        CONDITION.validate_python(doc)
    return caught.value.errors()[0]["msg"]


# --- operators --------------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "operand", "matched"), [
    ("==", 3, True), ("==", 2, False), ("!=", 2, True), ("!=", 3, False),
    ("<", 4, True), ("<", 3, False), ("<=", 3, True), ("<=", 2.5, False),
    (">", 2, True), (">", 3, False), (">=", 3, True), (">=", 3.5, False),
    ("between", [3, 5], True), ("between", [1, 3], True), ("between", [3.5, 5], False),
    ("in", [1, 3], True), ("in", [1, 2], False), ("not in", [1, 2], True), ("not in", [3], False),
])
def test_number_operators(op: str, operand: Any, matched: bool) -> None:
    result = match({"feature": "orders", op: operand}, feats={"orders": 3.0})
    assert (result is not None) == matched


@pytest.mark.parametrize(("op", "operand", "matched"), [
    ("==", "de", True), ("==", "AT", False), ("!=", "AT", True), ("!=", "De", False),
    ("in", ["at", "De"], True), ("in", ["AT", "CH"], False),
    ("not in", ["AT"], True), ("not in", ["AT", "dE"], False),
])
def test_text_operators_ignore_case(op: str, operand: Any, matched: bool) -> None:
    result = match({"trait": "country", op: operand}, traits={"country": "DE"})
    assert (result is not None) == matched


@pytest.mark.parametrize(("op", "operand", "matched"), [
    ("contains", "running", True), ("contains", "yoga", False),
    ("contains any", ["yoga", "COOKING"], True), ("contains any", ["yoga", "chess"], False),
])
def test_list_operators(op: str, operand: Any, matched: bool) -> None:
    result = match({"trait": "interests", op: operand},
                   traits={"interests": ["Running", "cooking"]})
    assert (result is not None) == matched


def test_text_feature_and_flag_feature() -> None:
    assert match({"feature": "top_category", "==": "Books"}, feats={"top_category": "books"})
    assert match({"feature": "is_anonymous", "==": True}, feats={"is_anonymous": 1.0})
    assert match({"feature": "is_anonymous", "==": True}, feats={"is_anonymous": 0.0}) is None


@pytest.mark.parametrize(("traits", "exists", "matched"), [
    ({"country": "DE"}, True, True), ({"country": "DE"}, False, False),
    ({}, True, False), ({}, False, True),
    ({"country": ""}, True, False), ({"interests": []}, False, True),
])
def test_exists(traits: dict[str, Any], exists: bool, matched: bool) -> None:
    field = next(iter(traits), "country")
    assert (match({"trait": field, "exists": exists}, traits=traits) is not None) == matched


@pytest.mark.parametrize("comparison", [
    {"trait": "age", "==": 30}, {"trait": "age", "!=": 30}, {"trait": "age", "<": 30},
    {"trait": "age", ">=": 0}, {"trait": "age", "between": [0, 130]},
    {"trait": "age", "in": [30]}, {"trait": "age", "not in": [30]},
    {"trait": "country", "!=": "DE"}, {"trait": "country", "not in": ["DE"]},
    {"trait": "interests", "contains": "running"},
    {"trait": "interests", "contains any": ["running"]},
])
def test_a_missing_value_fails_every_comparison_but_exists_false(comparison: dict[str, Any]
                                                                 ) -> None:
    assert match(comparison, traits={}) is None
    assert match({"not": comparison}, traits={}) is not None  # the way to include them


@pytest.mark.parametrize(("comparison", "traits"), [
    ({"trait": "age", ">=": 18}, {"age": "34"}),
    ({"trait": "interests", "contains": "running"}, {"interests": "running"}),
    ({"trait": "country", "==": "5"}, {"country": 5}),
])
def test_a_value_of_the_wrong_type_does_not_match(comparison: dict[str, Any],
                                                   traits: dict[str, Any]) -> None:
    assert match(comparison, traits=traits) is None


# --- combinators and the text of what matched -------------------------------------------------

def test_and_or_not_and_the_text_of_what_matched() -> None:
    feats = {"orders": 4.0, "recency_days": 10.0}
    traits = {"country": "DE"}
    both = {"and": [{"feature": "orders", ">=": 3}, {"trait": "country", "==": "DE"}]}
    assert match(both, feats, traits) == "orders >= 3 and country == DE"
    assert match({"and": [*both["and"], {"trait": "age", ">": 1}]}, feats, traits) is None
    either = {"or": [{"trait": "country", "==": "AT"}, {"feature": "recency_days", "<": 30}]}
    assert match(either, feats, traits) == "recency_days < 30"  # the branch that matched
    assert match({"or": [{"trait": "country", "==": "AT"}]}, feats, traits) is None
    assert match({"not": {"trait": "country", "==": "AT"}}, feats, traits) == "not (country == AT)"
    assert match({"not": {"trait": "country", "==": "DE"}}, feats, traits) is None
    nested = {"and": [either, {"not": {"trait": "age", "exists": True}}]}
    assert match(nested, feats, traits) == "recency_days < 30 and not (age exists)"


def test_the_or_branch_that_matched_shows_through_nested_ands() -> None:
    feats = {"orders": 4.0, "recency_days": 10.0}
    inner = {"and": [{"feature": "orders", ">": 1},
                     {"or": [{"feature": "orders", ">": 9}, {"feature": "recency_days", "<": 30}]}]}
    outer = {"and": [{"feature": "orders", "<": 9}, inner]}
    assert match(outer, feats) == "orders < 9 and orders > 1 and recency_days < 30"


def test_conditions_assemble_from_validated_parts() -> None:
    part = CONDITION.validate_python({"feature": "orders", ">": 1})
    both = CONDITION.validate_python({"and": [part, {"not": part}]})
    assert both.text == "orders > 1 and not (orders > 1)"


def test_static_text_brackets_mixed_and_or() -> None:
    a, b, c = ({"feature": "orders", ">": n} for n in (1, 2, 3))
    assert CONDITION.validate_python({"and": [a, {"or": [b, c]}]}).text == (
        "orders > 1 and (orders > 2 or orders > 3)")
    assert CONDITION.validate_python({"or": [{"and": [a, b]}, c]}).text == (
        "(orders > 1 and orders > 2) or orders > 3")
    assert CONDITION.validate_python(
        {"trait": "interests", "contains any": ["a", "b"]}).text == "interests contains any of [a, b]"
    assert CONDITION.validate_python({"trait": "age", "between": [18, 24.5]}).text == (
        "age between 18 and 24.5")


# --- windows at event time --------------------------------------------------------------------

def _buyer() -> CustomerState:
    orders = [[T0 - 40 * DAY, 100.0], [T0 - 20 * DAY, 50.0], [T0 - DAY, 25.0]]
    return CustomerState("c1", first_seen=T0 - 60 * DAY, last_seen=T0 - DAY, orders=3,
                         revenue=175.0, last_order_at=T0 - DAY, recent_orders=orders)


def test_windows_are_computed_at_event_time() -> None:
    s = _buyer()
    two_in_30 = {"window": {"metric": "orders", "days": 30}, "==": 2}
    assert match(two_in_30, state=s, now=T0) == "orders in the last 30 days == 2"
    assert match(two_in_30, state=s, now=T0 + 25 * DAY) is None  # time passed: only one left
    assert match({"window": {"metric": "revenue", "days": 7}, "==": 25}, state=s, now=T0)
    assert match({"window": {"metric": "revenue", "days": 30}, "==": 75}, state=s, now=T0)
    # a watermark behind the customer's own events counts from their latest event
    assert match({"window": {"metric": "orders", "days": 1}, "==": 1}, state=s, now=T0 - 30 * DAY)


@pytest.mark.parametrize("offset_days", [0, 9, 11, 19, 20, 30, 39, 51, 71, 90, 100])
def test_windows_agree_with_the_window_features(offset_days: float) -> None:
    s = _buyer()
    now = T0 - DAY + offset_days * DAY
    feats = features(s, now)
    for metric, days in (("orders", 30), ("orders", 90), ("revenue", 30), ("revenue", 90)):
        window = {"window": {"metric": metric, "days": days}, "==": feats[f"{metric}_{days}d"]}
        assert match(window, state=s, now=now), (metric, days)


def test_time_sensitivity() -> None:
    def sensitive(doc: dict[str, Any]) -> bool:
        return CONDITION.validate_python(doc).time_sensitive

    window = {"window": {"metric": "orders", "days": 7}, ">": 0}
    assert sensitive(window)
    assert sensitive({"feature": "days_since_seen", ">": 60})
    assert not sensitive({"feature": "orders", ">": 1})
    assert not sensitive({"trait": "age", ">": 1})
    assert sensitive({"and": [{"trait": "age", ">": 1}, {"not": window}]})
    assert not sensitive({"or": [{"trait": "age", ">": 1}, {"feature": "orders", ">": 1}]})


# --- load-time errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "message"), [
    ({"feature": "ordrs_30d", ">=": 3}, "unknown feature 'ordrs_30d' (did you mean 'orders_30d'?)"),
    ({"trait": "intrests", "contains": "x"}, "unknown trait 'intrests' (did you mean 'interests'?)"),
    ({"feature": "country", "==": "DE"}, "unknown feature 'country': it is a trait, write trait: country"),
    ({"feature": "orders", "=>": 3}, "unexpected key '=>'"),
    ({"feature": "orders", ">": 1, "<": 5}, "give exactly one operator, not 2 (<, >)"),
    ({"feature": "orders"}, "give exactly one operator: ==, !="),
    ({"feature": "orders", "==": None}, "test for a missing value with exists: false"),
    ({"trait": "country", "<": 3}, "'<' does not apply to trait 'country', which holds text"),
    ({"trait": "interests", "==": "x"}, "'==' does not apply to trait 'interests'"),
    ({"trait": "country", "in": ["SE", False]}, "quote the value (for example 'NO' for Norway)"),
    ({"trait": "region", "==": 75}, "holds text, so quote the value ('75')"),
    ({"feature": "orders", "==": "3"}, "holds a number, compare it with numbers"),
    ({"feature": "orders", "between": [5, 1]}, "the lower bound comes first"),
    ({"feature": "orders", "in": []}, "at least 1 item"),
    ({"window": {"metric": "orders", "days": 0}, ">": 1}, "greater than 0"),
    ({"window": {"metric": "visits", "days": 7}, ">": 1}, "'orders' or 'revenue'"),
    ({"feature": "orders", "trait": "age", ">": 1}, "exactly one of feature, trait or window (got feature and trait)"),
    ({}, "exactly one of feature, trait or window"),
    ({"and": []}, "at least 1 item"),
    ({"and": [{"feature": "orders", ">": 1}], "or": []}, "unexpected key 'or'"),
    ("orders > 3", "a condition is a mapping"),
])
def test_load_time_errors(doc: Any, message: str) -> None:
    assert message in error(doc)


# --- the field catalogue stays in step with features() and the traits kept ------------------

def _rich_state() -> CustomerState:
    """A customer with something in every feature, including a cart pending abandonment."""
    return CustomerState(
        "c1", first_seen=T0 - 10 * DAY, last_seen=T0, decay_ref=T0, orders=2, revenue=80.0,
        first_order_at=T0 - 10 * DAY, last_order_at=T0 - 2 * DAY,
        recent_orders=[[T0 - 10 * DAY, 30.0], [T0 - 2 * DAY, 50.0]], revenue_recent=70.0,
        orders_recent=1.8, engagement_recent=9.0, product_views=5, cart_adds=2,
        cart_pending_since=T0 - 0.5 * DAY, channels={"web": 4}, categories={"books": 3.0},
        purchases=from_orders([[T0 - 10 * DAY, 30.0], [T0 - 2 * DAY, 50.0]]))


# what the step evaluates rules on: features() and, with a model loaded, the predictions
LIVE = LivePredictions.fixed(BgNbdParams(0.5, 20.0, 0.8, 3.0), GammaGammaParams(6.0, 4.0, 15.0))


def _rule_features(s: CustomerState, now: float,
                   live: LivePredictions = LIVE) -> dict[str, object]:
    return {**features(s, now), **live.of(s.purchases, now)}


def test_time_features_are_exactly_those_that_move_with_event_time() -> None:
    s = _rich_state()
    now, later = _rule_features(s, T0), _rule_features(s, T0 + 100 * DAY)
    assert {name for name in now if now[name] != later[name]} == TIME_FEATURES


def test_feature_kinds_cover_every_feature_with_its_type() -> None:
    feats = _rule_features(_rich_state(), T0)
    assert set(feats) == set(FEATURE_KINDS)
    for name, value in feats.items():
        assert isinstance(value, float if FEATURE_KINDS[name] == "number" else str), name


def test_predictions_are_the_only_number_features_that_can_be_missing() -> None:
    none_yet = _rule_features(_rich_state(), T0, LivePredictions())  # no model loaded
    missing = {name for name, value in none_yet.items()
               if value is None and FEATURE_KINDS[name] == "number"}
    assert missing == NULLABLE_FEATURES == set(PREDICTION_FEATURES)
    no_order = _rule_features(CustomerState("c2", first_seen=T0, last_seen=T0), T0)
    assert {name for name in PREDICTION_FEATURES if no_order[name] is None} == NULLABLE_FEATURES


def test_trait_kinds_cover_every_trait_kept_in_state() -> None:
    flat = flatten_traits(Traits(
        age=40, gender="F", income=50000, address=Address(country="DE", region="BE", city="Berlin"),
        interests=["a"], lifestyle=["b"], values=["c"]))
    assert set(flat) == set(TRAIT_KINDS)
    expected = {"number": (int, float), "text": str, "list": list}
    for name, value in flat.items():
        assert isinstance(value, expected[TRAIT_KINDS[name]]), name
    assert not set(TRAIT_KINDS) & set(FEATURE_KINDS)  # "why" texts name fields unprefixed
