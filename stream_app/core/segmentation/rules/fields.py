"""What a rule can test: customer features and profile traits, each with its kind.

Features are read from :func:`stream_app.core.state.features.features` itself, so a feature added
there can be used in rules at once; traits are the flat profile kept in customer state
(``stream_app.core.events.parse.flatten_traits``). Knowing every name lets a definitions file with
a typo fail at load time instead of silently never matching.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal

from ...predictive.live import PREDICTION_FEATURES
from ...state.customer import CustomerState
from ...state.features import features

Kind = Literal["number", "text", "list"]  # list: a list of text values (interests, ...)


def _feature_kinds() -> dict[str, Kind]:
    # An empty state gives every feature: floats are numeric, the rest (None here) text.
    sample = features(CustomerState(customer_id=""), 0.0)
    return {name: "number" if isinstance(value, float) else "text"
            for name, value in sample.items()}


# The per-customer predictions the step adds to the features (stream_app/core/predictive/live.py):
# numbers, but None for a customer without an order or while no model is fitted, so a rule on
# one fails for those customers (as any comparison with a missing value does).
NULLABLE_FEATURES: frozenset[str] = frozenset(PREDICTION_FEATURES)
FEATURE_KINDS: dict[str, Kind] = {**_feature_kinds(),
                                  **dict.fromkeys(PREDICTION_FEATURES, "number")}

TRAIT_KINDS: dict[str, Kind] = {
    "age": "number",
    "income": "number",
    "gender": "text",
    "country": "text",
    "region": "text",
    "city": "text",
    "interests": "list",
    "lifestyle": "list",
    "values": "list",
}

# Features whose value changes as event time passes with no new event: a rule on them can move
# a silent customer, so the worker's time ticks must re-evaluate it.
TIME_FEATURES: frozenset[str] = frozenset({
    "tenure_days", "days_since_seen", "recency_days", "orders_30d", "orders_90d",
    "orders_per_month", "revenue_30d", "revenue_90d", "revenue_recent", "orders_recent",
    "engagement_recent", "carts_abandoned", "cart_abandon_rate", *PREDICTION_FEATURES,
})


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
