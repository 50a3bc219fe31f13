"""The predictive models in the trainer and in the step: the uniform sample of customers, when
fits happen and which are kept, the snapshot and checkpoint, and the per-customer predictions
the step adds to the features (after events and at ticks)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from stream_app.core.predictive import (
    MIN_CUSTOMERS,
    BgNbdParams,
    GammaGammaParams,
    simulate_bgnbd,
    simulate_gamma_gamma,
    to_days,
)
from stream_app.core.predictive.live import PREDICTION_FEATURES, LivePredictions
from stream_app.core.predictive.training import (
    AT,
    KEY,
    PURCHASES,
    PredictiveTrainer,
    customer_key,
    sample_fields,
)
from stream_app.core.processing import Message, Step
from stream_app.core.segmentation.clustering import Trainer, TrainerSettings
from stream_app.core.segmentation.rules import load_segmentations
from stream_app.core.state.customer import DAY, CustomerState
from tests.unit.test_trainer import stream

BG = BgNbdParams(r=0.6, alpha=25.0, a=0.7, b=2.5)
GG = GammaGammaParams(p=6.0, q=4.0, v=15.0)
DAY0 = 20_000  # UTC day of everyone's first purchase... plus up to a year


def population(n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` customers simulated from BG and GG, as training samples at day DAY0 + 365."""
    rng = np.random.default_rng(seed)
    T = rng.integers(30, 365, n).astype(float)
    pop = to_days(simulate_bgnbd(BG, T, rng))
    m = simulate_gamma_gamma(GG, pop.x, rng)
    now_day = DAY0 + 365
    out = []
    for i in range(n):
        first = now_day - int(pop.T[i])
        x = int(pop.x[i])
        summary = [first, 30.0, first + int(pop.t_x[i]), x, float(m[i]) * x]
        out.append({PURCHASES: summary, KEY: customer_key(f"c{seed}-{i}"),
                    AT: now_day * DAY + 3600.0})
    return out


# --- the sample ----------------------------------------------------------------------------

def test_the_sample_is_bounded_and_uniform_by_hash() -> None:
    trainer = PredictiveTrainer(capacity=1000)
    samples = population(5000)
    for s in samples:
        trainer.observe(s)
    assert 500 <= len(trainer) <= 1000
    kept = {int(s[KEY]) for s in samples if int(s[KEY]) < trainer.threshold}  # type: ignore[call-overload]
    assert set(trainer._row) == kept
    # hashes are uniform: the sample's share of the customers matches the threshold's
    assert len(kept) / 5000 == pytest.approx(trainer.threshold / 2**64, rel=0.15)


def test_a_customer_sampled_again_is_updated_not_added() -> None:
    trainer = PredictiveTrainer()
    summary = [DAY0, 10.0, DAY0, 0, 0.0]
    trainer.observe(sample_fields("c1", tuple(summary), DAY0 * DAY))  # type: ignore[arg-type]
    trainer.observe(sample_fields("c1", (DAY0, 10.0, DAY0 + 7, 1, 25.0), (DAY0 + 8) * DAY))  # type: ignore[arg-type]
    trainer.observe({"orders": 0.0})  # no purchases: not a customer of the models
    assert len(trainer) == 1
    x, t_x, T, m_x = trainer.inputs((DAY0 + 10) * DAY)
    assert (x.tolist(), t_x.tolist(), T.tolist(), m_x.tolist()) == ([1], [7], [10], [25.0])


# --- fits ------------------------------------------------------------------------------------

def test_no_fit_below_the_minimum_then_parameters_recovered() -> None:
    trainer = PredictiveTrainer()
    samples = population(6000)
    for s in samples[:MIN_CUSTOMERS - 1]:
        trainer.observe(s)
    assert not trainer.maybe_fit() and trainer.bgnbd is None and trainer.fits == 0
    for s in samples[MIN_CUSTOMERS - 1:]:
        trainer.observe(s)
    assert trainer.maybe_fit()
    assert trainer.bgnbd is not None and trainer.bgnbd.customers == 6000
    fitted = trainer.bgnbd.params
    for got, want in zip(fitted, BG, strict=True):  # type: ignore[arg-type]
        assert got == pytest.approx(want, rel=0.35)  # 6,000 customers: sampling error
    assert trainer.gamma_gamma is not None
    assert trainer.gamma_gamma.params.p * trainer.gamma_gamma.params.v / (  # type: ignore[union-attr]
        trainer.gamma_gamma.params.q - 1) == pytest.approx(30.0, rel=0.15)  # type: ignore[union-attr]


def test_refits_once_a_day_of_event_time_or_when_the_sample_grows_by_a_quarter() -> None:
    trainer = PredictiveTrainer()
    samples = population(4000)
    for s in samples[:2000]:
        trainer.observe(s)
    assert trainer.maybe_fit()
    fitted_at = trainer.bgnbd.fitted_at  # type: ignore[union-attr]
    for s in samples[2000:2400]:  # +20 %, the same day: not due
        trainer.observe(s)
    assert not trainer.due()
    for s in samples[2400:2600]:  # +30 %: due
        trainer.observe(s)
    assert trainer.maybe_fit() and trainer.fits == 2
    assert not trainer.due()
    later = dict(samples[0])
    later[AT] = float(later[AT]) + DAY  # type: ignore[arg-type]
    trainer.observe(later)  # event time reaches the next day
    assert trainer.due() and trainer.maybe_fit(clock=1000.0)
    assert trainer.bgnbd.fitted_at == fitted_at + DAY  # type: ignore[union-attr]
    # a replay crosses days of event time in moments: at most one refit a minute of clock
    later[AT] = float(later[AT]) + DAY  # type: ignore[arg-type]
    trainer.observe(later)
    assert trainer.due() and not trainer.due(clock=1059.0) and trainer.due(clock=1060.0)


def test_a_failed_or_too_small_fit_keeps_the_previous_parameters() -> None:
    trainer = PredictiveTrainer()
    for s in population(3000):
        trainer.observe(s)
    assert trainer.maybe_fit()
    good, good_gg = trainer.bgnbd, trainer.gamma_gamma
    assert good is not None and good_gg is not None
    # the same customers, a day later: no one came back (BG/NBD: too few repeaters) and
    # spends with an infinite mean (Gamma-Gamma: q < 1, a failure)
    rng = np.random.default_rng(4)
    x = rng.integers(1, 10, 3000)
    spends = simulate_gamma_gamma(GammaGammaParams(5.0, 0.6, 10.0), x.astype(float), rng)
    for i in range(3000):
        trainer.observe({PURCHASES: [DAY0, 10.0, DAY0, 0, float(spends[i] * x[i])],
                         KEY: customer_key(f"c0-{i}"), AT: (DAY0 + 366) * DAY})
    assert not trainer.maybe_fit()
    assert trainer.last_attempt["bgnbd"].status == "too_few"
    assert trainer.bgnbd is good and trainer.gamma_gamma is good_gg
    for i in range(3000):
        trainer.observe({PURCHASES: [DAY0, 10.0, DAY0 + 30, int(x[i]), float(spends[i] * x[i])],
                         KEY: customer_key(f"c0-{i}"), AT: (DAY0 + 367) * DAY})
    # all came back, all last bought on one day: BG/NBD's optimiser runs to its box (failed)
    assert not trainer.maybe_fit()
    assert {fit.status for fit in trainer.last_attempt.values()} == {"failed"}
    assert trainer.bgnbd is good and trainer.gamma_gamma is good_gg
    # a restarted trainer with the checkpoint's fits and a small sample keeps them too
    restarted = PredictiveTrainer()
    restarted.restore(json.loads(json.dumps(trainer.to_json())))
    assert restarted.bgnbd == good
    for s in population(MIN_CUSTOMERS + 10, seed=1):
        restarted.observe(s)
    assert not restarted.due()  # a day of samples first: the first ones are the active ones
    restarted.now += DAY
    assert restarted.due()


# --- the trainer publishes them in its snapshots -----------------------------------------------

def test_a_passing_fit_is_published_at_once_in_the_versioned_snapshot() -> None:
    trainer = Trainer(TrainerSettings(clusters=3, snapshot_every=3000))
    samples = population(2000)
    for f in stream(3000):
        trainer.learn(f)
    first = trainer.maybe_snapshot(0.0)  # the clustering's first snapshot: no fit yet
    assert first is not None and first["predictive"]["bgnbd"] is None
    for f, s in zip(stream(2000, seed=1), samples, strict=True):
        trainer.learn({**f, **s})
    snapshot = trainer.maybe_snapshot(1.0)  # not due for the clustering: due for the fit
    assert snapshot is not None and snapshot["version"] == 2
    part = json.loads(json.dumps(snapshot["predictive"], allow_nan=False))
    assert part["bgnbd"]["status"] == "ok" and part["bgnbd"]["customers"] == 2000
    assert part["bgnbd"]["time_unit"] == "days" and part["bgnbd"]["log_likelihood"] < 0
    assert part["gamma_gamma"]["params"]["q"] > 1
    live = LivePredictions()
    assert live.load(part, snapshot["version"])
    doc = live.model_document()
    assert doc["version"] == 2 and doc["bgnbd"]["customers"] == 2000
    assert set(doc["bgnbd"]) == {"r", "alpha", "a", "b", "time_unit", "customers",
                                 "log_likelihood", "fitted_at"}
    assert set(doc["gamma_gamma"]) == {"p", "q", "v", "customers", "log_likelihood"}
    assert not live.load(part, 3)  # the same parameters again: nothing changed
    # a trainer resumed from its checkpoint, or from the snapshot alone, keeps the fits
    resumed = Trainer.from_json(trainer.to_json())
    assert resumed.predictive is not None and resumed.predictive.bgnbd == trainer.predictive.bgnbd  # type: ignore[union-attr]
    fresh = Trainer(TrainerSettings(clusters=3))
    fresh.catch_up(snapshot)
    assert fresh.predictive.bgnbd == trainer.predictive.bgnbd  # type: ignore[union-attr]


def test_no_predictive_part_with_predictions_off() -> None:
    trainer = Trainer(TrainerSettings(clusters=3, predictions=False, snapshot_every=3000))
    for f, s in zip(stream(3000), population(3000), strict=True):
        trainer.learn({**f, **s})
    snapshot = trainer.maybe_snapshot(0.0)
    assert snapshot is not None and snapshot["predictive"] is None
    assert LivePredictions().model_document() == {"bgnbd": None, "gamma_gamma": None,
                                                  "version": None}


# --- the step: predictions after every event and at ticks; samples carry the summary --------

T0 = 1_700_000_000.0


def _order(cid: str, n: int, ts: float, amount: float = 40.0) -> Message:
    body = {"type": "track", "event": "Order Completed", "userId": cid,
            "messageId": f"{cid}-{n}", "properties": {"revenue": amount},
            "timestamp": datetime.fromtimestamp(ts, UTC).isoformat()}
    return Message("in", 0, n, cid.encode(), json.dumps(body).encode(), T0 + 400 * DAY)


def _step(live: LivePredictions | None) -> Step:
    return Step(input_topic="in", routed_topic="routed", partitions=1,
                segmentations=load_segmentations(), sample_every_s=DAY, predictions=live)


def test_predictions_follow_events_and_ticks_and_drive_retention() -> None:
    live = LivePredictions.fixed(BG, GG, version=7)
    step = _step(live)
    customers: dict[str, object] = {}
    # every 5 days for two months
    res = step.run(0, [_order("u1", i, T0 + i * 5 * DAY) for i in range(12)], customers,
                   T0 + 400 * DAY)
    state = customers["u1"]
    assert isinstance(state, CustomerState) and state.segments["retention"] == "likely_to_buy_soon"
    assert not hasattr(state, "p_alive") and "p_alive" not in state.segment_aux  # not stored
    # the samples for the trainer carry the summary, keyed by a hash of the id
    with_summary = [s for s in res.samples if PURCHASES in s]
    assert with_summary and all(s[KEY] == customer_key("u1") for s in with_summary)
    assert with_summary[-1][PURCHASES] == list(state.purchases)  # type: ignore[arg-type]
    assert all(name in s for s in res.samples for name in PREDICTION_FEATURES)
    at_event = live.of(state.purchases, state.last_seen)
    # time ticks: p_alive falls, the customer moves through retention without an event
    moves = []
    for days in (20, 40, 120):
        now = state.last_seen + days * DAY
        assert step.start_tick(0, customers, now)
        tick = step.tick(customers, ["u1"], now, T0 + 400 * DAY, erased_keep_s=DAY)
        moves += [c.record.segment for c in tick.changes
                  if c.record.segmentation == "retention"]
    assert moves == ["at_risk_high_value", "probably_gone"]
    later = live.of(customers["u1"].purchases, state.last_seen + 120 * DAY)  # type: ignore[union-attr]
    assert later["p_alive"] < 0.2 < at_event["p_alive"]  # type: ignore[operator]
    # an order brings them back
    step.run(0, [_order("u1", 99, state.last_seen + 121 * DAY)], customers, T0 + 400 * DAY)
    assert customers["u1"].segments["retention"] != "probably_gone"  # type: ignore[union-attr]


def test_without_a_model_no_one_is_in_retention_and_samples_carry_no_summary() -> None:
    for live in (LivePredictions(), None):
        step = _step(live)
        customers: dict[str, object] = {}
        res = step.run(0, [_order("u1", i, T0 + i * DAY) for i in range(3)], customers,
                       T0 + 400 * DAY)
        assert "retention" not in customers["u1"].segments  # type: ignore[union-attr]
        assert bool([s for s in res.samples if PURCHASES in s]) == (live is not None)


# --- the dashboard's distribution ----------------------------------------------------------

def test_distribution_counts_every_predicted_customer_once_and_groups_by_segment() -> None:
    from stream_app.core.predictive.live import REVENUE_EDGES, distribution
    from stream_app.core.predictive.summary import PurchaseSummary

    live = LivePredictions.fixed(BG, GG, version=4)
    now = (DAY0 + 400) * DAY
    rng = np.random.default_rng(3)
    customers = []
    for i in range(300):
        first = DAY0 + int(rng.integers(0, 300))
        x = int(rng.integers(0, 6))
        last = first + (int(rng.integers(1, 400 - (first - DAY0))) if x else 0)
        customers.append((PurchaseSummary(first, 20.0, last, x, 35.0 * x), f"c{i % 3}"))
    customers += [(None, "c0")] * 50  # no order: no predictions
    doc = distribution(customers, live, now)
    assert doc["customers"] == 300 and doc["version"] == 4
    assert sum(doc["p_alive"]["counts"]) == sum(doc["expected_revenue_90d"]["counts"]) == 300
    assert len(doc["expected_revenue_90d"]["counts"]) == len(REVENUE_EDGES)
    by = {g["segment"]: g for g in doc["by_segment"]}
    assert set(by) == {"c0", "c1", "c2"} and sum(g["customers"] for g in by.values()) == 300
    preds = [live.of(s, now) for s, seg in customers if s is not None and seg == "c1"]
    assert by["c1"]["mean_p_alive"] == pytest.approx(np.mean([p["p_alive"] for p in preds]))
    assert by["c1"]["expected_revenue_90d"] == pytest.approx(
        sum(p["expected_revenue_90d"] for p in preds))  # type: ignore[misc]
    assert distribution(customers, LivePredictions(), now)["customers"] == 0


def test_new_parameters_rescore_the_segmentations_that_read_predictions() -> None:
    from stream_app.host.modeling import prediction_readers

    assert [seg.name for seg in prediction_readers(load_segmentations())] == ["retention"]
