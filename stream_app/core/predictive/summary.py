"""A customer's purchase history as the models read it: five numbers, updated per order.

Time unit: **days**. A *repeat purchase* is a purchase on a later UTC calendar day than the
customer's previous purchase day (FHL 2005 count CDNOW's purchases the same way), so several
orders on one day are one transaction, and the first purchase day is not a repeat. Then, at an
evaluation time ``now`` (the watermark):

* ``x`` = repeat purchase days, ``t_x`` = last purchase day - first purchase day (0 when
  ``x == 0``), ``T`` = ``now``'s UTC day - first purchase day; whole days, so the inputs the
  trainer fits and the inputs a prediction uses are the same kind of number, and identical
  rows (the same ``x, t_x, T``) are common enough to fit 1M customers in seconds.
* ``m_x`` for Gamma-Gamma = the mean value of the **repeat** transactions, a transaction
  being the sum of the orders of one repeat day. The first day's orders are left out, as
  in FHL's "RFM and CLV" (CDNOW: "the average value of repeat transactions"), because
  Gamma-Gamma weighs ``m_x`` by ``x`` and predicts the value of *future* transactions, which
  are repeat ones; the first purchase often differs (a starter offer, a big first basket).

State: ``first_day``, ``first_value`` (sum of the first day's orders: kept so an order dated
before ``first_day`` can turn it into a repeat), ``last_day``, ``repeats``,
``repeat_value``. Orders dated on or after ``last_day``, on ``first_day``, or before it are
folded in exactly in any arrival order. An order that arrives late *between* the first and
last day cannot be told apart from another order on a day already counted without a list of
days, so it counts as a new repeat day (exact when a customer's orders arrive in order, as a
partition keyed by customer delivers them).

>>> s = record_purchase(None, 19_000, 30.0)      # first order, day 19000
>>> s = record_purchase(s, 19_000, 5.0)          # same day: not a repeat
>>> s = record_purchase(s, 19_010, 20.0)         # repeat
>>> s = record_purchase(s, 19_010, 10.0)         # same repeat day: one transaction of 30
>>> s
PurchaseSummary(first_day=19000, first_value=35.0, last_day=19010, repeats=1, repeat_value=30.0)
>>> model_inputs(s, now_day=19_030)              # (x, t_x, T, m_x)
(1, 10, 30, 30.0)
"""

from __future__ import annotations

import math
from typing import NamedTuple

DAY_S = 86400.0


class PurchaseSummary(NamedTuple):
    first_day: int  # UTC day number (days since 1970-01-01) of the first purchase
    first_value: float  # sum of the first day's orders
    last_day: int  # UTC day number of the latest purchase
    repeats: int  # purchase days after the first one (x)
    repeat_value: float  # sum of the orders on those days (m_x = repeat_value / repeats)


def utc_day(ts: float) -> int:
    """UTC calendar day number of a Unix timestamp in seconds."""
    return math.floor(ts / DAY_S)


def record_purchase(summary: PurchaseSummary | None, day: int, value: float) -> PurchaseSummary:
    """The summary after one more order of ``value`` on UTC day ``day``. Pure."""
    if summary is None:
        return PurchaseSummary(day, value, day, 0, 0.0)
    first, first_value, last, repeats, repeat_value = summary
    if day == first:
        return summary._replace(first_value=first_value + value)
    if day < first:  # an older order arrived late: the old first day becomes a repeat day
        return PurchaseSummary(day, value, last, repeats + 1, repeat_value + first_value)
    if day == last:  # day > first here, so last is a repeat day already
        return summary._replace(repeat_value=repeat_value + value)
    return PurchaseSummary(first, first_value, max(last, day), repeats + 1, repeat_value + value)


def model_inputs(summary: PurchaseSummary, now_day: int) -> tuple[int, int, int, float]:
    """``(x, t_x, T, m_x)`` at UTC day ``now_day``; ``m_x`` is 0.0 without repeats.

    ``T`` is never below ``t_x`` (a watermark behind the latest order counts as that day).
    """
    first, _, last, repeats, repeat_value = summary
    t_x = last - first
    return (repeats, t_x, max(now_day - first, t_x),
            repeat_value / repeats if repeats else 0.0)


def merge_purchases(a: PurchaseSummary | None, b: PurchaseSummary | None
                    ) -> PurchaseSummary | None:
    """One customer's summary from two histories' (a merge of identities). Pure.

    Exact for the days a summary names (each one's first and last day, folded in as orders
    of that day); the other repeat days of ``b`` (``b.repeats - 1`` of them, strictly between
    its first and last day) are counted as new days, since a summary cannot tell whether
    ``a`` bought on one of them too. So a merged customer's ``x`` can be over by the days
    both histories shared, never under.

    >>> a = PurchaseSummary(10, 5.0, 20, 2, 30.0)    # days 10, 1x, 20
    >>> merge_purchases(a, PurchaseSummary(20, 7.0, 20, 0, 0.0))   # day 20 again
    PurchaseSummary(first_day=10, first_value=5.0, last_day=20, repeats=2, repeat_value=37.0)
    """
    if a is None or b is None:
        return a if b is None else b
    out = record_purchase(a, b.first_day, b.first_value)
    if b.repeats == 0:
        return out
    middle = b.repeats - 1
    last_value = b.repeat_value / b.repeats  # what b's last day held is not kept: its share
    out = record_purchase(out, b.last_day, last_value)
    if middle:
        out = out._replace(repeats=out.repeats + middle,
                           repeat_value=out.repeat_value + b.repeat_value - last_value)
    return out


def from_orders(orders: list[list[float]]) -> PurchaseSummary | None:
    """The summary of ``[[ts, amount], ...]`` orders (any order): exact for a whole history."""
    summary = None
    for ts, amount in sorted(orders):
        summary = record_purchase(summary, utc_day(ts), amount)
    return summary
