"""Long-horizon synthetic populations (years of event time), with the ground truth beside them.

:mod:`stream_app.simulate` plays 60 days of one steady population, session by session. Real
history is longer and less kind, so a behavioural segmentation is also judged on two years
of populations that change under it (:func:`horizon_populations`):

* **seasonality**: every rate follows the calendar (a November-December peak, a summer dip);
* **a growing base**: customers keep arriving, more each month than the month before;
* **a group that appears half-way** (its customers arrive from the middle of the period on);
* **a group that fades**: from a given day its customers' rates decay to nothing;
* **purchase-only data**: a population with orders and nothing else, as a shop's order
  export replayed with ``segmenter replay`` (no views, carts or e-mail).

Each customer follows one :class:`Group`; its key is the truth. A customer is first seen at
its first order (purchase-only groups) or first visit, as in real histories. Events are
Segment-spec dicts in event-time order, one day at a time, deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

DAY = 86400.0
DAYS_PER_MONTH = 30.44
START = datetime(2023, 1, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Group:
    """How one group of customers behaves. Rates are per month, before seasonality."""

    key: str
    share: float  # of the customers drawn
    orders: float  # orders per month
    order_value: float  # median order total; log-normal spread 0.35
    views: float = 0.0  # product views per month (0: this data set has no browsing)
    carts: float = 0.0  # cart adds per month, beside the ones that become orders
    emails: float = 0.0  # e-mail opens per month
    click_p: float = 0.0  # chance an opened e-mail is clicked
    arrival: tuple[float, float] = (0.0, 1.0)  # first seen, as fractions of the period
    fade_from: float | None = None  # from this fraction of the period, rates decay ...
    fade_days: float = 60.0  # ... with this half-life
    categories: tuple[str, ...] = ("home",)


@dataclass(frozen=True, slots=True)
class Population:
    name: str
    description: str
    customers: int
    days: float
    groups: tuple[Group, ...]
    growth: float = 3.0  # arrivals at the end of the period / arrivals at the start
    seasonality: float = 0.4  # amplitude of the calendar effect on every rate
    seed: int = 1
    start: datetime = START

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return _events(self)

    @property
    def truth(self) -> dict[str, str]:
        return {c.cid: c.group.key for c in _draw(self)}


def horizon_populations(customers: int = 600, days: float = 730.0, seed: int = 1
                        ) -> list[Population]:
    """The benchmark's three populations (two years each by default)."""
    shop = Population(
        "shop", "browsing, e-mail and orders; subscribers appear half-way, deal seekers fade",
        customers, days, (
            Group("big_spenders", 0.15, orders=3.0, order_value=150.0, views=20.0, carts=3.0,
                  emails=4.0, click_p=0.15, categories=("electronics", "fashion")),
            Group("regulars", 0.25, orders=1.2, order_value=55.0, views=8.0, carts=1.0,
                  emails=3.0, click_p=0.1, categories=("grocery", "home")),
            Group("browsers", 0.2, orders=0.0, order_value=0.0, views=25.0, carts=4.0,
                  emails=1.0, click_p=0.05, categories=("sports", "electronics")),
            Group("email_fans", 0.15, orders=0.4, order_value=60.0, views=2.0, emails=20.0,
                  click_p=0.45, categories=("beauty", "books")),
            Group("deal_seekers", 0.12, orders=2.0, order_value=18.0, views=30.0, carts=6.0,
                  emails=6.0, click_p=0.3, arrival=(0.0, 0.4), fade_from=0.45,
                  categories=("fashion", "toys")),
            Group("subscribers", 0.13, orders=4.0, order_value=25.0, views=4.0, emails=2.0,
                  click_p=0.1, arrival=(0.5, 0.95), categories=("grocery",)),
        ), seed=seed)
    orders_only = Population(
        "orders-only", "purchase history only (an order export): no views, carts or e-mail",
        customers, days, (
            Group("vip", 0.12, orders=4.0, order_value=180.0),
            Group("steady", 0.28, orders=1.0, order_value=60.0),
            Group("small_baskets", 0.2, orders=3.0, order_value=15.0),
            Group("occasional", 0.25, orders=0.15, order_value=50.0),
            Group("fading_big", 0.15, orders=2.0, order_value=110.0, arrival=(0.0, 0.3),
                  fade_from=0.4),
        ), growth=4.0, seed=seed + 1)
    seasonal = Population(
        "seasonal", "strong seasonality, orders and browsing without e-mail; a wholesale "
        "group appears half-way",
        customers, days, (
            Group("gift_buyers", 0.25, orders=0.25, order_value=120.0, views=6.0, carts=1.0,
                  categories=("toys", "books")),
            Group("everyday", 0.3, orders=2.0, order_value=35.0, views=6.0, carts=1.0,
                  categories=("grocery",)),
            Group("collectors", 0.2, orders=1.0, order_value=90.0, views=40.0, carts=4.0,
                  categories=("books",)),
            Group("wholesale", 0.1, orders=6.0, order_value=400.0, views=10.0, carts=6.0,
                  arrival=(0.5, 0.9), categories=("home",)),
            Group("lookers", 0.15, orders=0.0, order_value=0.0, views=12.0, carts=0.5,
                  categories=("toys",)),
        ), seasonality=0.8, growth=2.0, seed=seed + 2)
    return [shop, orders_only, seasonal]


@dataclass(slots=True)
class _Customer:
    cid: str
    group: Group
    arrival: float  # seconds after the start
    seen: bool = False
    orders: int = 0
    seq: int = 0


def _draw(pop: Population) -> list[_Customer]:
    rng = random.Random(pop.seed)
    total = sum(g.share for g in pop.groups)
    counts = [round(pop.customers * g.share / total) for g in pop.groups]
    out = []
    for group, count in zip(pop.groups, counts, strict=True):
        lo, hi = group.arrival
        for _ in range(count):
            u = _growing(rng, pop.growth)
            out.append(_Customer("", group, (lo + (hi - lo) * u) * pop.days * DAY))
    rng.shuffle(out)
    for i, c in enumerate(out):
        c.cid = f"c-{i:06d}"
    return out


def _growing(rng: random.Random, growth: float) -> float:
    """A draw from [0, 1) with density rising linearly to ``growth`` times its start."""
    if growth == 1.0:
        return rng.random()
    a, b = 1.0, growth  # density a + (b - a) u, normalised: inverse of the CDF
    u = rng.random()
    return (-a + math.sqrt(a * a + (b * b - a * a) * u)) / (b - a)


def season(ts: float, amplitude: float) -> float:
    """Calendar effect on rates: peak in early December, trough in early June."""
    doy = datetime.fromtimestamp(ts, UTC).timetuple().tm_yday
    return max(1.0 + amplitude * math.cos(2.0 * math.pi * (doy - 340) / 365.25), 0.05)


def _events(pop: Population) -> Iterator[dict[str, Any]]:
    customers = _draw(pop)
    rng = random.Random(pop.seed * 7919 + 3)
    t0 = pop.start.timestamp()
    for day in range(math.ceil(pop.days)):
        day_start = day * DAY
        factor = season(t0 + day_start, pop.seasonality)
        rows: list[tuple[float, dict[str, Any]]] = []
        for c in customers:
            if c.arrival >= day_start + DAY:
                continue
            begin = max(day_start, c.arrival)
            rows.extend(_customer_day(c, rng, begin, day_start + DAY, factor, pop, t0))
        rows.sort(key=lambda row: row[0])
        for _, event in rows:
            yield event


def _customer_day(c: _Customer, rng: random.Random, begin: float, end: float, factor: float,
                  pop: Population, t0: float) -> list[tuple[float, dict[str, Any]]]:
    g = c.group
    rate = factor * (end - begin) / DAY / DAYS_PER_MONTH
    if g.fade_from is not None and begin > g.fade_from * pop.days * DAY:
        rate *= 0.5 ** ((begin - g.fade_from * pop.days * DAY) / DAY / g.fade_days)
    out: list[tuple[float, dict[str, Any]]] = []
    browsing = g.views > 0 or g.emails > 0
    n_orders = _poisson(rng, g.orders * rate)
    if not c.seen:
        c.seen = True
        if not browsing or g.orders > 0 and rng.random() < 0.5:
            n_orders = max(n_orders, 1)  # an order history starts at the first order
        elif not g.orders:
            out.append((begin, _track(c, "Product Viewed", begin, t0, _product(rng, g))))
    if browsing:
        for _ in range(_poisson(rng, g.views * rate)):
            at = rng.uniform(begin, end)
            out.append((at, _track(c, "Product Viewed", at, t0, _product(rng, g))))
        for _ in range(_poisson(rng, g.carts * rate)):
            at = rng.uniform(begin, end)
            out.append((at, _track(c, "Product Added", at, t0, _product(rng, g))))
        for _ in range(_poisson(rng, g.emails * rate)):
            at = rng.uniform(begin, end)
            props = {"email_id": f"newsletter-{rng.randrange(20):02d}"}
            out.append((at, _track(c, "Email Opened", at, t0, props, channel="email")))
            if rng.random() < g.click_p:
                out.append((at + 30.0, _track(c, "Email Link Clicked", at + 30.0, t0, props,
                                              channel="email")))
    for i in range(n_orders):
        at = begin if i == 0 and c.orders == 0 else rng.uniform(begin, end)
        c.orders += 1
        total = round(rng.lognormvariate(math.log(max(g.order_value, 1.0)), 0.35), 2)
        props = {"order_id": f"o-{c.cid}-{c.orders}", "total": total, "currency": "USD",
                 "category": rng.choice(g.categories)}
        out.append((at, _track(c, "Order Completed", at, t0, props)))
    return out


def _product(rng: random.Random, g: Group) -> dict[str, Any]:
    category = rng.choice(g.categories)
    pid = rng.randrange(500)
    return {"product_id": f"p-{category[:3]}-{pid:03d}", "category": category,
            "price": round(5.0 + (pid % 97) * 1.5, 2)}


def _track(c: _Customer, name: str, at: float, t0: float, props: Mapping[str, Any],
           channel: str = "browser") -> dict[str, Any]:
    c.seq += 1
    return {"type": "track", "event": name, "userId": c.cid, "messageId": f"{c.cid}:{c.seq}",
            "timestamp": _iso(t0 + at), "properties": dict(props),
            "context": {"channel": channel}}


def _iso(ts: float) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=round(ts, 3))
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k
