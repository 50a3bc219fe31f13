"""BG/NBD: how many purchases a customer will make, and whether they are still a customer.

Fader, Hardie & Lee (2005), "Counting your customers the easy way: an alternative to the
Pareto/NBD model", Marketing Science 24(2). While alive a customer buys as a Poisson process
of rate ``lam ~ Gamma(r, rate alpha)``; after each *repeat* purchase they drop out for good
with probability ``p ~ Beta(a, b)``. A customer is summarised by ``x`` (repeat purchases),
``t_x`` (time of the last one, 0 when ``x == 0``) and ``T`` (time since the first purchase),
all counted from the first purchase, in days (see :mod:`.summary`).

Every function takes numpy arrays or plain floats and works in log space (``gammaln``), so
``x`` in the thousands and ``T`` of decades neither overflow nor lose the likelihood to
``exp`` underflow.

>>> params = BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5)
>>> round(float(p_alive(params, 0, 0.0, 100.0)), 3)   # never came back: alive by definition
1.0
>>> round(float(p_alive(params, 4, 20.0, 200.0)), 3)  # 4 purchases, none for 180 days
0.01
>>> round(float(conditional_expected_purchases(params, 4, 190.0, 200.0, 90.0)), 3)  # 90 days
1.279
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import integrate
from scipy.special import betaln, digamma, gammaln, hyp2f1

ArrayLike = np.ndarray | float | int


class BgNbdParams(NamedTuple):
    r: float  # shape of the purchase-rate distribution
    alpha: float  # its rate, in days (r / alpha = mean purchases a day)
    a: float  # Beta(a, b) of the dropout probability after each repeat purchase
    b: float


def log_likelihood(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """Each customer's log-likelihood, FHL 2005 eq. (6) written as logs.

    ``L = B(a, b+x)/B(a, b) * G(r+x)/G(r) * alpha^r * [(alpha+T)^-(r+x)
    + [x>0] a/(b+x-1) (alpha+t_x)^-(r+x)]``: the two bracketed terms (alive at ``T``; dropped
    out right after the purchase at ``t_x``) are added with ``logaddexp``.
    """
    r, alpha, a, b = params
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, math.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def gradient(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
             weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted total log-likelihood and its gradient in ``log(r, alpha, a, b)``.

    Analytic (digamma), so a fit needs one pass over the data per step instead of five.
    """
    r, alpha, a, b = params
    repeat = x > 0
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    log_at, log_atx = np.log(alpha + T), np.log(alpha + t_x)
    a3 = -(r + x) * log_at
    bx1 = np.where(repeat, b + x - 1, 1.0)  # b + x - 1 > 0 where used (x >= 1, b > 0)
    a4 = np.where(repeat, math.log(a) - np.log(bx1) - (r + x) * log_atx, -np.inf)
    top = np.logaddexp(a3, a4)
    w4 = np.exp(a4 - top)  # share of the "dropped out at t_x" term
    w3 = 1.0 - w4
    ll = a1 + a2 + top
    d_r = digamma(r + x) - digamma(r) + math.log(alpha) - w3 * log_at - w4 * log_atx
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    psi_ab, psi_abx = digamma(a + b), digamma(a + b + x)
    d_a = psi_ab - psi_abx + w4 / a
    d_b = psi_ab + digamma(b + x) - digamma(b) - psi_abx - w4 / bx1
    grad = np.array([r * weights @ d_r, alpha * weights @ d_alpha, a * weights @ d_a,
                     b * weights @ d_b])
    return float(weights @ ll), grad


def p_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """P(still alive at ``T``), FHL 2005 eq. (A10 in the note): 1 for ``x == 0`` by the model.

    ``1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``, the power taken in logs so
    a long silence after many purchases gives 0, not ``inf/inf``.
    """
    r, alpha, a, b = params
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_odds = np.where(x > 0, math.log(a) - np.log(b + x - 1)
                            + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)), -np.inf)
    return 1.0 / (1.0 + np.exp(np.minimum(log_odds, 700.0)))


def alive_expected_purchases(r: float, alpha: float, a: float, b: float, x: float, T: float,
                             t: float) -> float:
    """Expected purchases in ``(T, T+t]`` of a customer known to be alive at ``T``.

    Given alive at ``T``, ``lam ~ Gamma(r+x, alpha+T)`` and ``p ~ Beta(a, b+x)``, and
    ``E = E_p[(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p]``, which is FHL eq. (10) without its
    P(alive) factor::

        (a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)]

    with ``z = t/(alpha+T+t)``. We evaluate the Euler-transformed form
    ``(1-z)^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(a-1, c-r-x; c; z)`` (``c=a+b+x-1``):
    its first two parameters do not grow with ``x``, so it neither overflows for large ``x``
    (where the direct form's 2F1 reaches ``inf``; `lifetimes` switches to this form only
    then) nor needs many terms. Checked against quadrature down to ``c = 1e-9`` and for
    negative ``c`` (``x == 0``, ``a + b < 1``): scipy's hyp2f1 agrees to 1e-13 there. Where
    the closed form does fail it is replaced by the integral over ``p`` itself (adaptive
    quadrature with the Beta weight, 30-100 us):

    * ``|a - 1| < 1e-5``: the ``1/(a-1)`` factor meets a vanishing bracket (``0/0`` at 1);
    * a result that is not finite or falls outside ``[0, (r+x) t/(alpha+T)]`` (the integrand
      lies in that range for every ``p``): the pole of 2F1 at ``c = 0`` (``x = 0``,
      ``a + b = 1``) gives NaN, and any other hyp2f1 failure shows this way.
    """
    n, k = r + x, t / (alpha + T)
    c = a + b + x - 1.0
    upper = n * k
    if abs(a - 1.0) >= 1e-5:
        z = t / (alpha + T + t)
        value = c / (a - 1.0) * (1.0 - (1.0 - z) ** (a - 1.0)
                                 * float(hyp2f1(a - 1.0, c - n, c, z)))
        if 0.0 <= value <= upper * (1.0 + 1e-9):
            return float(value)
    return _alive_expected_quad(n, k, a, b + x)


def _alive_expected_quad(n: float, k: float, a: float, bx: float) -> float:
    """``E_p[(1 - (1 + k p)^-n) / p]`` for ``p ~ Beta(a, bx)``, by adaptive quadrature.

    The integrand is smooth and bounded by ``n k``. A singular end of the Beta density
    (``a < 1`` at 0, ``bx < 1`` at 1) goes to QUADPACK's algebraic-weight rule (QAWS); the
    rest of the density is computed in logs inside the integrand, and a bounded end is cut
    40 standard deviations past the mean (the mass left out is far below 1e-30).
    """
    ea, eb = a - 1.0, bx - 1.0
    wa, wb = min(ea, 0.0), min(eb, 0.0)  # the singular parts, for QAWS
    ea, eb = ea - wa, eb - wb
    log_norm = float(betaln(a, bx))
    mean = a / (a + bx)
    sd = math.sqrt(mean * (1.0 - mean) / (a + bx + 1.0))
    lo = 0.0 if wa < 0.0 else max(0.0, mean - 40.0 * sd)
    hi = 1.0 if wb < 0.0 else min(1.0, mean + 40.0 * sd)

    g0 = n * k  # the integrand at p = 0; subtracted below, so a singular p^(a-1) meets O(p)

    def g(p: float) -> float:
        if p <= 0.0:
            return 0.0
        if p >= 1.0:
            return 0.0 if eb > 0.0 else (-math.expm1(-n * math.log1p(k)) - g0) \
                * math.exp(-log_norm)
        log_w = ea * math.log(p) + eb * math.log1p(-p) - log_norm
        return (-math.expm1(-n * math.log1p(k * p)) / p - g0) * math.exp(log_w)

    if wa < 0.0 or wb < 0.0:
        total, _ = integrate.quad(g, lo, hi, weight="alg", wvar=(wa, wb), limit=200,
                                  epsabs=0.0, epsrel=1e-10)
    else:
        mode = min(max(ea / (ea + eb), lo), hi) if ea + eb > 0.0 else lo
        total, _ = integrate.quad(g, lo, hi, points=[mode] if lo < mode < hi else None,
                                  limit=200, epsabs=0.0, epsrel=1e-10)
    return g0 + float(total)


def conditional_expected_purchases(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike,
                                   T: ArrayLike, t: float) -> np.ndarray:
    """E[purchases in ``(T, T+t]`` | x, t_x, T], FHL 2005 eq. (10): P(alive) x the above."""
    r, alpha, a, b = params
    xs, txs, Ts = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, t_x, T)))
    alive = p_alive(params, xs, txs, Ts)
    out = np.empty(xs.shape)
    for i in np.ndindex(xs.shape):
        out[i] = alive[i] * alive_expected_purchases(r, alpha, a, b, float(xs[i]),
                                                     float(Ts[i]), t)
    return out


def expected_purchases(params: BgNbdParams, t: float) -> float:
    """Unconditional E[repeat purchases in ``(0, t]``] of a new customer, FHL eq. (9).

    The ``x = 0, T = 0`` case of :func:`alive_expected_purchases` (alive at 0 by the model).
    """
    r, alpha, a, b = params
    return alive_expected_purchases(r, alpha, a, b, 0.0, 0.0, t)
