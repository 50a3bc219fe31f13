"""BG/NBD and Gamma-Gamma: likelihoods and predictions against independent numerical
integration of the individual-level models, Monte Carlo calibration, parameter recovery,
the fitting rules on odd data, and the purchase summary."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import betaln, expit, gammaln

from stream_app.core import predictive
from stream_app.core.predictive import (
    BgNbdParams,
    Fit,
    GammaGammaParams,
    Predictor,
    PurchaseSummary,
    bgnbd,
    fitting,
    gamma_gamma,
    model_inputs,
    record_purchase,
    simulate_bgnbd,
    simulate_gamma_gamma,
)

BG = BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5)
GG = GammaGammaParams(p=6.0, q=4.0, v=15.0)
# (x, t_x, T) including many purchases, decades of tenure, a long silence
CUSTOMERS = [(0, 0.0, 0.0), (0, 0.0, 100.0), (1, 5.0, 40.0), (4, 20.0, 200.0),
             (30, 350.0, 365.0), (500, 3000.0, 3650.0), (2000, 9000.0, 36500.0)]
PARAM_SETS = [BG, BgNbdParams(2.0, 10.0, 3.0, 10.0), BgNbdParams(0.5, 5.0, 0.3, 0.4)]


# --- independent reference: integrate the individual-level model over the mixing laws ----

def _log_quad(log_f, centre: float, lo: float, hi: float) -> float:
    """log of the integral of exp(log_f) over [lo, hi], scaled by its value at the peak."""
    ys = np.linspace(lo, hi, 40001)
    vals = log_f(ys)
    peak = float(ys[np.argmax(vals)])
    top = float(np.max(vals))
    keep = ys[vals > top - 60.0]
    val, _ = integrate.quad(lambda y: math.exp(float(log_f(np.array(y))) - top),
                            float(keep[0]), float(keep[-1]), points=[peak], limit=500,
                            epsabs=0.0, epsrel=1e-11)
    return top + math.log(val)


def _log_gamma_density(u, r: float, alpha: float):
    """log of the Gamma(r, rate alpha) density at lam = e^u."""
    return r * math.log(alpha) + (r - 1.0) * u - alpha * np.exp(u) - gammaln(r)


def _lam_integral(params: BgNbdParams, x: int, tau: float) -> float:
    """log E_lam[lam^x e^(-lam tau)], lam ~ Gamma(r, alpha), integrated in u = log lam."""
    r, alpha, _, _ = params

    def log_f(u):  # lam^x e^(-lam tau) g(lam) dlam/du, the Gamma density written out
        return x * u - np.exp(u) * tau + _log_gamma_density(u, r, alpha) + u
    centre = math.log((r + x) / (alpha + tau))
    return _log_quad(log_f, centre, centre - 80.0 / min(r + x, 1.0), centre + 12.0)


def _p_integral(params: BgNbdParams, i: int, j: int) -> float:
    """log E_p[p^i (1-p)^j], p ~ Beta(a, b), integrated in v = logit p."""
    _, _, a, b = params

    def log_f(v):  # p^i (1-p)^j f(p) dp/dv, with dp/dv = p (1-p)
        log_p, log_q = -np.logaddexp(0.0, -v), -np.logaddexp(0.0, v)
        return (i + a) * log_p + (j + b) * log_q - betaln(a, b)
    return _log_quad(log_f, 0.0, -80.0 / min(a + i, 1.0) - 10, 80.0 / min(b + j, 1.0) + 10)


def reference_terms(params: BgNbdParams, x: int, t_x: float, T: float) -> tuple[float, float]:
    """log of the "alive at T" and "dropped out at t_x" parts of the marginal likelihood.

    Individual level (FHL 2005 eq. 3): (1-p)^x lam^x e^(-lam T) + [x>0] p (1-p)^(x-1)
    lam^x e^(-lam t_x); each part is a product of a lam and a p integral.
    """
    alive = _lam_integral(params, x, T) + _p_integral(params, 0, x)
    dead = (_lam_integral(params, x, t_x) + _p_integral(params, 1, x - 1)) if x else -math.inf
    return alive, dead


def reference_conditional(params: BgNbdParams, x: int, t_x: float, T: float, t: float) -> float:
    """E[purchases in (T, T+t] | data] as a 2-D integral over (lam, p) of the alive part times
    the individual expectation (1 - e^(-lam p t)) / p, divided by the marginal likelihood."""
    r, alpha, a, b = params
    alive, dead = reference_terms(params, x, t_x, T)
    log_l = np.logaddexp(alive, dead)
    u0, v0 = math.log((r + x) / (alpha + T)), math.log(a / (b + x))
    su, sv = 1.0 / math.sqrt(r + x), math.sqrt(1.0 / a + 1.0 / (b + x))

    def log_f(v, u):
        lam, p = math.exp(u), expit(v)
        log_p, log_q = -np.logaddexp(0.0, -v), -np.logaddexp(0.0, v)
        return float(x * log_q + x * u - lam * T + _log_gamma_density(u, r, alpha) + u
                     + a * log_p + b * log_q - betaln(a, b)
                     + math.log(-math.expm1(-lam * p * t)) - log_p)
    top = log_f(v0, u0)
    val, _ = integrate.dblquad(lambda v, u: math.exp(log_f(v, u) - top),
                               u0 - 30.0 * su - 60.0 / (r + x), u0 + 12.0 * su + 3.0,
                               v0 - 30.0 * sv - 60.0 / a, v0 + 30.0 * sv + 60.0 / (b + x),
                               epsabs=0.0, epsrel=1e-9)
    return math.exp(top + math.log(val) - log_l)


@pytest.mark.parametrize(("params", "customer"), itertools.product(PARAM_SETS, CUSTOMERS))
def test_log_likelihood_matches_numerical_integration(params, customer):
    x, t_x, T = customer
    want = float(np.logaddexp(*reference_terms(params, x, t_x, T)))
    got = float(bgnbd.log_likelihood(params, x, t_x, T))
    assert got == pytest.approx(want, rel=1e-8, abs=1e-8)


@pytest.mark.parametrize(("params", "customer"), itertools.product(PARAM_SETS, CUSTOMERS))
def test_p_alive_matches_numerical_integration(params, customer):
    alive, dead = reference_terms(params, *customer)
    want = math.exp(alive - np.logaddexp(alive, dead))
    assert float(bgnbd.p_alive(params, *customer)) == pytest.approx(want, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize(("params", "customer", "t"), [
    (BG, (0, 0.0, 0.0), 30.0), (BG, (4, 20.0, 200.0), 90.0), (BG, (4, 190.0, 200.0), 90.0),
    (BG, (500, 3000.0, 3650.0), 90.0), (PARAM_SETS[1], (30, 350.0, 365.0), 90.0),
    (PARAM_SETS[2], (0, 0.0, 100.0), 90.0), (PARAM_SETS[2], (2, 50.0, 60.0), 1000.0),
])
def test_conditional_expectation_matches_numerical_integration(params, customer, t):
    want = reference_conditional(params, *customer, t)
    got = float(bgnbd.conditional_expected_purchases(params, *customer, t))
    assert got == pytest.approx(want, rel=1e-6)


# --- hyp2f1's failure regimes take the quadrature path and agree with the closed form -----

@pytest.mark.parametrize(("a", "b", "x", "T", "t"), [
    (1.0, 2.0, 3, 100.0, 90.0),  # 0/0 at a == 1
    (1.0 + 3e-6, 2.0, 0, 0.0, 30.0),  # within the cancellation guard
    (0.4, 0.6, 0, 50.0, 90.0),  # c = a + b - 1 = 0: the pole of 2F1
    (0.3, 0.4, 0, 0.0, 90.0),  # c < 0
    (0.8, 2.5, 10_000, 20_000.0, 90.0),  # the direct form's 2F1 overflows
    (0.8, 2.5, 5, 10.0, 1e6),  # z -> 1
])
def test_alive_expectation_in_hyp2f1_failure_regimes(a, b, x, T, t):
    r, alpha = 0.5, 20.0
    got = bgnbd.alive_expected_purchases(r, alpha, a, b, x, T, t)
    quad = bgnbd._alive_expected_quad(r + x, t / (alpha + T), a, b + x)
    assert math.isfinite(got)
    assert got == pytest.approx(quad, rel=1e-6)
    # continuous through the guarded point: a nudged off it gives (almost) the same value
    nudged = bgnbd.alive_expected_purchases(r, alpha, a * (1 + 1e-4), b, x, T, t)
    assert got == pytest.approx(nudged, rel=1e-3)


def test_unconditional_expectation_is_the_new_customer_case():
    # FHL eq. (9) directly, with the direct (untransformed) 2F1
    r, alpha, a, b = BG
    t = 90.0
    from scipy.special import hyp2f1
    want = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r
                                    * hyp2f1(r, b, a + b - 1, t / (alpha + t)))
    assert predictive.expected_purchases(BG, t) == pytest.approx(want, rel=1e-10)


# --- Monte Carlo: with the true parameters, predictions match simulated outcomes ----------

def test_p_alive_and_conditional_expectation_match_simulation():
    rng = np.random.default_rng(7)
    params = BgNbdParams(0.6, 15.0, 0.9, 3.0)
    pop = simulate_bgnbd(params, rng.uniform(30.0, 365.0, 100_000), rng, holdout=60.0)
    alive = bgnbd.p_alive(params, pop.x, pop.t_x, pop.T)
    groups = np.minimum(pop.x, 4)
    for g in range(5):
        sel = groups == g
        pred = bgnbd.conditional_expected_purchases(params, pop.x[sel][:2000],
                                                    pop.t_x[sel][:2000], pop.T[sel][:2000],
                                                    60.0)
        actual = pop.holdout[sel][:2000]
        se = actual.std() / math.sqrt(len(actual))
        assert abs(pred.mean() - actual.mean()) < 4 * se + 1e-3, g
        se_alive = math.sqrt(0.25 / sel.sum())
        assert abs(alive[sel].mean() - pop.alive[sel].mean()) < 4 * se_alive, g


def test_gamma_gamma_matches_numerical_integration_and_simulation():
    p, q, v = GG
    for x, m in [(1, 5.0), (3, 20.0), (50, 80.0), (2000, 11.0)]:
        def log_f(s, x=x, m=m):  # s = log nu
            nu = np.exp(s)
            return (stats.gamma.logpdf(m, p * x, scale=1 / (nu * x))
                    + stats.gamma.logpdf(nu, q, scale=1 / v) + s)
        centre = math.log((p * x + q) / (v + x * m))
        log_l = _log_quad(log_f, centre, centre - 40.0, centre + 10.0)
        assert float(gamma_gamma.log_likelihood(GG, x, m)) == pytest.approx(log_l, rel=1e-9)
        # E[p / nu | m, x]: the same integral weighted by the customer's mean value p / nu
        log_e = _log_quad(lambda s, f=log_f: f(s) + math.log(p) - s, centre, centre - 40.0,
                          centre + 10.0)
        spend = float(gamma_gamma.conditional_expected_spend(GG, x, m))
        assert spend == pytest.approx(math.exp(log_e - log_l), rel=1e-8)
    # simulated means of x transactions: E[m_x] is the population mean for every x
    rng = np.random.default_rng(3)
    m = simulate_gamma_gamma(GG, np.full(200_000, 3.0), rng)
    assert m.mean() == pytest.approx(gamma_gamma.population_mean_spend(GG), rel=0.01)


# --- fitting ---------------------------------------------------------------------------

def test_parameters_are_recovered_from_a_simulated_population():
    rng = np.random.default_rng(11)
    truth = BgNbdParams(0.8, 25.0, 1.2, 4.0)
    pop = simulate_bgnbd(truth, rng.uniform(180.0, 730.0, 20_000), rng)
    fit = predictive.fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=123.0)
    assert fit.ok and fit.converged and fit.customers == 20_000
    for got, want in zip(fit.params, truth, strict=True):
        assert got == pytest.approx(want, rel=0.15)
    assert fit.log_likelihood == pytest.approx(
        float(bgnbd.log_likelihood(fit.params, pop.x, pop.t_x, pop.T).sum()))
    m = simulate_gamma_gamma(GG, pop.x, rng)
    gg = predictive.fit_gamma_gamma(pop.x, m, fitted_at=123.0)
    assert gg.ok and gg.customers == int((pop.x > 0).sum())
    for got, want in zip(gg.params, GG, strict=True):
        assert got == pytest.approx(want, rel=0.15)


def test_aggregated_rows_give_the_same_fit():
    rng = np.random.default_rng(5)
    pop = predictive.to_days(simulate_bgnbd(BG, rng.integers(30, 365, 5000).astype(float), rng))
    plain = predictive.fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0, aggregate_rows=False)
    agg = predictive.fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
    (ux, ut, uT), w = predictive.aggregate(pop.x, pop.t_x, pop.T)
    assert len(ux) < 5000 and w.sum() == 5000
    assert agg.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-9)
    assert np.allclose(agg.params, plain.params, rtol=1e-4)


def _assert_safe(fit: Fit) -> None:
    """Whatever the data, a fit is ok with finite plausible parameters, or has none."""
    if fit.ok:
        assert all(math.isfinite(v) and v > 0 for v in fit.params)
        assert math.isfinite(fit.log_likelihood)
    else:
        assert fit.params is None and fit.reason
    assert Fit.from_json(fit.to_json()) == fit


@pytest.mark.parametrize(("x", "t_x", "T", "status"), [
    ([0] * 300, [0.0] * 300, [50.0] * 300, "too_few"),  # no repeat purchases
    ([2], [10.0], [20.0], "too_few"),  # one customer
    ([0] * 100 + [1] * 100, [0.0] * 100 + [5.0] * 100, [30.0] * 200, None),
])
def test_small_or_odd_data_never_gives_nan_parameters(x, t_x, T, status):
    fit = predictive.fit_bgnbd(np.array(x), np.array(t_x), np.array(T), fitted_at=0.0)
    _assert_safe(fit)
    if status:
        assert fit.status == status
    # the same data with the minimums lifted: a fit or a failure, never NaN or an exception
    _assert_safe(predictive.fit_bgnbd(np.array(x), np.array(t_x), np.array(T), fitted_at=0.0,
                                      min_customers=1, min_repeaters=0))


def test_identical_customers_and_huge_tenures_are_safe():
    same = predictive.fit_bgnbd(np.full(1000, 3), np.full(1000, 40.0), np.full(1000, 100.0),
                                fitted_at=0.0)
    _assert_safe(same)
    rng = np.random.default_rng(2)
    pop = simulate_bgnbd(BG, rng.uniform(1e5, 1e6, 2000), rng)
    huge = predictive.fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
    _assert_safe(huge)
    assert huge.ok
    pred = Predictor(huge.params).predict(float(pop.x[0]), float(pop.t_x[0]), float(pop.T[0]))
    assert all(math.isfinite(v) for v in pred[:3])
    no_repeaters = predictive.fit_gamma_gamma(np.zeros(500), np.zeros(500), fitted_at=0.0)
    assert no_repeaters.status == "too_few"
    _assert_safe(predictive.fit_gamma_gamma(np.full(300, 2.0), np.full(300, 9.0),
                                            fitted_at=0.0))


def test_gamma_gamma_with_infinite_mean_spend_is_a_failure():
    rng = np.random.default_rng(4)
    x = rng.integers(1, 10, 20_000).astype(float)
    fit = predictive.fit_gamma_gamma(x, simulate_gamma_gamma(GammaGammaParams(5.0, 0.6, 10.0),
                                                             x, rng), fitted_at=0.0)
    assert fit.status == "failed" and "q =" in fit.reason
    _assert_safe(fit)


@pytest.mark.parametrize("bad", [
    {"x": [1, float("nan")]}, {"t_x": [0.0, float("inf")]}, {"T": [3.0, 1.0]},
    {"x": [0.5, 1]}, {"t_x": [2.0, 1.0]}, {"weights": [1.0, -1.0]}, {"x": [1, 2, 3]},
])
def test_malformed_inputs_are_rejected(bad):
    args = {"x": [0, 1], "t_x": [0.0, 2.0], "T": [3.0, 4.0], "weights": None} | bad
    with pytest.raises(ValueError):
        predictive.fit_bgnbd(args.pop("x"), args.pop("t_x"), args.pop("T"), fitted_at=0.0,
                             **args)
    with pytest.raises(ValueError, match="NaN"):
        predictive.fit_gamma_gamma([1.0, 2.0], [3.0, float("nan")], fitted_at=0.0)


def test_fit_json_round_trip_and_refusals():
    rng = np.random.default_rng(8)
    pop = simulate_bgnbd(BG, rng.uniform(100.0, 400.0, 3000), rng)
    fit = predictive.fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=1.7e9)
    data = fit.to_json()
    assert data["time_unit"] == "days" and set(data["params"]) == {"r", "alpha", "a", "b"}
    import json
    assert Fit.from_json(json.loads(json.dumps(data))) == fit
    for change in ({"format": 2}, {"time_unit": "weeks"}, {"model": "pareto"},
                   {"params": {"r": -1.0, "alpha": 1.0, "a": 1.0, "b": 1.0}}):
        with pytest.raises(ValueError):
            Fit.from_json(data | change)


def test_sampling_helpers():
    idx = predictive.sample_indices(1000, 100, seed=1)
    assert len(set(idx.tolist())) == 100 and idx.max() < 1000
    assert np.array_equal(predictive.sample_indices(50, 100), np.arange(50))
    ids = [f"customer-{i}" for i in range(20_000)]
    share = sum(predictive.in_sample(c, 0.1) for c in ids) / len(ids)
    assert share == pytest.approx(0.1, abs=0.01)
    assert predictive.in_sample("c1", 0.3) == predictive.in_sample("c1", 0.3)
    assert all(predictive.in_sample(c, 0.2) for c in ids[:2000] if predictive.in_sample(c, 0.1))


# --- predictions -----------------------------------------------------------------------

def test_predictor_agrees_with_the_array_functions():
    predictor = Predictor(BG, GG)
    for x, t_x, T in CUSTOMERS:
        pr = predictor.predict(x, t_x, T, m_x=30.0)
        assert pr.p_alive == pytest.approx(float(bgnbd.p_alive(BG, x, t_x, T)), rel=1e-12)
        for got, t in ((pr.expected_orders_30d, 30.0), (pr.expected_orders_90d, 90.0)):
            want = float(bgnbd.conditional_expected_purchases(BG, x, t_x, T, t))
            assert got == pytest.approx(want, rel=1e-12)
        spend = (float(gamma_gamma.conditional_expected_spend(GG, x, 30.0)) if x
                 else gamma_gamma.population_mean_spend(GG))
        assert pr.expected_revenue_90d == pytest.approx(spend * pr.expected_orders_90d)
    assert Predictor(BG).predict(2, 5.0, 9.0).expected_revenue_90d is None


def test_predictor_from_fits_needs_a_usable_bgnbd_fit():
    failed = Fit("bgnbd", "failed", None, 500, None, 0.0, False, "no")
    assert Predictor.from_fits(failed) is None
    ok = Fit("bgnbd", "ok", BG, 500, -1.0, 0.0, True)
    gg_failed = Fit("gamma_gamma", "failed", None, 500, None, 0.0, True, "q <= 1")
    predictor = Predictor.from_fits(ok, gg_failed)
    assert predictor is not None and predictor.gamma_gamma is None


# (x, t_x / T, T): at most one repeat purchase a day, so 1 <= x <= max(t_x, 1)
customer = st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 20_000.0)).map(
    lambda c: (max(1, min(3000, math.floor(c[0] * c[1] * c[2]))), c[1], c[2]))
params = st.builds(BgNbdParams, st.floats(0.01, 50.0), st.floats(0.1, 500.0),
                   st.floats(0.01, 50.0), st.floats(0.01, 50.0))


@settings(max_examples=300, deadline=None)
@given(params, customer, st.floats(0.0, 5000.0))
def test_p_alive_is_a_probability_and_monotone(params, cust, later):
    x, frac, T = cust
    t_x = frac * T
    alive = float(bgnbd.p_alive(params, x, t_x, T))
    assert 0.0 <= alive <= 1.0
    # more recent last purchase: more likely alive; longer silence: less likely
    assert float(bgnbd.p_alive(params, x, min(T, t_x + later), T)) >= alive - 1e-12
    assert float(bgnbd.p_alive(params, x, t_x, T + later)) <= alive + 1e-12


@settings(max_examples=200, deadline=None)
@given(params, customer)
def test_expected_orders_are_finite_bounded_and_grow_with_the_horizon(params, cust):
    x, frac, T = cust
    pr = Predictor(params, GG).predict(x, frac * T, T, m_x=25.0)
    assert all(math.isfinite(v) for v in pr)
    # (relative slack: near saturation both approach the same limit to hyp2f1's precision)
    assert 0.0 <= pr.expected_orders_30d <= pr.expected_orders_90d * (1 + 1e-8)
    r, alpha = params.r, params.alpha
    assert pr.expected_orders_90d <= (r + x) * 90.0 / (alpha + T) * (1 + 1e-8)
    assert pr.expected_revenue_90d >= 0.0


# --- the purchase summary ----------------------------------------------------------------

def _truth(orders: list[tuple[int, float]]) -> PurchaseSummary:
    days: dict[int, float] = {}
    for day, value in orders:
        days[day] = days.get(day, 0.0) + value
    first, last = min(days), max(days)
    return PurchaseSummary(first, days[first], last, len(days) - 1,
                           sum(v for d, v in days.items() if d != first))


def _fold(orders):
    summary = None
    for day, value in orders:
        summary = record_purchase(summary, day, value)
    return summary


orders = st.lists(st.tuples(st.integers(19_000, 19_400), st.floats(0.0, 500.0)), min_size=1,
                  max_size=30)


@settings(max_examples=200, deadline=None)
@given(orders)
def test_summary_of_orders_in_time_order_is_exact(orders):
    got, want = _fold(sorted(orders, key=lambda o: o[0])), _truth(orders)
    assert got[:2] == pytest.approx(want[:2]) and got[2:] == pytest.approx(want[2:])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(19_000, 19_400), min_size=1, max_size=20, unique=True),
       st.randoms(use_true_random=False))
def test_summary_of_orders_on_distinct_days_is_order_insensitive(days, rnd):
    orders = [(d, float(d % 97)) for d in days]
    rnd.shuffle(orders)
    got, want = _fold(orders), _truth(orders)
    assert got[:4] == want[:4] and got.repeat_value == pytest.approx(want.repeat_value)


def test_model_inputs_and_utc_day():
    s = PurchaseSummary(100, 10.0, 130, 3, 90.0)
    assert model_inputs(s, 160) == (3, 30, 60, 30.0)
    assert model_inputs(s, 120) == (3, 30, 30, 30.0)  # watermark behind the last order
    assert model_inputs(PurchaseSummary(100, 10.0, 100, 0, 0.0), 100) == (0, 0, 0, 0.0)
    assert predictive.utc_day(86400.0 * 3 - 0.5) == 2 and predictive.utc_day(86400.0 * 3) == 3


@pytest.mark.parametrize("module", ["bgnbd", "gamma_gamma", "summary", "predict", "simulate"])
def test_docstring_examples(module):
    mod = getattr(predictive, module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_fitting_module_constants_are_consistent():
    assert fitting.MIN_REPEATERS <= fitting.MIN_CUSTOMERS <= fitting.SAMPLE_SIZE
