"""Gamma-Gamma: what a customer's purchases are worth.

Fader, Hardie & Lee (2005), "RFM and CLV: using iso-value curves for customer base
analysis", Journal of Marketing Research 42(4), and Fader & Hardie's note "The Gamma-Gamma
model of monetary value" (2013). A customer's transaction values are ``Gamma(p, rate nu)``
around their own mean ``p / nu``, with ``nu ~ Gamma(q, rate v)`` across customers; values are
independent of the purchase process (check: the correlation of ``x`` and ``m_x`` across
customers should be near 0). Fitted on repeat customers only: ``x >= 1`` repeat
transactions and ``m_x`` their mean value (what counts as one is in :mod:`.summary`).

>>> params = GammaGammaParams(p=6.25, q=3.74, v=15.44)  # the paper's CDNOW estimates
>>> round(population_mean_spend(params), 2)
35.22
>>> round(float(conditional_expected_spend(params, 2, 20.0)), 2)  # pulled toward the mean
22.74
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import digamma, gammaln

ArrayLike = np.ndarray | float | int


class GammaGammaParams(NamedTuple):
    p: float  # shape of one transaction's value around the customer's mean
    q: float  # shape of the customers' nu (q > 1 for a finite population mean)
    v: float  # rate of nu, in currency units


def log_likelihood(params: GammaGammaParams, x: ArrayLike, m_x: ArrayLike) -> np.ndarray:
    """Each customer's log density of ``m_x`` given ``x`` (the 2013 note's eq. 4).

    The mean of ``x`` values is ``Gamma(p x, rate nu x)``; mixing over ``nu`` gives
    ``G(px+q)/(G(px) G(q)) v^q m^(px-1) x^(px) / (v + x m)^(px+q)``.
    """
    p, q, v = params
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m_x, dtype=np.float64)
    px = p * x
    return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
            + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(v + x * m))


def gradient(params: GammaGammaParams, x: np.ndarray, m_x: np.ndarray,
             weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted total log-likelihood and its gradient in ``log(p, q, v)``."""
    p, q, v = params
    px = p * x
    log_vxm = np.log(v + x * m_x)
    psi = digamma(px + q)
    ll = log_likelihood(params, x, m_x)
    d_p = x * (psi - digamma(px) + np.log(m_x) + np.log(x) - log_vxm)
    d_q = psi - digamma(q) + math.log(v) - log_vxm
    d_v = q / v - (px + q) / (v + x * m_x)
    grad = np.array([p * weights @ d_p, q * weights @ d_q, v * weights @ d_v])
    return float(weights @ ll), grad


def conditional_expected_spend(params: GammaGammaParams, x: ArrayLike,
                               m_x: ArrayLike) -> np.ndarray:
    """E[value of a future transaction | x, m_x] = ``p (v + x m_x) / (p x + q - 1)``.

    A weighted mean of the population mean ``p v / (q-1)`` and the customer's own ``m_x``,
    with weight ``p x / (p x + q - 1)`` on the customer: more transactions, more trust. With
    ``x == 0`` it is the population mean.
    """
    p, q, v = params
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m_x, dtype=np.float64)
    return p * (v + x * m) / (p * x + q - 1.0)


def population_mean_spend(params: GammaGammaParams) -> float:
    """E[value of a transaction] across customers, ``p v / (q - 1)`` (needs ``q > 1``)."""
    p, q, v = params
    return p * v / (q - 1.0)
