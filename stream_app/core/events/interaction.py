"""The normalised interaction: what the rest of the service works on.

A validated spec event becomes one :class:`Interaction`: a flat, compact record with the
event time as epoch seconds, a kind from a small vocabulary, and only the fields that
segmentation uses. It travels on the internal routed topic as a JSON array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Customer keys ---------------------------------------------------------------------------------
# User ids and anonymous ids are separate id spaces (as in Segment and RudderStack: an
# anonymous id is never a user's identity). A customer known by a user id is keyed by it; a
# customer known only by an anonymous id is keyed ``anonymous_id:<id>`` (Segment's Profile
# API spells external ids so). User ids starting with the prefix are rejected at input.
ANON_PREFIX = "anonymous_id:"


def anonymous_key(anonymous_id: str) -> str:
    return ANON_PREFIX + anonymous_id


def raw_id(key: str) -> str:
    """The id a producer keys a customer's messages by (what its partition is computed from)."""
    return key[len(ANON_PREFIX):] if key.startswith(ANON_PREFIX) else key


# Interaction kinds ----------------------------------------------------------------------------
PAGE_VIEW = "page_view"
SCREEN_VIEW = "screen_view"
PRODUCT_VIEW = "product_view"
CART_ADD = "cart_add"
CART_REMOVE = "cart_remove"
CHECKOUT = "checkout"
ORDER = "order"
REFUND = "refund"
EMAIL_OPEN = "email_open"
EMAIL_CLICK = "email_click"
EMAIL_UNSUBSCRIBE = "email_unsubscribe"
SUPPORT = "support_contact"
IDENTIFY = "identify"
ALIAS = "alias"
CUSTOM = "custom"

KINDS = (
    PAGE_VIEW, SCREEN_VIEW, PRODUCT_VIEW, CART_ADD, CART_REMOVE, CHECKOUT, ORDER, REFUND,
    EMAIL_OPEN, EMAIL_CLICK, EMAIL_UNSUBSCRIBE, SUPPORT, IDENTIFY, ALIAS, CUSTOM,
)

# Spec track-event names (lower-cased) -> kind. Other names are kept as custom events.
TRACK_KINDS: dict[str, str] = {
    "product viewed": PRODUCT_VIEW,
    "product clicked": PRODUCT_VIEW,
    "product list viewed": PRODUCT_VIEW,
    "products searched": PRODUCT_VIEW,
    "product added": CART_ADD,
    "product removed": CART_REMOVE,
    "cart viewed": CUSTOM,
    "checkout started": CHECKOUT,
    "order completed": ORDER,
    "order refunded": REFUND,
    "order cancelled": REFUND,
    "email opened": EMAIL_OPEN,
    "email link clicked": EMAIL_CLICK,
    "unsubscribed": EMAIL_UNSUBSCRIBE,
    "email unsubscribed": EMAIL_UNSUBSCRIBE,
    "support contacted": SUPPORT,
    "ticket created": SUPPORT,
    "support ticket created": SUPPORT,
    "live chat started": SUPPORT,
}

_KIND_SET = frozenset(KINDS)
EMAIL_KINDS = frozenset({EMAIL_OPEN, EMAIL_CLICK, EMAIL_UNSUBSCRIBE})


@dataclass(slots=True)
class Interaction:
    kind: str
    customer_id: str
    message_id: str
    ts: float
    user_id: str | None = None
    anonymous_id: str | None = None
    name: str | None = None
    amount: float = 0.0
    categories: tuple[str, ...] = ()
    channel: str | None = None
    traits: dict[str, Any] | None = None
    previous_id: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.kind, self.customer_id, self.message_id, self.ts, self.user_id,
            self.anonymous_id, self.name, self.amount, list(self.categories), self.channel,
            self.traits, self.previous_id,
        ]

    @classmethod
    def from_wire(cls, row: Any) -> Interaction:
        """The interaction of a wire row; ``ValueError`` naming the field if the row is not
        one (a routed record from a foreign producer or another version must be
        dead-lettered, never crash the worker)."""
        if not isinstance(row, list) or len(row) != 12:
            raise ValueError("an interaction row is a list of 12 fields")
        (kind, cid, mid, ts, uid, aid, name, amount, cats, channel, traits, prev) = row
        if kind not in _KIND_SET:
            raise ValueError(f"kind: unknown {str(kind)[:40]!r}")
        for field, v in (("customer_id", cid), ("message_id", mid)):
            if not isinstance(v, str) or not v:
                raise ValueError(f"{field}: a non-empty string is required, not {type(v).__name__}")
        for field, v in (("user_id", uid), ("anonymous_id", aid), ("name", name),
                         ("channel", channel), ("previous_id", prev)):
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{field}: a string or null is required, not {type(v).__name__}")
        for field, v in (("ts", ts), ("amount", amount)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{field}: a finite number is required, not {str(v)[:40]!r}")
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ValueError("categories: a list of strings is required")
        if traits is not None and not isinstance(traits, dict):
            raise ValueError(f"traits: an object or null is required, not {type(traits).__name__}")
        return cls(kind, cid, mid, float(ts), uid, aid, name, float(amount), tuple(cats),
                   channel, traits, prev)
