"""The contract every segmentation meets, whether learned (clustering) or declared (rules).

A segmentation is a named partition of customers: in each, a customer is in exactly one
segment or none. The worker calls :meth:`Segmentation.decide` with the customer's state and
features at the current event time; the segmentation returns a :class:`Decision`, or None
when deciding would change neither the segment nor its bookkeeping (the common case, told
cheaply). The worker compares a Decision with the membership stored in
``state.segments[name]`` and, when it differs, stores the new one and emits a segment-change
event.

Implementations are pure given their model/definitions: no I/O in ``decide``. Per-customer
memory a segmentation needs (hysteresis counters, ...) lives in
``state.segment_aux[name]``: ``decide`` receives the current value and returns the new one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..state.customer import CustomerState


@dataclass(frozen=True, slots=True)
class Decision:
    segment: str | None  # stable segment id, or None for "in no segment (yet)"
    segment_name: str | None
    version: int | None  # model version (clustering) or definitions version (rules)
    reason: str  # short human-readable cause, e.g. "orders_30d >= 3" or "nearest centre"
    why: dict[str, Any] = field(default_factory=dict)  # explanation for GET /customers/{id}
    aux: Any = None  # new value for state.segment_aux[name]; None removes it


class Segmentation(Protocol):
    name: str
    # whether time passing alone can move a customer: the time tick re-evaluates only these
    time_sensitive: bool

    @property
    def version(self) -> int | None: ...

    def decide(self, state: CustomerState, feats: dict[str, Any], now: float, aux: Any,
               traits_changed: bool = True, explain: bool = False) -> Decision | None:
        """The customer's segment at event time ``now``, given its ``aux``; None when that
        keeps both the segment and ``aux`` as they are, unless ``explain`` (then always a
        Decision, its ``why`` filled in). ``traits_changed=False`` promises the profile
        traits are those of the last evaluation."""
        ...

    def describe(self) -> dict[str, Any]:
        """Segments with readable names and profiles, for GET /segments."""
        ...


def change_id(customer_id: str, segmentation: str, previous: str | None, segment: str | None,
              cause: str) -> str:
    """Deterministic id of a segment change: the same cause always gives the same id.

    ``cause`` names what caused it: the message id of the event, or ``tick:<event time>``.
    """
    key = "\x1f".join((customer_id, segmentation, previous or "", segment or "", cause))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
