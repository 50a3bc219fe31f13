"""Predictions in the stream: the parameters a worker loaded, and each customer's figures.

A worker holds one :class:`LivePredictions`. It loads the ``predictive`` part of each model
snapshot (:meth:`LivePredictions.load`), and the step asks it, after every applied event
and at every time tick, for the customer's four figures at that event time
(:meth:`LivePredictions.of`). Nothing of it is stored in customer state: the figures follow
from the customer's :class:`~.summary.PurchaseSummary` and the parameters loaded.

* ``p_alive``: BG/NBD's probability that the customer is still a customer;
* ``expected_orders_30d`` / ``_90d``: expected purchase days in the next 30 / 90 days;
* ``expected_revenue_90d``: Gamma-Gamma's expected value of a transaction times the expected
  purchase days in 90 days (None without a usable Gamma-Gamma fit).

All four are None for a customer without an order and while no model is loaded.

The BG/NBD figures depend only on the whole-day inputs ``(x, t_x, T)``, so they are kept in
a bounded cache (:data:`CACHE_SIZE` entries, dropped when new parameters load): computing
them costs ~6 µs a customer (two Gauss hypergeometric functions), a cache hit ~0.3 µs.

>>> from stream_app.core.predictive import BgNbdParams, GammaGammaParams
>>> from stream_app.core.predictive.summary import PurchaseSummary
>>> live = LivePredictions()
>>> live.of(PurchaseSummary(19000, 30.0, 19060, 3, 120.0), 19090 * 86400.0)["p_alive"] is None
True
>>> live.load({"bgnbd": {"format": 1, "model": "bgnbd", "status": "ok", "time_unit": "days",
...     "params": {"r": 0.5, "alpha": 20.0, "a": 0.8, "b": 3.0}, "customers": 5000,
...     "log_likelihood": -1.0, "fitted_at": 0.0, "converged": True}}, version=3)
True
>>> out = live.of(PurchaseSummary(19000, 30.0, 19060, 3, 120.0), 19090 * 86400.0)
>>> round(out["p_alive"], 3), out["expected_revenue_90d"] is None
(0.672, True)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .bgnbd import BgNbdParams
from .fitting import Fit
from .gamma_gamma import GammaGammaParams
from .predict import Predictor
from .summary import DAY_S, PurchaseSummary

PREDICTION_FEATURES = ("p_alive", "expected_orders_30d", "expected_orders_90d",
                       "expected_revenue_90d")
NO_PREDICTIONS: dict[str, float | None] = dict.fromkeys(PREDICTION_FEATURES)
CACHE_SIZE = 50_000  # (x, t_x, T) triples; ~150 bytes each


class LivePredictions:
    """The fitted parameters in force on a worker (or none) and the figures they give."""

    __slots__ = ("predictor", "version", "fits", "_cache")

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.version: int | None = None  # of the model snapshot the parameters came with
        self.fits: dict[str, Fit | None] = {"bgnbd": None, "gamma_gamma": None}
        self._cache: dict[tuple[int, int, int], tuple[float, float, float]] = {}

    @classmethod
    def fixed(cls, bgnbd: BgNbdParams, gamma_gamma: GammaGammaParams | None = None,
              customers: int = 0, version: int = 0) -> LivePredictions:
        """Predictions from given parameters (benchmarks, tests, what-ifs)."""
        out = cls()
        fits = {"bgnbd": Fit("bgnbd", "ok", bgnbd, customers, None, 0.0, True)}
        if gamma_gamma is not None:
            fits["gamma_gamma"] = Fit("gamma_gamma", "ok", gamma_gamma, customers, None, 0.0,
                                      True)
        out.load({name: fit.to_json() for name, fit in fits.items()}, version)
        return out

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def load(self, part: Mapping[str, Any] | None, version: int | None) -> bool:
        """Take the ``predictive`` part of a model snapshot; True when the parameters in
        force changed. A part without a usable BG/NBD fit leaves what is loaded alone (the
        trainer only publishes fits that passed, so this is a snapshot from before any)."""
        if not part:
            return False
        fits = {name: None if part.get(name) is None else Fit.from_json(part[name])
                for name in ("bgnbd", "gamma_gamma")}
        predictor = Predictor.from_fits(fits["bgnbd"], fits["gamma_gamma"])
        if predictor is None:
            return False
        same = (self.predictor is not None and predictor.bgnbd == self.predictor.bgnbd
                and predictor.gamma_gamma == self.predictor.gamma_gamma)
        self.fits, self.version = fits, version
        if same:
            return False
        self.predictor = predictor
        self._cache = {}
        return True

    def of(self, summary: PurchaseSummary | None, now: float) -> dict[str, float | None]:
        """The customer's four figures at event time ``now`` (seconds); None without a
        model or without an order. Pure apart from the cache."""
        predictor = self.predictor
        if predictor is None or summary is None:
            return NO_PREDICTIONS
        first, _, last, x, repeat_value = summary
        t_x = last - first
        T = max(math.floor(now / DAY_S) - first, t_x)
        key = (x, t_x, T)
        hit = self._cache.get(key)
        if hit is None:
            pr = predictor.predict(x, t_x, T)
            hit = (pr.p_alive, pr.expected_orders_30d, pr.expected_orders_90d)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()  # cheaper than an LRU's bookkeeping on every hit
            self._cache[key] = hit
        revenue = None
        gg = predictor.gamma_gamma
        if gg is not None:
            p, q, v = gg
            spend = (p * (v + repeat_value) / (p * x + q - 1.0) if x > 0
                     else predictor.mean_spend)
            revenue = spend * hit[2]
        return {"p_alive": hit[0], "expected_orders_30d": hit[1],
                "expected_orders_90d": hit[2], "expected_revenue_90d": revenue}

    def model_document(self) -> dict[str, Any]:
        """``GET /predictions/model``: each part null while not fitted."""
        bg, gg = self.fits["bgnbd"], self.fits["gamma_gamma"]
        bgnbd = None
        if self.predictor is not None and bg is not None:
            bgnbd = {**self.predictor.bgnbd._asdict(), "time_unit": "days",
                     "customers": bg.customers, "log_likelihood": bg.log_likelihood,
                     "fitted_at": bg.fitted_at}
        gamma = None
        if self.predictor is not None and self.predictor.gamma_gamma is not None and gg:
            gamma = {**self.predictor.gamma_gamma._asdict(), "customers": gg.customers,
                     "log_likelihood": gg.log_likelihood}
        return {"bgnbd": bgnbd, "gamma_gamma": gamma,
                "version": self.version if self.predictor is not None else None}


P_ALIVE_EDGES = tuple(i / 10 for i in range(11))  # ten bins of 0.1
REVENUE_EDGES = (0.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)  # the last bin: 1000+


def distribution(customers: Iterable[tuple[PurchaseSummary | None, str | None]],
                 live: LivePredictions, now: float) -> dict[str, Any]:
    """The dashboard's view of the predictions: over ``(summary, behavioural segment)``
    pairs (customers without an order are skipped), at event time ``now``: histograms of
    ``p_alive`` (bins of 0.1) and of ``expected_revenue_90d`` (:data:`REVENUE_EDGES`, the
    last bin open), and per behavioural segment (None: not in one) the customers, mean
    ``p_alive``, mean and total expected 90-day revenue. Pure.

    >>> from stream_app.core.predictive import BgNbdParams
    >>> live = LivePredictions.fixed(BgNbdParams(0.5, 20.0, 0.8, 3.0))
    >>> doc = distribution([(PurchaseSummary(19000, 9.0, 19000, 0, 0.0), "c1"), (None, "c1")],
    ...                    live, 19010 * 86400.0)
    >>> doc["customers"], doc["p_alive"]["counts"][-1], doc["by_segment"][0]["segment"]
    (1, 1, 'c1')
    """
    alive = [0] * (len(P_ALIVE_EDGES) - 1)
    revenue = [0] * len(REVENUE_EDGES)
    groups: dict[str | None, list[float]] = {}  # segment -> [n, sum p_alive, sum revenue, n rev]
    n = 0
    for summary, segment in customers:
        if summary is None:
            continue
        pr = live.of(summary, now)
        p = pr["p_alive"]
        if p is None:
            continue
        n += 1
        alive[min(int(p * 10), 9)] += 1
        rev = pr["expected_revenue_90d"]
        g = groups.setdefault(segment, [0, 0.0, 0.0, 0])
        g[0] += 1
        g[1] += p
        if rev is not None:
            revenue[bisect.bisect_right(REVENUE_EDGES, rev) - 1] += 1
            g[2] += rev
            g[3] += 1
    by_segment = [{"segment": seg, "customers": int(g[0]), "mean_p_alive": g[1] / g[0],
                   "mean_expected_revenue_90d": g[2] / g[3] if g[3] else None,
                   "expected_revenue_90d": g[2] if g[3] else None}
                  for seg, g in sorted(groups.items(), key=lambda kv: (kv[0] is None,
                                                                       kv[0] or ""))]
    return {"customers": n, "at": now, "version": live.version if live.ready else None,
            "p_alive": {"edges": list(P_ALIVE_EDGES), "counts": alive},
            "expected_revenue_90d": {"edges": list(REVENUE_EDGES), "counts": revenue},
            "by_segment": by_segment}
