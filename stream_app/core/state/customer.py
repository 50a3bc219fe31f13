"""Per-customer state and its update: ``apply_in_place(state, interaction, cfg)``.

Everything here is event-time based and order-insensitive where it can be: decayed sums are
kept relative to a reference time and folded in exactly whatever order events come in, so a
replay of last year's history gives the same state as living through it.

Stored compactly (:mod:`stream_app.core.state.codec`) to stay well under 1 KiB per customer.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..events import interaction as ix
from ..events.interaction import Interaction
from ..predictive.summary import PurchaseSummary, merge_purchases, record_purchase, utc_day

DAY = 86400.0
MAX_RECENT_ORDERS = 12
MAX_CATEGORIES = 8
MAX_CHANNELS = 6
MAX_MERGED_IDS = 100  # default of SEGMENTER_MAX_MERGED_IDS


@dataclass(frozen=True, slots=True)
class StateConfig:
    session_gap_s: float = 30 * 60.0
    half_life_days: float = 30.0
    cart_abandon_after_s: float = DAY
    dedupe_window: int = 32
    max_merged_ids: int = MAX_MERGED_IDS


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    anonymous: bool = False
    # the customers (table keys: anonymous ids as ``anonymous_id:<id>``, renamed user ids)
    # whose history was merged into this one: all of them, so that erasure reaches every
    # link; at most StateConfig.max_merged_ids are requested by the customer's own events
    merged_ids: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    # purchases
    orders: int = 0
    revenue: float = 0.0
    refunds: int = 0
    refunded: float = 0.0
    first_order_at: float | None = None
    last_order_at: float | None = None
    recent_orders: list[list[float]] = field(default_factory=list)  # [ts, amount], newest last
    # decayed sums (half-life StateConfig.half_life_days), valued at decay_ref
    decay_ref: float = 0.0
    revenue_recent: float = 0.0
    orders_recent: float = 0.0
    engagement_recent: float = 0.0
    # browsing / cart
    product_views: int = 0
    cart_adds: int = 0
    cart_removes: int = 0
    checkouts: int = 0
    cart_pending_since: float | None = None
    carts_abandoned: int = 0
    page_views: int = 0
    screen_views: int = 0
    sessions: int = 0
    custom_events: int = 0
    # email / support
    email_opens: int = 0
    email_clicks: int = 0
    email_unsubscribed: bool = False
    support_contacts: int = 0
    # affinities
    channels: dict[str, int] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    # profile
    traits: dict[str, Any] = field(default_factory=dict)
    traits_at: float = 0.0
    # bookkeeping
    events: int = 0
    seen: list[int] = field(default_factory=list)  # recent message-id digests, newest last
    segments: dict[str, str] = field(default_factory=dict)  # segmentation -> segment id
    segment_aux: dict[str, Any] = field(default_factory=dict)  # per-segmentation extra state
    # exactly-once: per input channel ("<topic code>:<partition>"), the position
    # [offset, sub-index] of the last record applied (see processing.py, "Channels")
    stamps: dict[str, list[int]] = field(default_factory=dict)
    epoch: str = ""  # where this state was created: with change_seq, names each change
    # segment changes emitted so far, per segmentation (each its own count: one
    # segmentation's changes never shift another's ids)
    change_seq: dict[str, int] = field(default_factory=dict)
    evaluated_at: float = 0.0  # event time of the last evaluation (never goes back)
    # purchase days for the predictive models (BG/NBD, Gamma-Gamma): five numbers, not a
    # list of days (stream_app/core/predictive/summary.py); None before the first order
    purchases: PurchaseSummary | None = None

    def copy(self) -> CustomerState:
        """A deep copy, field by field: ``copy.deepcopy`` cost ~170 µs a state on the hot path
        (each batch copies every customer it touches); this costs a few µs. Every container is
        copied; ``tests/unit/test_state.py`` checks that no field is left out or shared."""
        return CustomerState(
            self.customer_id, self.anonymous, self.merged_ids[:], self.first_seen,
            self.last_seen, self.orders, self.revenue, self.refunds, self.refunded,
            self.first_order_at, self.last_order_at, [o[:] for o in self.recent_orders],
            self.decay_ref, self.revenue_recent, self.orders_recent, self.engagement_recent,
            self.product_views, self.cart_adds, self.cart_removes, self.checkouts,
            self.cart_pending_since, self.carts_abandoned, self.page_views, self.screen_views,
            self.sessions, self.custom_events, self.email_opens, self.email_clicks,
            self.email_unsubscribed, self.support_contacts, self.channels.copy(),
            self.categories.copy(), _copy_values(self.traits), self.traits_at, self.events,
            self.seen[:], self.segments.copy(), _copy_values(self.segment_aux),
            {k: v[:] for k, v in self.stamps.items()}, self.epoch, self.change_seq.copy(),
            self.evaluated_at, self.purchases)  # a tuple: immutable, shared safely


_ATOMS = (str, int, float, bool, type(None))


def _copy_values(d: dict[str, Any]) -> dict[str, Any]:
    """A dict whose values are copied unless immutable (trait lists, segmentation aux)."""
    out = d.copy()
    for key, value in d.items():
        if not isinstance(value, _ATOMS):
            out[key] = value[:] if type(value) is list and all(
                isinstance(v, _ATOMS) for v in value) else copy.deepcopy(value)
    return out


FIELD_NAMES = tuple(f.name for f in fields(CustomerState))


def message_digest(message_id: str) -> int:
    """48-bit digest of a message id: small to store, collisions negligible per customer."""
    return int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=6).digest(), "big")


def new_state(rec: Interaction) -> CustomerState:
    return CustomerState(customer_id=rec.customer_id,
                         anonymous=rec.user_id is None,
                         first_seen=rec.ts, last_seen=rec.ts, decay_ref=rec.ts)


def apply_in_place(s: CustomerState, rec: Interaction, cfg: StateConfig) -> bool:
    """Fold one interaction into ``s`` (owned by the caller). False if it was a duplicate."""
    digest = message_digest(rec.message_id)
    if digest in s.seen:
        return False
    s.seen.append(digest)
    if len(s.seen) > cfg.dedupe_window:
        # One out for one in: a merged customer's window holds both sides' (merge), and must
        # keep them as long as each side would have kept its own.
        del s.seen[0]
    ts = rec.ts
    s.events += 1
    if rec.user_id is not None and s.anonymous:
        s.anonymous = False

    # sessions: a gap of session_gap_s in event time opens a new one. "sessions == 0" rather
    # than "first event": a customer first seen through an identify or an email open still
    # opens a session with their first visit.
    gap = cfg.session_gap_s
    opens = s.sessions == 0 or ts - s.last_seen > gap or ts < s.first_seen - gap
    if opens and rec.kind not in (ix.IDENTIFY, ix.ALIAS, ix.EMAIL_OPEN):
        s.sessions += 1
    s.first_seen = min(s.first_seen, ts) if s.events > 1 else ts
    s.last_seen = max(s.last_seen, ts)

    _abandon_check(s, ts, cfg)
    kind = rec.kind
    engagement = 0.0
    if kind == ix.ORDER:
        s.orders += 1
        s.revenue += rec.amount
        s.first_order_at = ts if s.first_order_at is None else min(s.first_order_at, ts)
        s.last_order_at = ts if s.last_order_at is None else max(s.last_order_at, ts)
        s.recent_orders.append([ts, rec.amount])
        s.recent_orders.sort()  # by (ts, amount): the same list whatever the arrival order
        del s.recent_orders[:-MAX_RECENT_ORDERS]
        s.purchases = record_purchase(s.purchases, utc_day(ts), rec.amount)
        _decayed(s, ts, cfg, revenue=rec.amount, orders=1.0)
        if s.cart_pending_since is not None and s.cart_pending_since <= ts:
            s.cart_pending_since = None
        engagement = 3.0
    elif kind == ix.REFUND:
        s.refunds += 1
        s.refunded += rec.amount
        _decayed(s, ts, cfg, revenue=-rec.amount)
    elif kind == ix.PRODUCT_VIEW:
        s.product_views += 1
        engagement = 1.0
    elif kind == ix.CART_ADD:
        s.cart_adds += 1
        if s.cart_pending_since is None and (s.last_order_at is None or ts > s.last_order_at):
            s.cart_pending_since = ts
        engagement = 2.0
    elif kind == ix.CART_REMOVE:
        s.cart_removes += 1
    elif kind == ix.CHECKOUT:
        s.checkouts += 1
        engagement = 2.0
    elif kind == ix.PAGE_VIEW:
        s.page_views += 1
        engagement = 0.5
    elif kind == ix.SCREEN_VIEW:
        s.screen_views += 1
        engagement = 0.5
    elif kind == ix.EMAIL_OPEN:
        s.email_opens += 1
        engagement = 0.5
    elif kind == ix.EMAIL_CLICK:
        s.email_clicks += 1
        engagement = 1.0
    elif kind == ix.EMAIL_UNSUBSCRIBE:
        s.email_unsubscribed = True
    elif kind == ix.SUPPORT:
        s.support_contacts += 1
    elif kind == ix.IDENTIFY:
        if rec.traits and ts >= s.traits_at:
            s.traits.update(rec.traits)
            s.traits_at = ts
        elif rec.traits:  # older identify: only fill traits we do not have yet
            for key, value in rec.traits.items():
                s.traits.setdefault(key, value)
    elif kind == ix.CUSTOM:
        s.custom_events += 1
        engagement = 0.5
    if engagement:
        _decayed(s, ts, cfg, engagement=engagement)
    if rec.channel and kind not in (ix.IDENTIFY, ix.ALIAS):
        _bump(s.channels, rec.channel, 1, MAX_CHANNELS)
    if rec.categories:
        weight = {ix.ORDER: 3.0, ix.CART_ADD: 2.0}.get(kind, 1.0)
        for cat in rec.categories:
            _bump(s.categories, cat, weight, MAX_CATEGORIES)
    return True


def _remember(s: CustomerState, key: str) -> None:
    if key != s.customer_id and key not in s.merged_ids:
        s.merged_ids.append(key)


def _bump(counts: dict[str, Any], key: str, by: float, cap: int) -> None:
    """Space-Saving top-k (Metwally et al.): a new key when full takes the weakest key's
    place *and count*, so a rising interest can enter (evicting the newcomer instead would
    freeze the top list once it is full). Counts over-estimate by at most the evicted count."""
    if key in counts or len(counts) < cap:
        counts[key] = counts.get(key, 0) + by
        return
    weakest = min(counts, key=lambda k: (counts[k], k))
    counts[key] = counts.pop(weakest) + by


def _decay_factor(dt: float, cfg: StateConfig) -> float:
    return math.exp2(-dt / (cfg.half_life_days * DAY))


def _decayed(s: CustomerState, ts: float, cfg: StateConfig, *, revenue: float = 0.0,
             orders: float = 0.0, engagement: float = 0.0) -> None:
    """Add amounts at event time ``ts`` to decayed sums valued at ``decay_ref``.

    Moving the reference forward scales the sums; an older event is discounted to the
    reference. Either way the result is the same whatever order events arrive in.
    """
    if ts > s.decay_ref:
        f = _decay_factor(ts - s.decay_ref, cfg)
        s.revenue_recent *= f
        s.orders_recent *= f
        s.engagement_recent *= f
        s.decay_ref = ts
        w = 1.0
    else:
        w = _decay_factor(s.decay_ref - ts, cfg)
    s.revenue_recent += revenue * w
    s.orders_recent += orders * w
    s.engagement_recent += engagement * w


def _abandon_check(s: CustomerState, now: float, cfg: StateConfig) -> None:
    if s.cart_pending_since is not None and now - s.cart_pending_since > cfg.cart_abandon_after_s:
        s.carts_abandoned += 1
        s.cart_pending_since = None


def merge(into: CustomerState, other: CustomerState, cfg: StateConfig = StateConfig()
          ) -> CustomerState:
    """Pure: the state of ``into`` with another customer's history ``other`` folded in
    (its counts, not its bookkeeping: stamps, segments and change sequence stay ``into``'s)."""
    out = into.copy()
    if other.events == 0:
        _remember(out, other.customer_id)  # absorbed, if with nothing to fold in
        for key in other.merged_ids:
            _remember(out, key)
        return out
    if out.events == 0:
        out.first_seen, out.last_seen, out.decay_ref = other.first_seen, other.last_seen, other.decay_ref
    for name in ("orders", "refunds", "product_views", "cart_adds", "cart_removes", "checkouts",
                 "carts_abandoned", "page_views", "screen_views", "sessions", "custom_events",
                 "email_opens", "email_clicks", "support_contacts", "events"):
        setattr(out, name, getattr(out, name) + getattr(other, name))
    out.revenue += other.revenue
    out.refunded += other.refunded
    out.email_unsubscribed = out.email_unsubscribed or other.email_unsubscribed
    out.first_seen = min(out.first_seen, other.first_seen)
    out.last_seen = max(out.last_seen, other.last_seen)
    for attr, pick in (("first_order_at", min), ("last_order_at", max)):
        a, b = getattr(out, attr), getattr(other, attr)
        setattr(out, attr, b if a is None else a if b is None else pick(a, b))
    out.recent_orders = sorted(out.recent_orders + other.recent_orders)[-MAX_RECENT_ORDERS:]
    out.purchases = merge_purchases(out.purchases, other.purchases)
    # align decayed sums to the later reference, then add
    ref = max(out.decay_ref, other.decay_ref)
    fa, fb = _decay_factor(ref - out.decay_ref, cfg), _decay_factor(ref - other.decay_ref, cfg)
    out.revenue_recent = out.revenue_recent * fa + other.revenue_recent * fb
    out.orders_recent = out.orders_recent * fa + other.orders_recent * fb
    out.engagement_recent = out.engagement_recent * fa + other.engagement_recent * fb
    out.decay_ref = ref
    # A cart stays pending only if no order in the merged history came at or after it (as in
    # apply): an anonymous cart checked out once signed in is not abandoned.
    pending = [p for p in (out.cart_pending_since, other.cart_pending_since)
               if p is not None and (out.last_order_at is None or p > out.last_order_at)]
    out.cart_pending_since = min(pending) if pending else None
    for key, value in other.channels.items():
        _bump(out.channels, key, value, MAX_CHANNELS)
    for key, value in other.categories.items():
        _bump(out.categories, key, value, MAX_CATEGORIES)
    for key, value in other.traits.items():
        out.traits.setdefault(key, value)
    # Both windows, whole (up to twice dedupe_window): a duplicate of either side's recent
    # messages is one whether it arrives before the merge or after it. Cutting the union to
    # one window dropped the survivor's own latest ids behind the absorbed ones, so a
    # duplicate replayed after the merge (a restart between the two) was applied again.
    for digest in other.seen:
        if digest not in out.seen:
            out.seen.append(digest)
    del out.seen[: max(0, len(out.seen) - 2 * cfg.dedupe_window)]
    _remember(out, other.customer_id)
    for key in other.merged_ids:
        _remember(out, key)
    out.evaluated_at = max(out.evaluated_at, other.evaluated_at)
    return out


@dataclass(slots=True)
class Link:
    """What the table holds for an id merged into another customer: where its events go
    now, and the stamps of the state it replaced (records at or below them were applied to
    that state, which now lives in ``target``: they are duplicates)."""

    target: str
    stamps: dict[str, list[int]] = field(default_factory=dict)

    def copy(self) -> Link:
        return Link(self.target, {k: v[:] for k, v in self.stamps.items()})


@dataclass(slots=True)
class Erased:
    """What the table holds for an erased id: no data, only the stamps (a record replayed
    after a crash must not bring the customer back) and when it was erased (wall clock;
    the key itself is deleted after SEGMENTER_ERASED_KEEP_S)."""

    stamps: dict[str, list[int]] = field(default_factory=dict)
    erased_at: float = 0.0
    generation: int = 1  # erasures of this id so far: a new customer's epoch starts with it

    def copy(self) -> Erased:
        return Erased({k: v[:] for k, v in self.stamps.items()}, self.erased_at,
                      self.generation)


@dataclass(slots=True)
class Clock:
    """One per partition (key :func:`clock_key`): a time tick has evaluated (or is
    evaluating) every customer of the partition at event time ``tick_at``. An event is
    evaluated no earlier than this, as the tick would."""

    tick_at: float = 0.0

    def copy(self) -> Clock:
        return Clock(self.tick_at)


def clock_key(partition: int) -> str:
    return f"\x00clock:{partition}"  # ids never hold control characters: no customer's key


Entry = CustomerState | Link | Erased | Clock  # a customers-table value
