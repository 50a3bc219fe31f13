"""Per-customer predictions from fitted parameters: closed forms, a few microseconds each.

``expected_revenue_90d`` = Gamma-Gamma's expected value of a transaction x BG/NBD's expected
transactions in 90 days. A customer without repeat purchases has no ``m_x`` of repeat
transactions, so their expected value is the population mean ``p v / (q - 1)`` (Gamma-Gamma's
conditional expectation at ``x = 0``). Without a Gamma-Gamma fit the revenue is None.

>>> from stream_app.core.predictive import BgNbdParams, GammaGammaParams
>>> predictor = Predictor(BgNbdParams(0.5, 20.0, 0.8, 3.0), GammaGammaParams(6.0, 4.0, 15.0))
>>> pr = predictor.predict(x=3, t_x=60, T=90, m_x=40.0)
>>> round(pr.p_alive, 3), round(pr.expected_orders_90d, 3), round(pr.expected_revenue_90d, 2)
(0.672, 1.611, 62.12)
"""

from __future__ import annotations

import math
from typing import NamedTuple

from scipy.special import hyp2f1

from .bgnbd import BgNbdParams, alive_expected_purchases
from .fitting import Fit
from .gamma_gamma import GammaGammaParams, population_mean_spend
from .summary import PurchaseSummary, model_inputs


class Prediction(NamedTuple):
    p_alive: float
    expected_orders_30d: float
    expected_orders_90d: float
    expected_revenue_90d: float | None  # None without a Gamma-Gamma fit


class Predictor:
    """Holds one pair of fitted parameters; :meth:`predict` is pure and never mutates."""

    __slots__ = ("bgnbd", "gamma_gamma", "_log_a", "_mean_spend")

    def __init__(self, bgnbd: BgNbdParams, gamma_gamma: GammaGammaParams | None = None):
        self.bgnbd = bgnbd
        self.gamma_gamma = gamma_gamma
        self._log_a = math.log(bgnbd.a)
        self._mean_spend = None if gamma_gamma is None else population_mean_spend(gamma_gamma)

    @property
    def mean_spend(self) -> float | None:
        """Gamma-Gamma's population mean transaction value (None without its fit)."""
        return self._mean_spend

    @classmethod
    def from_fits(cls, bgnbd: Fit | None, gamma_gamma: Fit | None = None) -> Predictor | None:
        """A predictor when the BG/NBD fit is usable (None otherwise: no predictions)."""
        if bgnbd is None or not bgnbd.ok:
            return None
        gg = gamma_gamma.params if gamma_gamma is not None and gamma_gamma.ok else None
        assert isinstance(bgnbd.params, BgNbdParams)
        assert gg is None or isinstance(gg, GammaGammaParams)
        return cls(bgnbd.params, gg)

    def predict(self, x: float, t_x: float, T: float, m_x: float = 0.0) -> Prediction:
        """Predictions for one customer (days; ``m_x`` the mean repeat transaction value)."""
        r, alpha, a, b = self.bgnbd
        if x > 0:
            log_odds = self._log_a - math.log(b + x - 1.0) + (r + x) * (
                math.log(alpha + T) - math.log(alpha + t_x))
            alive = 1.0 / (1.0 + math.exp(min(log_odds, 700.0)))
        else:
            alive = 1.0
        e30 = alive * _alive_expected(r, alpha, a, b, x, T, 30.0)
        e90 = alive * _alive_expected(r, alpha, a, b, x, T, 90.0)
        revenue = None
        if self.gamma_gamma is not None:
            if x > 0:
                p, q, v = self.gamma_gamma
                spend = p * (v + x * m_x) / (p * x + q - 1.0)
            else:
                spend = self._mean_spend
            revenue = spend * e90
        return Prediction(alive, e30, e90, revenue)

    def predict_summary(self, summary: PurchaseSummary, now_day: int) -> Prediction:
        """:meth:`predict` on a :class:`PurchaseSummary` at UTC day ``now_day``."""
        return self.predict(*model_inputs(summary, now_day))


def _alive_expected(r: float, alpha: float, a: float, b: float, x: float, T: float,
                    t: float) -> float:
    """:func:`.bgnbd.alive_expected_purchases`'s fast path inlined (its guards included)."""
    c = a + b + x - 1.0
    if abs(a - 1.0) >= 1e-5:
        z = t / (alpha + T + t)
        value = c / (a - 1.0) * (1.0 - (1.0 - z) ** (a - 1.0)
                                         * float(hyp2f1(a - 1.0, c - r - x, c, z)))
        if 0.0 <= value <= (r + x) * t / (alpha + T) * (1.0 + 1e-9):
            return float(value)
    return alive_expected_purchases(r, alpha, a, b, x, T, t)
