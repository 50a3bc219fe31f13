"""BG/NBD and Gamma-Gamma: parameter recovery, calibration, minimum sizes, sampling, cost.

    .venv/bin/python bench/predictive.py [--customers 10000] [--calibration 50000]
        [--sizes 100000,1000000] [--sample-base 1000000] [--seed 1] [--skip-unaggregated]

Everything printed is measured in the run. Populations are drawn from known parameters
(``stream_app.core.predictive.simulate``: exact draws, continuous time); where the service's
input is imitated they are rounded down to whole days (``to_days``), which is what makes
identical rows common.

1. recovery: for each parameter set, ``--customers`` customers whose first purchase is
   uniform over the last two years; every fitted parameter, the truth, the relative error,
   the fit's own standard error (inverse Hessian, in % of the estimate), the error in standard
   errors, and PASS/FAIL at 10 %. Where the standard error is near 10 % (BG/NBD's ``b`` and
   Gamma-Gamma's ``v`` at 10,000 customers), 10 % is a matter of the seed: the err/se column
   says whether a miss is sampling noise (|err/se| < 3) or a bias.
   Gamma-Gamma is fitted on ``--customers`` *repeat* customers of the same BG/NBD population
   (its model is about repeat customers only).
2. calibration: fit on a calibration period (first purchases uniform over its first 300 of
   365 days, whole days), predict each customer's purchases in the next 90 days, compare
   with their simulated purchases, grouped by calibration-period repeat purchases.
3. minimum size: 30 populations per size; share of fits that are usable and the error of
   the customers' expected 90-day orders against those from the true parameters.
4. sampling: a fit on a uniform sample against the fit on the whole population.
5. fit cost, and 6. per-customer prediction cost.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_app.core.predictive import (  # noqa: E402
    BgNbdParams,
    GammaGammaParams,
    Predictor,
    aggregate,
    bgnbd,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma,
    record_purchase,
    sample_indices,
    simulate_bgnbd,
    simulate_gamma_gamma,
    to_days,
)
from stream_app.core.predictive.fitting import (  # noqa: E402
    MIN_CUSTOMERS,
    MIN_GG_CUSTOMERS,
    MIN_REPEATERS,
    SAMPLE_SIZE,
)

SETS = [  # (name, BG/NBD, Gamma-Gamma); alpha in days, v in currency units
    ("occasional", BgNbdParams(0.25, 30.0, 0.8, 2.5), GammaGammaParams(4.0, 4.5, 30.0)),
    ("regular", BgNbdParams(1.2, 40.0, 0.5, 6.0), GammaGammaParams(3.0, 6.0, 80.0)),
    ("frequent", BgNbdParams(2.5, 25.0, 1.5, 12.0), GammaGammaParams(5.0, 3.0, 20.0)),
    ("fickle", BgNbdParams(0.8, 20.0, 2.0, 3.0), GammaGammaParams(2.0, 8.0, 150.0)),
]
TOLERANCE = 0.10


def relative_se(gradient, params, *data) -> np.ndarray:
    """Standard errors of the estimates, in % of each: inverse Hessian of the total
    log-likelihood in log-parameters, by central differences of the analytic gradient."""
    theta = np.log(np.array(params, dtype=np.float64))
    k, h = len(theta), 1e-5
    hess = np.empty((k, k))
    for i in range(k):
        step = np.zeros(k)
        step[i] = h
        up = gradient(type(params)(*np.exp(theta + step)), *data)[1]
        down = gradient(type(params)(*np.exp(theta - step)), *data)[1]
        hess[i] = (up - down) / (2 * h)
    cov = np.linalg.inv(-(hess + hess.T) / 2)
    return 100 * np.sqrt(np.maximum(np.diag(cov), 0.0))  # sd of log(theta) ~ relative sd


def recovery(n: int, seed: int) -> bool:
    print(f"\n1. Parameter recovery: {n:,} customers per set, first purchase uniform over the "
          f"last 730 days (continuous time), tolerance {TOLERANCE:.0%}")
    print(f"{'set':11} {'model':11} {'param':6} {'truth':>9} {'fitted':>9} {'error':>7} "
          f"{'se':>6} {'err/se':>6}  verdict (10 %)")
    all_pass, within_3se = True, True
    for k, (name, bg, gg) in enumerate(SETS):
        rng = np.random.default_rng(seed + k)
        pop = simulate_bgnbd(bg, rng.uniform(0.0, 730.0, n), rng)
        t0 = time.perf_counter()
        fit = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
        t_bg = time.perf_counter() - t0
        # Gamma-Gamma's customers are repeat customers: the first n of a larger population
        more = simulate_bgnbd(bg, rng.uniform(0.0, 730.0, 4 * n), rng).x
        gx = more[more > 0][:n]
        m = simulate_gamma_gamma(gg, gx, rng)
        t0 = time.perf_counter()
        gfit = fit_gamma_gamma(gx, m, fitted_at=0.0)
        t_gg = time.perf_counter() - t0
        for model, truth, f, se in (
            ("bgnbd", bg, fit, fit.ok and relative_se(bgnbd.gradient, fit.params, pop.x,
                                                      pop.t_x, pop.T, np.ones(n))),
            ("gamma-gamma", gg, gfit, gfit.ok and relative_se(
                gamma_gamma.gradient, gfit.params, gx, m, np.ones(len(gx)))),
        ):
            if not f.ok:
                print(f"{name:11} {model:11} fit {f.status}: {f.reason}  FAIL")
                all_pass = False
                continue
            for i, (pname, want) in enumerate(truth._asdict().items()):
                got = f.params[i]
                err = got / want - 1
                ok = abs(err) <= TOLERANCE
                z = math.log(got / want) / (se[i] / 100)
                all_pass &= ok
                within_3se &= abs(z) <= 3
                print(f"{name:11} {model:11} {pname:6} {want:9.4g} {got:9.4g} {err:+7.1%} "
                      f"{se[i]:5.1f}% {z:+6.1f}  {'PASS' if ok else 'FAIL'}")
        print(f"{'':11} {(pop.x > 0).mean():.0%} repeat customers, mean x of those "
              f"{gx.mean():.1f}; fit {t_bg * 1e3:.0f} ms (BG/NBD), {t_gg * 1e3:.0f} ms "
              f"(Gamma-Gamma, {len(gx):,} repeat customers)")
    print(f"recovery: {'PASS' if all_pass else 'FAIL'} (every parameter within "
          f"{TOLERANCE:.0%}); every error within 3 standard errors: "
          f"{'yes' if within_3se else 'NO'}")
    return all_pass


def calibration(n: int, seed: int) -> None:
    bg = SETS[0][1]
    rng = np.random.default_rng(seed + 100)
    pop = to_days(simulate_bgnbd(bg, rng.uniform(65.0, 365.0, n), rng, holdout=90.0))
    fit = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
    print(f"\n2. Calibration: {n:,} customers from the '{SETS[0][0]}' set, 365-day "
          f"calibration period (whole days), 90-day holdout; fitted {fit.status}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in fit.params._asdict().items()))
    predictor = Predictor(fit.params)
    pred = np.array([predictor.predict(x, t, T).expected_orders_90d
                     for x, t, T in zip(pop.x.tolist(), pop.t_x.tolist(), pop.T.tolist(),
                                        strict=True)])
    group = np.minimum(pop.x, 7)
    print(f"{'x (calib.)':>10} {'customers':>9} {'predicted':>9} {'actual':>8} {'error':>8} "
          f"{'rel':>7} {'2 se':>6}")
    for g in range(8):
        sel = group == g
        p_mean, a_mean = pred[sel].mean(), pop.holdout[sel].mean()
        se = pop.holdout[sel].std() / math.sqrt(sel.sum())
        print(f"{str(g) + ('+' if g == 7 else ''):>10} {sel.sum():9,} {p_mean:9.3f} "
              f"{a_mean:8.3f} {p_mean - a_mean:+8.3f} {p_mean / a_mean - 1:+7.1%} "
              f"{2 * se:6.3f}")
    print(f"{'all':>10} {n:9,} {pred.mean():9.3f} {pop.holdout.mean():8.3f} "
          f"{pred.mean() - pop.holdout.mean():+8.3f} {pred.mean() / pop.holdout.mean() - 1:+7.1%}")


def minimum_size(seed: int, reps: int = 30) -> None:
    bg, gg = SETS[0][1], SETS[0][2]
    print(f"\n3. Minimum size ('{SETS[0][0]}' set, whole days, {reps} populations per size): "
          "usable fits, and per population the mean |relative error| of customers' expected "
          "90-day orders (spend for Gamma-Gamma) against the true parameters' (median, "
          "worst of the usable fits)")
    print(f"{'customers':>9} {'repeaters':>9} {'bgnbd ok':>8} {'median':>7} {'worst':>7}   "
          f"{'gg ok':>5} {'median':>7} {'worst':>7}")
    truth = Predictor(bg, gg)
    for n in (100, 200, 500, 1000, 2000):
        ok, errs, gok, gerrs, repeaters = 0, [], 0, [], []
        for k in range(reps):
            rng = np.random.default_rng(seed + 1000 * n + k)
            pop = to_days(simulate_bgnbd(bg, rng.integers(1, 366, n).astype(float), rng))
            m = simulate_gamma_gamma(gg, pop.x, rng)
            repeaters.append(int((pop.x > 0).sum()))
            fit = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0, min_customers=1,
                            min_repeaters=1)
            gfit = fit_gamma_gamma(pop.x, m, fitted_at=0.0, min_customers=2)
            rows = list(zip(pop.x.tolist(), pop.t_x.tolist(), pop.T.tolist(), m.tolist(),
                            strict=True))
            want = np.array([truth.predict(*r) for r in rows])
            if fit.ok:
                ok += 1
                got = np.array([Predictor(fit.params).predict(*r[:3]).expected_orders_90d
                                for r in rows])
                errs.append(np.mean(np.abs(got / want[:, 2] - 1)))
            if gfit.ok:
                gok += 1
                rep = pop.x > 0
                spend = gamma_gamma.conditional_expected_spend(gfit.params, pop.x[rep], m[rep])
                spend_true = gamma_gamma.conditional_expected_spend(gg, pop.x[rep], m[rep])
                gerrs.append(np.mean(np.abs(spend / spend_true - 1)))

        def cell(e):
            return (f"{np.median(e):7.1%} {np.max(e):7.1%}" if e else f"{'-':>7} {'-':>7}")
        print(f"{n:9,} {np.median(repeaters):9.0f} {ok / reps:8.0%} {cell(errs)}   "
              f"{gok / reps:5.0%} {cell(gerrs)}")
    print(f"rules in use: BG/NBD needs {MIN_CUSTOMERS} customers and {MIN_REPEATERS} "
          f"repeaters, Gamma-Gamma {MIN_GG_CUSTOMERS} repeat customers")


def day_population(n: int, seed: int):
    bg, gg = SETS[0][1], SETS[0][2]
    rng = np.random.default_rng(seed)
    pop = to_days(simulate_bgnbd(bg, rng.integers(1, 731, n).astype(float), rng))
    return pop, simulate_gamma_gamma(gg, pop.x, rng)


def sampling(base: int, seed: int, reps: int = 3) -> None:
    pop, m = day_population(base, seed + 200)
    t0 = time.perf_counter()
    full = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
    gfull = fit_gamma_gamma(pop.x, m, fitted_at=0.0)
    t_full = time.perf_counter() - t0
    probe = sample_indices(base, 20_000, seed=seed + 1)
    rows = list(zip(pop.x[probe].tolist(), pop.t_x[probe].tolist(), pop.T[probe].tolist(),
                    m[probe].tolist(), strict=True))
    ref = np.array([Predictor(full.params, gfull.params).predict(*r) for r in rows])
    print(f"\n4. Sampling: fits on uniform samples of {base:,} customers ('{SETS[0][0]}' set, "
          f"whole days) against the full fit ({t_full:.2f} s for both models); {reps} samples "
          "per size; errors of 20,000 customers' predictions against the full fit's: mean "
          "|relative| and the worst customer, each the largest over the samples")
    print(f"{'sample':>9} {'max param diff':>14} {'p_alive':>8} {'orders 90d':>17} "
          f"{'revenue 90d':>17} {'fit s':>6}")
    for size in (10_000, 30_000, 100_000, 300_000):
        if size >= base:
            continue
        worst = np.zeros(6)
        diff, t_fit = 0.0, 0.0
        for k in range(reps):
            idx = sample_indices(base, size, seed=seed + size + k)
            t0 = time.perf_counter()
            fit = fit_bgnbd(pop.x[idx], pop.t_x[idx], pop.T[idx], fitted_at=0.0)
            gfit = fit_gamma_gamma(pop.x[idx], m[idx], fitted_at=0.0)
            t_fit = max(t_fit, time.perf_counter() - t0)
            diff = max(diff, *(abs(a / b - 1) for a, b in zip(
                (*fit.params, *gfit.params), (*full.params, *gfull.params), strict=True)))
            got = np.array([Predictor(fit.params, gfit.params).predict(*r) for r in rows])
            errs = [np.abs(got[:, i] / ref[:, i] - 1) for i in (0, 2, 3)]
            worst = np.maximum(worst, [errs[0].mean(), errs[0].max(), errs[1].mean(),
                                       errs[1].max(), errs[2].mean(), errs[2].max()])
        print(f"{size:9,} {diff:14.1%} {worst[0]:8.2%} {worst[2]:8.2%} {worst[3]:8.2%} "
              f"{worst[4]:8.2%} {worst[5]:8.2%} {t_fit:6.2f}")
    print(f"sample size in use: {SAMPLE_SIZE:,}")


def fit_cost(sizes: list[int], seed: int, unaggregated: bool) -> None:
    print("\n5. Fit cost (whole-day populations, first purchase uniform over 730 days)")
    print(f"{'customers':>10} {'rows':>8} {'aggregate s':>11} {'bgnbd s':>8} "
          f"{'gamma-gamma s':>13}  aggregated")
    for n in sizes:
        pop, m = day_population(n, seed + 300 + n)
        t0 = time.perf_counter()
        (ux, _, _), _ = aggregate(pop.x, pop.t_x, pop.T)
        t_agg = time.perf_counter() - t0
        for agg in (True, False):
            if not agg and not unaggregated:
                continue
            t0 = time.perf_counter()
            fit = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0, aggregate_rows=agg)
            t_bg = time.perf_counter() - t0
            t0 = time.perf_counter()
            gfit = fit_gamma_gamma(pop.x, m, fitted_at=0.0, aggregate_rows=agg)
            t_gg = time.perf_counter() - t0
            assert fit.ok and gfit.ok, (fit.reason, gfit.reason)
            rows = len(ux) if agg else n
            print(f"{n:10,} {rows:8,} {t_agg if agg else 0.0:11.2f} {t_bg:8.2f} {t_gg:13.2f}"
                  f"  {'yes (BG/NBD rows; spends are continuous)' if agg else 'no'}")


def prediction_cost(seed: int) -> None:
    pop, m = day_population(20_000, seed + 400)
    fit = fit_bgnbd(pop.x, pop.t_x, pop.T, fitted_at=0.0)
    gfit = fit_gamma_gamma(pop.x, m, fitted_at=0.0)
    predictor = Predictor(fit.params, gfit.params)
    rows = list(zip(pop.x.tolist(), pop.t_x.tolist(), pop.T.tolist(), m.tolist(), strict=True))
    print("\n6. Per-customer cost (one call at a time, 20,000 simulated customers, best of 5)")
    for label, subset in (("all customers", rows),
                          ("no repeats (x = 0)", [r for r in rows if r[0] == 0]),
                          ("repeat customers", [r for r in rows if r[0] > 0])):
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            for r in subset:
                predictor.predict(*r)
            best = min(best, (time.perf_counter() - t0) / len(subset))
        print(f"  Predictor.predict, {label:20} {best * 1e6:6.2f} us ({len(subset):,})")
    days = np.random.default_rng(seed).integers(19_000, 19_365, 100_000).tolist()
    t0 = time.perf_counter()
    s = None
    for d in days:
        s = record_purchase(s, d, 25.0)
    print(f"  record_purchase                         "
          f"{(time.perf_counter() - t0) / len(days) * 1e6:6.2f} us")
    r, alpha, a, b = fit.params
    t0 = time.perf_counter()
    for _ in range(200):
        bgnbd._alive_expected_quad(r + 3, 90.0 / (alpha + 100.0), a, b + 3)
    print(f"  quadrature fallback (hyp2f1 guard)      "
          f"{(time.perf_counter() - t0) / 200 * 1e6:6.0f} us (used only near a = 1 or when "
          "2F1 fails)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=10_000, help="per recovery set")
    ap.add_argument("--calibration", type=int, default=50_000)
    ap.add_argument("--sizes", default="100000,1000000", help="fit-cost population sizes")
    ap.add_argument("--sample-base", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-unaggregated", action="store_true",
                    help="time fits on aggregated rows only")
    ap.add_argument("--only", default="1,2,3,4,5,6", help="sections to run")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    print(f"bench/predictive.py on {platform.machine()} with {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    start = time.perf_counter()
    ok = True
    if "1" in only:
        ok = recovery(args.customers, args.seed)
    if "2" in only:
        calibration(args.calibration, args.seed)
    if "3" in only:
        minimum_size(args.seed)
    if "4" in only:
        sampling(args.sample_base, args.seed)
    if "5" in only:
        fit_cost([int(s) for s in args.sizes.split(",")], args.seed, not args.skip_unaggregated)
    if "6" in only:
        prediction_cost(args.seed)
    print(f"\nrun {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
