"""Synthetic Segment-spec traffic from known customer personas, with the ground truth beside it.

Why: a learned segmentation can only be judged against something known. Every simulated
customer follows one :class:`Persona` (frequent high spenders, window shoppers, ...), so a
benchmark can compare the segments the service finds with the personas that produced the
traffic, and an end-to-end test can make a customer change behaviour (a :class:`Shift`) and
watch the segment follow.

Properties the rest of the project relies on:

* **Spec events.** Each event is a plain dict shaped like a Segment/RudderStack call
  (``track``/``page``/``screen``/``identify``) with ``messageId``, ``userId`` and/or
  ``anonymousId`` and an ISO-8601 ``timestamp`` in simulated event time, so it goes through
  the real parser.
* **Streamable.** Events come out in event-time order, one simulated day at a time, so memory
  stays bounded by a day of traffic and a CLI can pace them at any rate.
* **Deterministic.** The same arguments give the same events and ground truth, in any process
  (only :mod:`random` seeded with an integer is used; no hash-order dependence).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY = 86400.0
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
CATEGORIES = ("electronics", "fashion", "home", "grocery", "beauty", "sports", "toys", "books")
COUNTRIES = (
    ("US", "CA", "San Francisco"), ("US", "NY", "New York"), ("GB", "ENG", "London"),
    ("DE", "BE", "Berlin"), ("FR", "IDF", "Paris"), ("NL", "NH", "Amsterdam"),
)
INTERESTS = ("tech", "fashion", "cooking", "outdoors", "gaming", "fitness", "travel", "reading")


@dataclass(frozen=True, slots=True)
class Persona:
    """How one kind of customer behaves. Rates are per simulated day."""

    key: str
    description: str
    share: float  # share of the simulated population
    sessions_per_day: float  # visits not started from an e-mail
    views: tuple[int, int]  # product views per session (inclusive range)
    order_p: float  # chance a session ends in an order
    abandon_p: float  # chance a session without an order still adds to the cart
    order_value: float  # median order total (USD); spread is log-normal
    emails_per_day: float  # marketing e-mails opened per day
    click_p: float  # chance an opened e-mail is clicked; a click starts a session
    categories: tuple[str, ...]  # categories it browses, most preferred first
    mobile_p: float  # share of sessions in the mobile app rather than the web site
    anonymous_p: float = 0.0  # share that never identifies (anonymousId only)
    arrival: tuple[float, float] = (0.0, 0.25)  # first visit, as a fraction of the period
    orders_first_visit: bool = False  # the first session always ends in an order
    max_orders: int | None = None  # stops ordering after this many orders
    active_days: float | None = None  # after this many days, visits fall to dormant_per_day
    dormant_per_day: float = 0.0


PERSONAS: tuple[Persona, ...] = (
    Persona("champions", "frequent high spenders", 0.12, sessions_per_day=0.6, views=(3, 8),
            order_p=0.45, abandon_p=0.3, order_value=160.0, emails_per_day=0.3, click_p=0.15,
            categories=("electronics", "fashion", "home"), mobile_p=0.6),
    Persona("loyal_regulars", "steady mid-value buyers", 0.18, sessions_per_day=0.25,
            views=(2, 5), order_p=0.35, abandon_p=0.2, order_value=55.0, emails_per_day=0.15,
            click_p=0.1, categories=("grocery", "home", "beauty"), mobile_p=0.4),
    Persona("bargain_hunters", "many views and carts, small baskets", 0.15, sessions_per_day=0.6,
            views=(8, 16), order_p=0.11, abandon_p=0.6, order_value=18.0, emails_per_day=0.35,
            click_p=0.35, categories=("fashion", "toys", "sports"), mobile_p=0.5),
    Persona("new_customers", "first order in the last days", 0.12, sessions_per_day=0.5,
            views=(2, 6), order_p=0.15, abandon_p=0.3, order_value=45.0, emails_per_day=0.3,
            click_p=0.2, categories=("beauty", "home", "books"), mobile_p=0.5,
            arrival=(0.85, 0.97), orders_first_visit=True, max_orders=2, active_days=7.0),
    Persona("lapsing_one_time", "bought once early, then went quiet", 0.15,
            sessions_per_day=0.3, views=(1, 4), order_p=0.0, abandon_p=0.1, order_value=40.0,
            emails_per_day=0.02, click_p=0.0, categories=("books", "toys", "sports"),
            mobile_p=0.3, arrival=(0.0, 0.2), orders_first_visit=True, max_orders=1,
            active_days=3.0, dormant_per_day=0.01),
    Persona("window_shoppers", "browse and fill carts, never buy", 0.16, sessions_per_day=0.35,
            views=(4, 10), order_p=0.0, abandon_p=0.35, order_value=0.0, emails_per_day=0.05,
            click_p=0.05, categories=("electronics", "sports", "fashion"), mobile_p=0.5,
            anonymous_p=0.5, arrival=(0.0, 0.5)),
    Persona("email_engaged", "open and click e-mails, buy occasionally", 0.12,
            sessions_per_day=0.05, views=(1, 4), order_p=0.13, abandon_p=0.15,
            order_value=65.0, emails_per_day=0.8, click_p=0.45,
            categories=("beauty", "fashion", "books"), mobile_p=0.2),
)
PERSONA_KEYS = tuple(p.key for p in PERSONAS)


@dataclass(frozen=True, slots=True)
class Shift:
    """``customer_id`` behaves like ``persona`` from the simulated day containing ``day``
    (days after the start) on."""

    customer_id: str
    day: float
    persona: str


@dataclass(slots=True)
class _Customer:
    cid: str
    user_id: str | None
    device_id: str
    persona: Persona
    arrival: float  # seconds after the start
    traits: dict[str, Any]
    seq: int = 0
    orders: int = 0
    identified: bool = False
    became_at: float = 0.0  # when the current persona began (arrival, or a shift)


@dataclass(frozen=True)
class Simulation:
    """Iterate for the events (each iteration replays the same stream); read the truth.

    ``ground_truth`` maps each customer id (``userId``, or ``anonymousId`` for prospects) to
    the persona it follows at the end of the period; ``initial`` to the one it started with.
    """

    customers: int
    days: float
    seed: int
    start: datetime
    shifts: tuple[Shift, ...]
    personas: tuple[Persona, ...]
    initial: Mapping[str, str]
    ground_truth: Mapping[str, str]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return _events(self)


def population(customers: int, seed: int = 0, personas: Sequence[Persona] = PERSONAS
               ) -> dict[str, str]:
    """Customer id -> persona key, exactly as :func:`simulate` will draw them."""
    return {c.cid: c.persona.key for c in _draw_customers(customers, 1.0, seed, personas)}


def shifts_for(initial: Mapping[str, str], *, share: float, day: float, source: str,
               target: str, seed: int = 0) -> list[Shift]:
    """Pick ``share`` of the ``source`` customers (identified ones) to become ``target``."""
    pool = sorted(cid for cid, key in initial.items()
                  if key == source and not cid.startswith("anon-"))
    rng = random.Random(seed)
    chosen = rng.sample(pool, round(len(pool) * share))
    return [Shift(cid, day, target) for cid in sorted(chosen)]


def simulate(customers: int = 1000, days: float = 60.0, seed: int = 0,
             start: datetime = DEFAULT_START, shifts: Sequence[Shift] = (),
             personas: Sequence[Persona] = PERSONAS) -> Simulation:
    """Plan a simulated population over ``days``; iterate the result for its events."""
    if customers < 1 or days <= 0:
        raise ValueError("customers must be >= 1 and days > 0")
    by_key = {p.key: p for p in personas}
    drawn = _draw_customers(customers, days, seed, personas)
    initial = {c.cid: c.persona.key for c in drawn}
    final = dict(initial)
    for shift in sorted(shifts, key=lambda s: s.day):
        if shift.customer_id not in final or shift.persona not in by_key:
            raise ValueError(f"unknown customer or persona in {shift}")
        final[shift.customer_id] = shift.persona
    return Simulation(customers, days, seed, start, tuple(shifts), tuple(personas), initial,
                      final)


def _draw_customers(n: int, days: float, seed: int, personas: Sequence[Persona]
                    ) -> list[_Customer]:
    rng = random.Random(seed)
    total = sum(p.share for p in personas)
    # Largest-remainder apportionment: the population mix is exact, not left to chance.
    quotas = [n * p.share / total for p in personas]
    counts = [math.floor(q) for q in quotas]
    for i in sorted(range(len(personas)), key=lambda i: counts[i] - quotas[i])[: n - sum(counts)]:
        counts[i] += 1
    kinds = [p for p, c in zip(personas, counts, strict=True) for _ in range(c)]
    rng.shuffle(kinds)
    out = []
    for i, persona in enumerate(kinds):
        anonymous = rng.random() < persona.anonymous_p
        cid = f"anon-{i:06d}" if anonymous else f"u-{i:06d}"
        lo, hi = persona.arrival
        arrival = rng.uniform(lo, hi) * days * DAY
        country, region, city = rng.choice(COUNTRIES)
        traits = {
            "age": rng.randint(18, 75),
            "gender": rng.choice(("female", "male", "non-binary")),
            "income": round(rng.lognormvariate(math.log(45000), 0.4), -2),
            "address": {"country": country, "region": region, "city": city},
            "interests": sorted(rng.sample(INTERESTS, 2)),
        }
        out.append(_Customer(cid, None if anonymous else cid, f"d-{i:06d}", persona, arrival,
                             traits, became_at=arrival))
    return out


def _events(sim: Simulation) -> Iterator[dict[str, Any]]:
    """All events, one simulated day at a time, sorted by event time within (and so across)
    days: sessions are kept inside their day, so no event crosses a day boundary."""
    by_key = {p.key: p for p in sim.personas}
    population_ = _draw_customers(sim.customers, sim.days, sim.seed, sim.personas)
    shifts: dict[str, list[Shift]] = {}
    for shift in sorted(sim.shifts, key=lambda s: s.day):
        shifts.setdefault(shift.customer_id, []).append(shift)
    rng = random.Random(sim.seed * 1_000_003 + 1)
    t0 = sim.start.timestamp()
    for day in range(math.ceil(sim.days)):
        day_start = day * DAY
        day_end = min((day + 1) * DAY, sim.days * DAY)
        batch: list[tuple[float, dict[str, Any]]] = []
        for cust in population_:
            for shift in shifts.get(cust.cid, ()):
                if day_start <= shift.day * DAY < day_start + DAY:
                    cust.persona = by_key[shift.persona]
                    cust.became_at = shift.day * DAY
            if cust.arrival >= day_end:
                continue
            batch.extend(_customer_day(cust, rng, day_start, max(day_start, cust.arrival), day_end,
                                       t0))
        batch.sort(key=lambda row: row[0])  # stable: ties keep generation order
        for _, event in batch:
            yield event


def _customer_day(c: _Customer, rng: random.Random, day_start: float, begin: float, end: float,
                  t0: float) -> list[tuple[float, dict[str, Any]]]:
    p = c.persona
    out: list[tuple[float, dict[str, Any]]] = []
    span = end - begin
    first_visit = c.seq == 0
    rate = p.sessions_per_day
    if p.active_days is not None and begin - c.became_at > p.active_days * DAY:
        rate = p.dormant_per_day
    starts = [begin + rng.random() * span for _ in range(_poisson(rng, rate * span / DAY))]
    if first_visit:
        starts.append(begin)
    # e-mails reach identified customers only, from the day after they signed up
    emails = _poisson(rng, p.emails_per_day * span / DAY) if c.identified else 0
    for _ in range(emails):
        at = begin + rng.random() * span
        out.append(_email(c, rng, at, t0, "Email Opened"))
        if rng.random() < p.click_p:
            out.append(_email(c, rng, at + 30.0, t0, "Email Link Clicked"))
            starts.append(at + 60.0)
    for at in sorted(starts):
        out.extend(_session(c, rng, at, day_start, end, t0))
    return out


def _session(c: _Customer, rng: random.Random, at: float, day_start: float, end: float,
             t0: float) -> list[tuple[float, dict[str, Any]]]:
    p = c.persona
    mobile = rng.random() < p.mobile_p
    lo, hi = p.views
    n_views = rng.randint(lo, hi)
    # keep the whole session inside its day: at most n_views + 8 events, < 110 s apart
    at = max(min(at, end - 110.0 * (n_views + 8)), day_start)
    out: list[tuple[float, dict[str, Any]]] = []

    def emit(event: dict[str, Any]) -> None:
        nonlocal at
        out.append((at, _stamp(c, event, at, t0, mobile)))
        at += rng.uniform(10.0, 110.0)

    if c.user_id and not c.identified:
        emit({"type": "identify", "traits": c.traits})
        c.identified = True
    emit({"type": "screen" if mobile else "page", "name": "Home"})
    can_order = p.max_orders is None or c.orders < p.max_orders
    ordering = can_order and (
        (p.orders_first_visit and c.orders == 0) or rng.random() < p.order_p)
    carting = ordering or rng.random() < p.abandon_p
    products = []
    for _ in range(n_views):
        product = _product(rng, p)
        products.append(product)
        emit({"type": "track", "event": "Product Viewed", "properties": {**product}})
    if carting:
        basket = rng.sample(products, min(len(products), rng.randint(1, 3)))
        for product in basket:
            emit({"type": "track", "event": "Product Added", "properties": {**product}})
        if ordering:
            total = rng.lognormvariate(math.log(p.order_value), 0.3)
            scale = total / sum(item["price"] for item in basket)
            items = [{**item, "price": round(item["price"] * scale, 2), "quantity": 1}
                     for item in basket]
            props = {"currency": "USD", "products": items}
            emit({"type": "track", "event": "Checkout Started", "properties": props})
            c.orders += 1
            emit({"type": "track", "event": "Order Completed",
                  "properties": {**props, "order_id": f"o-{c.cid}-{c.orders}",
                                 "total": round(sum(i["price"] for i in items), 2)}})
    return out


def _product(rng: random.Random, p: Persona) -> dict[str, Any]:
    # the persona's first category is the most likely; now and then any category
    if rng.random() < 0.85:
        category = rng.choices(p.categories, cum_weights=_rank_weights(len(p.categories)))[0]
    else:
        category = rng.choice(CATEGORIES)
    pid = rng.randrange(1000)
    return {"product_id": f"p-{category[:3]}-{pid:03d}", "category": category,
            "price": round(5.0 + (pid % 97) * 1.5, 2)}


@functools.lru_cache(maxsize=16)
def _rank_weights(n: int) -> tuple[float, ...]:
    """Cumulative 1/rank weights: the first category twice as likely as the second, ..."""
    return tuple(itertools.accumulate(1.0 / (rank + 1) for rank in range(n)))


def _email(c: _Customer, rng: random.Random, at: float, t0: float, name: str
           ) -> tuple[float, dict[str, Any]]:
    campaign = f"newsletter-{rng.randrange(20):02d}"
    event = {"type": "track", "event": name,
             "properties": {"email_id": campaign}, "context": {"channel": "email"}}
    c.seq += 1
    return at, _identity(c, event, at, t0, with_device=False)


def _stamp(c: _Customer, event: dict[str, Any], at: float, t0: float, mobile: bool
           ) -> dict[str, Any]:
    event["context"] = {"channel": "mobile" if mobile else "browser"}
    c.seq += 1
    return _identity(c, event, at, t0, with_device=True)


def _identity(c: _Customer, event: dict[str, Any], at: float, t0: float, *, with_device: bool
              ) -> dict[str, Any]:
    event["messageId"] = f"{c.cid}:{c.seq}"
    if c.user_id:
        event["userId"] = c.user_id
    if with_device or not c.user_id:
        event["anonymousId"] = c.device_id if c.user_id else c.cid
    event["timestamp"] = _iso(t0 + at)
    return event


def _iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds; hand-rolled because strftime was the generator's
    single largest cost."""
    day, ms = divmod(int(ts * 1000), 86_400_000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{_date(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}Z"


@functools.lru_cache(maxsize=4096)
def _date(epoch_day: int) -> str:
    return datetime.fromtimestamp(epoch_day * DAY, UTC).strftime("%Y-%m-%d")


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: exact and fast for the small rates used here."""
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k

