"""Populations drawn from known BG/NBD and Gamma-Gamma parameters, for recovery and calibration.

Exact draws from the models (no time step): each customer gets ``lam ~ Gamma(r, alpha)``,
``p ~ Beta(a, b)`` and a lifetime of ``J ~ Geometric(p)`` repeat purchases (they drop out
right after the J-th). Over ``(0, T]`` the purchases are ``N ~ Poisson(lam T)`` and, given
``N``, uniformly placed; so ``x = min(N, J)``, and ``t_x`` is an order statistic of uniforms
(the largest of ``N`` if still alive, the ``J``-th of ``N`` if not), drawn as a Beta.
Times are continuous; :func:`to_days` rounds them down to whole days as the service sees them.

>>> import numpy as np
>>> pop = simulate_bgnbd(BgNbdParams(0.5, 20.0, 0.8, 3.0), np.full(5, 365.0),
...                      np.random.default_rng(1), holdout=90.0)
>>> pop.x.shape, bool(np.all(pop.t_x <= pop.T))
((5,), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bgnbd import BgNbdParams
from .gamma_gamma import GammaGammaParams


class Population(NamedTuple):
    x: np.ndarray  # repeat purchases in (0, T]
    t_x: np.ndarray  # time of the last one (0 if none)
    T: np.ndarray  # observation length
    holdout: np.ndarray | None  # purchases in (T, T + holdout], when asked for
    alive: np.ndarray  # whether alive at T (the truth P(alive) estimates)


def simulate_bgnbd(params: BgNbdParams, T: np.ndarray, rng: np.random.Generator,
                   holdout: float | None = None) -> Population:
    """One customer per entry of ``T`` (days observed since their first purchase)."""
    r, alpha, a, b = params
    T = np.asarray(T, dtype=np.float64)
    n = len(T)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    lifetime = rng.geometric(np.clip(p, 1e-300, 1.0))  # repeat purchases before dropping out
    arrivals = rng.poisson(lam * T)
    alive = arrivals < lifetime
    x = np.minimum(arrivals, lifetime)
    # t_x: the x-th of `arrivals` uniform times on (0, T] = T * Beta(x, arrivals - x + 1)
    t_x = np.zeros(n)
    some = x > 0
    t_x[some] = T[some] * rng.beta(x[some], arrivals[some] - x[some] + 1)
    later = None
    if holdout is not None:
        later = np.where(alive, np.minimum(rng.poisson(lam * holdout), lifetime - x), 0)
    return Population(x.astype(np.float64), t_x, T, later, alive)


def simulate_gamma_gamma(params: GammaGammaParams, x: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Mean value of ``x`` transactions per customer (0.0 where ``x == 0``).

    ``nu ~ Gamma(q, rate v)``; the mean of ``x`` values ``Gamma(p, rate nu)`` is
    ``Gamma(p x, rate nu x)``.
    """
    p, q, v = params
    x = np.asarray(x, dtype=np.float64)
    nu = rng.gamma(q, 1.0 / v, len(x))
    some = x > 0
    m = np.zeros(len(x))
    m[some] = rng.gamma(p * x[some], 1.0 / (nu[some] * x[some]))
    return m


def to_days(pop: Population) -> Population:
    """The population as whole days: ``t_x`` and ``T`` rounded down (``T >= t_x`` kept)."""
    t_x, T = np.floor(pop.t_x), np.floor(pop.T)
    return pop._replace(t_x=t_x, T=np.maximum(T, t_x))


def order_events(customers: int, start: float, days: float, bgnbd: BgNbdParams,
                 gamma_gamma: GammaGammaParams, rng: np.random.Generator,
                 prefix: str = "bg") -> list[dict[str, object]]:
    """Spec ``Order Completed`` events of ``customers`` buyers drawn from the two models, in
    time order: first purchases uniform over the first two thirds of ``[start, start +
    days]`` (seconds, days), then a Poisson process of rate ``lam`` with a drop-out after
    each repeat purchase with probability ``p``; each transaction ``Gamma(p, nu)`` around the
    customer's mean. For benchmarks and end-to-end tests of the stream's fits.

    >>> ev = order_events(3, 1.7e9, 100.0, BgNbdParams(0.5, 20.0, 0.8, 3.0),
    ...                   GammaGammaParams(6.0, 4.0, 15.0), np.random.default_rng(0))
    >>> ev[0]["event"], sorted({e["userId"] for e in ev})
    ('Order Completed', ['bg-0000000', 'bg-0000001', 'bg-0000002'])
    """
    from datetime import UTC, datetime

    out: list[tuple[float, dict[str, object]]] = []
    r, alpha, a, b = bgnbd
    gp, gq, gv = gamma_gamma
    for i in range(customers):
        cid = f"{prefix}-{i:07d}"
        lam, drop = rng.gamma(r, 1.0 / alpha), rng.beta(a, b)
        nu = rng.gamma(gq, 1.0 / gv)
        t = float(rng.uniform(0.0, days * 2 / 3))
        k = 0
        while t <= days:
            ts = start + t * 86400.0
            out.append((ts, {
                "type": "track", "event": "Order Completed", "userId": cid,
                "messageId": f"{cid}-{k}",
                "timestamp": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
                "properties": {"total": round(float(rng.gamma(gp, 1.0 / nu)), 2)}}))
            if k >= 1 and rng.random() < drop:
                break
            k += 1
            t += float(rng.exponential(1.0 / lam)) if lam > 0 else days + 1.0
    out.sort(key=lambda pair: pair[0])
    return [event for _, event in out]
