"""Quality and speed of the behaviour segmentation, per clustering model, on simulated traffic.

    .venv/bin/python bench/quality.py [--customers N] [--days D] [--model kmeans ...]
    .venv/bin/python bench/quality.py --horizon [--customers N] [--days D] [--model ...]

``--horizon``: the long-horizon benchmark instead (two years of three changing populations
from ``stream_app.simulate_long``, through ``stream_app.evaluation``, the engine of
``segmenter evaluate``); see :func:`horizon`.

Simulated customers with known personas (``stream_app.simulate``) go through the same pure
path as the worker, in micro-batches as the worker takes them: ``parse.decode`` ->
``state.customer`` apply -> ``features`` -> ``BehaviorSegmentation.evaluate_many`` for the
customers a batch touched, plus a re-evaluation tick of every customer each 6 simulated hours
(so quiet customers age into "lapsing"). Customer samples feed one ``Trainer`` per model (at
most one per customer per day, see ``learn_due``); the trainer runs on the wall clock and
each snapshot it publishes is loaded at once. Every model sees the same events in one pass.

Figures (steady state = the last third of the period; customers given a behaviour shift are
left out of stability and change rates, which are about customers who did not change):

* ARI truth / batch: adjusted Rand index of the final segments against the personas, and
  against scikit-learn k-means (same k, same final vectors and scaling).
* stable raw: share of (customer, model update) pairs whose nearest segment id is the same
  under the new snapshot as under the previous one, features frozen.
* stable served: the same, through ``evaluate`` with its hysteresis, evaluated repeatedly
  until it settles (so confirmations only delay, they cannot hide a move).
* chg/c/d: segment changes (not first assignments) per customer per day, events and ticks.
* shift ok: share of shifted customers (window shoppers who start buying heavily half-way)
  who ended in the segment holding most of their new persona.
* learn us: per ``Trainer.learn``; score us: per customer in ``evaluate_many`` batches;
  one us: per single-customer ``evaluate``; snap ms: per snapshot published.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_app.core.events.interaction import raw_id
from stream_app.core.events.parse import decode  # noqa: E402
from stream_app.core.segmentation.clustering import (  # noqa: E402
    BehaviorSegmentation,
    Hysteresis,
    Trainer,
    TrainerSettings,
    learn_due,
)
from stream_app.core.segmentation.clustering.models import MODELS  # noqa: E402
from stream_app.core.segmentation.clustering.vectorize import Scaling, vectorize_many  # noqa: E402
from stream_app.core.state.customer import CustomerState, StateConfig, apply_in_place, new_state  # noqa: E402
from stream_app.core.state.features import features  # noqa: E402
from stream_app.evaluation import kept_through_hysteresis  # noqa: E402
from stream_app.simulate import DAY, population, shifts_for, simulate  # noqa: E402

NAME = BehaviorSegmentation.name
DEFAULT_HYSTERESIS = Hysteresis()
DEFAULT_SETTINGS = TrainerSettings()


@dataclass
class Pipeline:
    """One model's trainer and scorer, and the memberships a worker would store."""

    algorithm: str
    trainer: Trainer
    seg: BehaviorSegmentation
    member: dict[str, str] = field(default_factory=dict)
    aux: dict[str, Any] = field(default_factory=dict)
    sampled: dict[str, float] = field(default_factory=dict)
    learn_s: float = 0.0
    learns: int = 0
    score_s: float = 0.0
    scores: int = 0
    snap_s: float = 0.0
    snaps: int = 0
    changes: int = 0
    stable_raw: list[int] = field(default_factory=lambda: [0, 0])
    stable_served: list[int] = field(default_factory=lambda: [0, 0])

    def decide(self, states: Sequence[CustomerState], feats: Sequence[dict[str, Any]],
               now: float, count_change: Sequence[bool]) -> None:
        for st in states:
            _set_member(st, self.member.get(st.customer_id))
        auxes = [self.aux.get(st.customer_id) for st in states]
        t = time.perf_counter()
        decisions = self.seg.evaluate_many(states, feats, now, auxes)
        self.score_s += time.perf_counter() - t
        self.scores += len(states)
        for st, d, counted in zip(states, decisions, count_change, strict=True):
            cid = st.customer_id
            before = self.member.get(cid)
            if d.segment != before:
                if before is not None and counted:
                    self.changes += 1
                if d.segment is None:
                    self.member.pop(cid, None)
                else:
                    self.member[cid] = d.segment
            if d.aux is None:
                self.aux.pop(cid, None)
            else:
                self.aux[cid] = d.aux

    def sample(self, cid: str, feats: dict[str, Any], now: float,
               states: dict[str, CustomerState], last_feats: dict[str, dict[str, Any]],
               frozen_out: set[str], steady: bool) -> None:
        if not learn_due(self.sampled.get(cid), now):
            return
        self.sampled[cid] = now
        t = time.perf_counter()
        self.trainer.learn(feats)
        self.learn_s += time.perf_counter() - t
        self.learns += 1
        t = time.perf_counter()
        # The trainer runs on the wall clock, as the model agent would: replayed event time
        # runs ~10^5 times faster, so a time-based cadence would publish after every sample.
        snapshot = self.trainer.maybe_snapshot(time.time())
        if snapshot is None:
            return
        self.snap_s += time.perf_counter() - t
        self.snaps += 1
        if steady and self.seg.ready:
            self._measure_stability(snapshot, states, last_feats, frozen_out)
        else:
            self.seg.load(snapshot)

    def _measure_stability(self, snapshot: dict[str, Any], states: dict[str, CustomerState],
                           last_feats: dict[str, dict[str, Any]], frozen_out: set[str]) -> None:
        """Re-score unchanged customers (frozen features) against the new snapshot."""
        cids = [c for c in self.member if c not in frozen_out]
        feats = [last_feats[c] for c in cids]
        before = self.seg.score_many(feats)
        self.seg.load(snapshot)
        after = self.seg.score_many(feats)
        if before is None or after is None or not cids:
            return
        same = sum(a == b for a, b in zip(before.nearest(), after.nearest(), strict=True))
        self.stable_raw[0] += same
        self.stable_raw[1] += len(cids)
        sts = [states[c] for c in cids]
        for st in sts:
            _set_member(st, self.member[st.customer_id])
        kept = kept_through_hysteresis(self.seg, sts, feats, [self.aux.get(c) for c in cids])
        self.stable_served[0] += kept
        self.stable_served[1] += len(cids)


def _set_member(st: CustomerState, segment: str | None) -> None:
    if segment is None:
        st.segments.pop(NAME, None)
    else:
        st.segments[NAME] = segment


@dataclass
class Report:
    customers: int
    events: int
    pipeline_us: float
    batch_truth_ari: float
    rows: list[dict[str, Any]]
    segments: dict[str, list[dict[str, Any]]]


def evaluate(customers: int = 1000, days: float = 60.0, models: Sequence[str] = tuple(MODELS),
             clusters: int = 7, seed: int = 1, shift_share: float = 0.25,
             tick_hours: float = 6.0, batch_customers: int = 100,
             hysteresis: Hysteresis = DEFAULT_HYSTERESIS,
             settings: TrainerSettings = DEFAULT_SETTINGS, min_learned: int = 1000) -> Report:
    """Run the simulation through every model; return the figures."""
    initial = population(customers, seed)
    shifts = shifts_for(initial, share=shift_share, day=days * 0.5, source="window_shoppers",
                        target="champions", seed=seed)
    sim = simulate(customers=customers, days=days, seed=seed, shifts=shifts)
    shifted = {s.customer_id for s in shifts}
    t0 = sim.start.timestamp()
    steady_from = t0 + days * DAY * 2 / 3
    end = t0 + days * DAY
    pipes = [Pipeline(m, Trainer(_settings(settings, m, clusters, seed)),
                      BehaviorSegmentation(hysteresis, min_learned)) for m in models]
    states: dict[str, CustomerState] = {}
    last_feats: dict[str, dict[str, Any]] = {}
    cfg = StateConfig()
    wall = time.time()
    events = 0
    path_s = 0.0
    next_tick = t0 + tick_hours * 3600.0
    pending: dict[str, None] = {}  # customers touched in the current micro-batch, in order
    last_ts = t0

    def assess(cids: list[str], now: float) -> None:
        """What the worker does for a batch: features, evaluate_many, sample for learning."""
        nonlocal path_s
        t = time.perf_counter()
        feats = [features(states[c], now) for c in cids]
        path_s += time.perf_counter() - t
        last_feats.update(zip(cids, feats, strict=True))
        steady = now >= steady_from
        counted = [steady and c not in shifted for c in cids]
        for p in pipes:
            p.decide([states[c] for c in cids], feats, now, counted)
            for c, f in zip(cids, feats, strict=True):
                p.sample(c, f, now, states, last_feats, shifted, steady)

    def flush() -> None:
        if pending:
            assess(list(pending), last_ts)
            pending.clear()

    for event in sim:
        t = time.perf_counter()
        recs, _ = decode(orjson.dumps(event), now=wall, fallback_ts=t0)
        path_s += time.perf_counter() - t
        for rec in recs:
            # keyed as the simulation names its customers (no identity merges here)
            rec.customer_id = raw_id(rec.customer_id)
            if rec.ts >= next_tick:
                flush()
                while rec.ts >= next_tick:
                    assess(sorted(states), next_tick)
                    next_tick += tick_hours * 3600.0
            t = time.perf_counter()
            st = states.get(rec.customer_id)
            if st is None:
                st = states[rec.customer_id] = new_state(rec)
            apply_in_place(st, rec, cfg)
            path_s += time.perf_counter() - t
            events += 1
            last_ts = rec.ts
            pending[st.customer_id] = None
            if len(pending) >= batch_customers:
                flush()
    flush()
    assess(sorted(states), end)

    cids = sorted(states)
    truth = [sim.ground_truth[c] for c in cids]
    final = [last_feats[c] for c in cids]
    exposure = sum((end - max(steady_from, states[c].first_seen)) / DAY
                   for c in cids if c not in shifted)
    ref_scaling = pipes[0].trainer.scaler.frozen() if pipes else None
    rows = []
    seg_tables = {}
    for p in pipes:
        labels = [p.member.get(c) for c in cids]
        have = [i for i, lab in enumerate(labels) if lab is not None]
        n_seg = len(set(p.member.values()))
        scaling = p.trainer.scaler.frozen()
        batch = _batch_kmeans(final, scaling, max(n_seg, 2), seed)
        rows.append({
            "model": p.algorithm,
            "segments": n_seg,
            "coverage": len(have) / len(cids),
            "ari_truth": adjusted_rand_score([truth[i] for i in have], [labels[i] for i in have])
            if have else float("nan"),
            "ari_batch": adjusted_rand_score([batch[i] for i in have], [labels[i] for i in have])
            if have else float("nan"),
            "stable_raw": _ratio(p.stable_raw),
            "stable_served": _ratio(p.stable_served),
            "changes_per_day": p.changes / exposure if exposure else float("nan"),
            "shift_ok": _shift_ok(p, sim.ground_truth, initial, shifted),
            "learn_us": 1e6 * p.learn_s / max(p.learns, 1),
            "score_us": 1e6 * p.score_s / max(p.scores, 1),
            "one_us": _single_us(p, [states[c] for c in cids], final),
            "snap_ms": 1e3 * p.snap_s / max(p.snaps, 1),
            "snapshots": p.snaps,
        })
        seg_tables[p.algorithm] = _segment_table(p, cids, truth)
    truth_ref = (adjusted_rand_score(truth, _batch_kmeans(final, ref_scaling, clusters, seed))
                 if ref_scaling is not None else float("nan"))
    return Report(len(cids), events, 1e6 * path_s / max(events, 1), truth_ref, rows, seg_tables)


def _settings(base: TrainerSettings, algorithm: str, clusters: int, seed: int) -> TrainerSettings:
    return TrainerSettings(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                              "algorithm": algorithm, "clusters": clusters, "seed": seed})


def _batch_kmeans(final: list[dict[str, Any]], scaling: Scaling, k: int, seed: int) -> list[int]:
    z = scaling.scale(vectorize_many(final))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z).tolist()


def _single_us(p: Pipeline, states: list[CustomerState], feats: list[dict[str, Any]]) -> float:
    """Microseconds per ``evaluate`` of one customer (no batching), final snapshot."""
    t = time.perf_counter()
    for st, f in zip(states, feats, strict=True):
        p.seg.decide(st, f, 0.0, None, explain=True)
    return 1e6 * (time.perf_counter() - t) / max(len(states), 1)


def _ratio(pair: list[int]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def _shift_ok(p: Pipeline, truth: Any, initial: Any, shifted: set[str]) -> float:
    """Share of shifted customers now in the segment holding most unshifted members of
    their new persona."""
    if not shifted:
        return float("nan")
    target = {truth[c] for c in shifted}
    home = {}
    for persona in target:
        votes = Counter(p.member.get(c) for c, k in initial.items()
                        if k == persona and c not in shifted)
        home[persona] = votes.most_common(1)[0][0] if votes else None
    return sum(p.member.get(c) == home[truth[c]] for c in shifted) / len(shifted)


def _segment_table(p: Pipeline, cids: list[str], truth: list[str]) -> list[dict[str, Any]]:
    desc = p.seg.describe()
    by_segment: dict[str, Counter[str]] = {}
    for c, persona in zip(cids, truth, strict=True):
        seg = p.member.get(c)
        if seg is not None:
            by_segment.setdefault(seg, Counter())[persona] += 1
    out = []
    for seg in desc["segments"]:
        votes = by_segment.get(seg["id"], Counter())
        top = votes.most_common(1)
        out.append({"id": seg["id"], "name": seg["name"], "members": sum(votes.values()),
                    "persona": top[0][0] if top else "-",
                    "purity": top[0][1] / sum(votes.values()) if top else 0.0,
                    "typical": seg["profile"]["typical"]})
    return out


def print_report(r: Report, wall_s: float) -> None:
    print(f"{r.customers} customers, {r.events} events; decode+apply+features "
          f"{r.pipeline_us:.0f} us/event; batch k-means vs personas: ARI {r.batch_truth_ari:.3f}; "
          f"run {wall_s:.0f} s")
    head = (f"{'model':<13}{'segs':>5}{'ARI truth':>10}{'ARI batch':>10}{'stable raw':>11}"
            f"{'served':>8}{'chg/c/d':>9}{'shift ok':>9}{'learn us':>9}{'score us':>9}"
            f"{'one us':>9}{'snap ms':>8}")
    print(head)
    print("-" * len(head))
    for row in r.rows:
        print(f"{row['model']:<13}{row['segments']:>5}{row['ari_truth']:>10.3f}"
              f"{row['ari_batch']:>10.3f}{row['stable_raw']:>11.2%}{row['stable_served']:>8.2%}"
              f"{row['changes_per_day']:>9.3f}{row['shift_ok']:>9.0%}{row['learn_us']:>9.1f}"
              f"{row['score_us']:>9.1f}{row['one_us']:>9.1f}{row['snap_ms']:>8.1f}")
    first = next(iter(r.segments), None)
    if first is not None:
        print(f"\nsegments found by {first}:")
        for s in r.segments[first]:
            t = s["typical"]
            last = t["days_since_last_order"]
            print(f"  {s['id']:<5}{s['name']:<38}{s['members']:>5} customers, "
                  f"{s['purity']:.0%} {s['persona']:<17} {t['orders_per_month']:>5.1f} orders/mo "
                  f"{t['avg_order_value']:>7.2f} AOV "
                  f"{'never' if last is None else f'{last:.0f}d':>6} since order")


HORIZON_HEAD = (f"{'population':<12}{'model':<13}{'segs':>5}{'ARI truth':>10}{'ARI batch':>10}"
                f"{'ARI rfm':>8}{'vers':>5}{'ids q1':>7}{'ids/q max':>10}{'served':>8}"
                f"{'worst':>7}{'<95%':>5}{'raw':>8}{'worst':>7}{'<95%':>5}{'chg/c/d':>9}"
                f"{'unseg':>6}{'run s':>6}  new ids by quarter")


def horizon(customers: int = 600, days: float = 730.0, models: Sequence[str] = tuple(MODELS),
            seed: int = 1, populations: Sequence[str] | None = None, rescore: bool = True,
            min_learned: int = 1000, settings: TrainerSettings = DEFAULT_SETTINGS
            ) -> list[dict[str, Any]]:
    """Two years of each long-horizon population through ``stream_app.evaluation``, per model.

    Columns: ARI truth (customers with 60 days of history), ARI batch (batch k-means on the
    same vectors and scaling, same k), ARI rfm (batch k-means on recency, frequency and
    monetary value), vers (model versions), ids q1 (segment ids minted in the first quarter
    of event time), ids/q max (the most minted in any later quarter; target <= 2), served
    (mean share of segment holders who keep their segment across consecutive versions,
    features frozen, through the workers' hysteresis evaluated until a move is confirmed:
    what customers hold; target >= 95 %), worst (the lowest such share), <95% (how many
    version transitions kept fewer than 95 %), raw / worst / <95% (the same for the nearest
    id alone, without the hysteresis), chg/c/d (segment moves
    per customer per day held), unseg (customers with data left without a segment when the
    first ready model was loaded), then the new ids in each quarter of event time.
    """
    from stream_app.evaluation import Evaluation, EvaluationSettings
    from stream_app.simulate_long import horizon_populations

    rows = []
    print(HORIZON_HEAD)
    print("-" * len(HORIZON_HEAD))
    for pop in horizon_populations(customers, days, seed):
        if populations and pop.name not in populations:
            continue
        truth = pop.truth
        for model in models:
            ev = Evaluation(EvaluationSettings(
                trainer=_settings(settings, model, settings.clusters, seed),
                rescore=rescore, min_learned=min_learned, seed=seed), truth=truth)
            ev.feed(pop)
            r = ev.finish()
            quarters = r.new_ids_per_quarter()
            stable, served = r.stability(), r.served_stability()
            row = {"population": pop.name, "model": model, "segments": len(set(r.members.values())),
                   "ari_truth": r.ari_truth, "ari_batch": r.ari_batch, "ari_rfm": r.ari_rfm,
                   "versions": len(r.versions), "ids_q1": quarters[0],
                   "ids_later_max": max(quarters[1:], default=0), "ids_by_quarter": quarters,
                   "stable": sum(stable) / len(stable) if stable else float("nan"),
                   "stable_worst": min(stable, default=float("nan")),
                   "below_95": sum(v < 0.95 for v in stable),
                   "served": sum(served) / len(served) if served else float("nan"),
                   "served_worst": min(served, default=float("nan")),
                   "served_below_95": sum(v < 0.95 for v in served),
                   "changes_per_day": r.changes_per_customer_day, "unassigned": r.unassigned_after_first_ready,
                   "run_s": r.run_s, "events": r.events, "customers": r.customers}
            rows.append(row)
            print(f"{pop.name:<12}{model:<13}{row['segments']:>5}{_f(row['ari_truth']):>10}"
                  f"{_f(row['ari_batch']):>10}{_f(row['ari_rfm']):>8}{row['versions']:>5}"
                  f"{row['ids_q1']:>7}{row['ids_later_max']:>10}{row['served']:>8.1%}"
                  f"{row['served_worst']:>7.1%}{row['served_below_95']:>5}{row['stable']:>8.1%}"
                  f"{row['stable_worst']:>7.1%}{row['below_95']:>5}"
                  f"{_f(row['changes_per_day'], 4):>9}{row['unassigned']:>6}{row['run_s']:>6.0f}"
                  f"  {' '.join(map(str, quarters))}", flush=True)
    return rows


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizon", action="store_true",
                    help="the long-horizon benchmark (defaults: 600 customers, 730 days)")
    ap.add_argument("--population", nargs="+", help="--horizon: only these populations")
    ap.add_argument("--no-rescore", action="store_true",
                    help="--horizon: do not re-score customers when a model version loads")
    ap.add_argument("--customers", type=int, default=None)
    ap.add_argument("--days", type=float, default=None)
    ap.add_argument("--model", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--clusters", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shift-share", type=float, default=0.25,
                    help="share of window shoppers who become frequent high spenders mid-way")
    ap.add_argument("--margin", type=float, default=Hysteresis().margin)
    ap.add_argument("--confirmations", type=int, default=Hysteresis().confirmations)
    ap.add_argument("--snapshot-every", type=int, default=TrainerSettings().snapshot_every)
    ap.add_argument("--move-budget", type=float, default=TrainerSettings().move_budget,
                    help="the trainer's move budget per version (0: re-clusterings at once, "
                    "the baseline)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    if args.horizon:
        horizon(args.customers or 600, args.days or 730.0, args.model, args.seed,
                args.population, rescore=not args.no_rescore,
                settings=TrainerSettings(move_budget=args.move_budget))
        print(f"run {time.perf_counter() - started:.0f} s")
        return
    report = evaluate(args.customers or 1000, args.days or 60.0, args.model, args.clusters, args.seed,
                      args.shift_share, hysteresis=Hysteresis(args.margin, args.confirmations),
                      settings=TrainerSettings(snapshot_every=args.snapshot_every,
                                               move_budget=args.move_budget))
    print_report(report, time.perf_counter() - started)


if __name__ == "__main__":
    main()
