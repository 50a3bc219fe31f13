"""The one clustering model of the application, and the snapshots it publishes.

A single :class:`Trainer` learns from customer feature samples and, every so often, publishes
a *snapshot*: a versioned, JSON-safe description of the segments (scaling, centres, stable
ids, names, profiles). Workers never run the River model; they score against the latest
snapshot (:mod:`.segmentation`), so every worker with the same snapshot puts the same
features in the same segment, whatever the algorithm.

The trainer does no I/O and keeps no clock: the caller (a Kafka agent) feeds it samples,
asks :meth:`Trainer.maybe_snapshot` with the current time, publishes what comes back, and
checkpoints :meth:`Trainer.to_json` so that a restarted trainer resumes where it stopped.

What to feed it: a sample of the *population*, not of the traffic. A customer with 40 events
a day would otherwise weigh 40 times one who visits monthly, and quiet groups (lapsing
buyers) would never get a cluster. :func:`learn_due` is the per-customer throttle: at most
one sample per customer per ``every_s`` of event time, taken from events or from periodic
re-evaluation ticks, so quiet customers are sampled too.

Model generations: the model learns in a scaling that is *fixed* for a generation (fitted on
the recent sample by :func:`.vectorize.fit_scaling`, with the features in use), so centres,
ids and their distances live in one space however the population drifts. At each snapshot the
trainer compares the recent sample with the generation's scaling; when the population has
moved (a feature's mean by ``drift`` of the generation's standard deviations, its spread by a
factor ``drift_spread``, or the set of features in use changed) a new generation begins: the
scaling is fitted again and a fresh model learns the recent sample in it (and chooses its k
again). Ids follow across generations by matching in the new space.

Snapshot fields (``format`` 1)::

    format, segmentation ("behavior"), version (1, 2, ...), algorithm, params,
    created_at (the ``now`` given to maybe_snapshot), n_learned, features (names, in order),
    scaling {mean, std, active} (of the transformed features; active: features in use),
    generation (1, 2, ...), retired (ids dropped in this version),
    set_changes: [{change: appeared | returned | split | merged | retired, segment,
        from | into}],
    segments: [{id, name, centre (scaled, in features order), profile}]
    predictive: the BG/NBD and Gamma-Gamma fits in force ({bgnbd, gamma_gamma: Fit JSON with
        params, customers, log_likelihood, fitted_at; or null}, last_attempt, sample), or
        null with predictions off (:mod:`stream_app.core.predictive.training`)

The predictive models learn from the same samples (those of customers with an order carry
their purchase summary) and are refitted as event time advances; a refit whose fits pass
makes the next snapshot due at once, so workers get new parameters without waiting for the
clustering's own schedule.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

from ...predictive.training import PredictiveTrainer
from . import profiles, transition
from .models import Clusterer, make_model, model_from_snapshot
from .stable import PREFIX, Matching, id_order, match, set_changes
from .vectorize import FEATURES, RunningScaler, Scaling, fit_scaling, vectorize

FORMAT = 1
RETIRED_KEPT = 64  # retired segments remembered for their return (stable.match)
SEGMENTATION = "behavior"


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    algorithm: str = "kmeans"  # a stream_app.config.ClusterModel value
    clusters: int = 7  # for the k-means family; density models find their own number
    seed: int = 0
    model_params: Mapping[str, Any] = field(default_factory=dict)  # overrides of the defaults
    warmup: int = 200  # first samples only fit the scaler, then are learned in one go
    scaler_window: int = 20_000  # the scaler forgets with this effective sample size
    snapshot_every: int = 1000  # publish after this many new samples ...
    snapshot_every_s: float = 3600.0  # ... or this long after the last snapshot ...
    snapshot_min: int = 50  # ... if at least this many samples arrived since
    # scaled units (the generation's standard deviations): farther centres are different
    # segments; also how near a retired segment's last centre a new centre must be to take
    # its id back. 3.0 chosen by bench/quality.py --horizon (2.0: up to 4 new ids a quarter
    # on shop, where k-means merged and re-split groups; 3.0: at most 2)
    match_distance: float = 3.0
    min_share: float = 0.02  # new clusters holding less of the recent sample are not segments
    sample_size: int = 1000  # recent samples kept for profiles and segment sizes
    # the k-means family: 0 < clusters_min <= clusters_max: k chosen from the data in this
    # range at each generation (models.choose_k); 0: `clusters` fixed
    clusters_min: int = 3
    clusters_max: int = 10
    # a feature's mean moved by this many generation stds: new generation. 3.0 chosen by the
    # benchmarks: at 1.0 a young population (whose tenure and counts all grow) started 16
    # generations in 60 days, and each one could re-choose k (60-day stability 96.7 %)
    drift: float = 3.0
    drift_spread: float = 2.0  # ... or its spread by this factor
    predictions: bool = True  # fit BG/NBD and Gamma-Gamma too (SEGMENTER_PREDICTIONS)
    # > 0: a version moves at most this share of the recent sample to another segment; the
    # published centres go toward the model's a step at a time (transition.step). 0: the
    # model's centres are published as they are. 0.015 chosen by bench/quality.py --horizon
    # (docs/segmentation.md, "Gradual transitions")
    move_budget: float = 0.015


def learn_due(last_sampled_at: float | None, now: float, every_s: float = 86400.0) -> bool:
    """Whether a customer last sampled at ``last_sampled_at`` should be sampled at ``now``."""
    return last_sampled_at is None or now - last_sampled_at >= every_s


class Trainer:
    """Owns the model, the running scaler, stable-id bookkeeping and the profile sample."""

    def __init__(self, settings: TrainerSettings = TrainerSettings()) -> None:
        self.settings = settings
        self.model: Clusterer = self._fresh_model()
        self.generation = 0
        self.scaling: Scaling | None = None  # the generation's; None before the first
        self.scaler = RunningScaler(window=settings.scaler_window)
        self.n_learned = 0
        self.since_snapshot = 0
        self.last_snapshot_at: float | None = None
        self.version = 0
        self.next_id = 1
        self.last: dict[str, Any] | None = None  # the latest snapshot published
        # retired id -> its last centre (unscaled), so a group that comes back gets it back
        self.retired: dict[str, list[float]] = {}
        self._warmup: list[np.ndarray] = []
        self._sample: deque[tuple[np.ndarray, str | None, str | None]] = deque(
            maxlen=settings.sample_size)
        self.predictive = PredictiveTrainer() if settings.predictions else None
        self._fit_unpublished = False  # a new fit waits for the next snapshot
        # with a move budget: the model's centres at the last snapshot (what ids are matched
        # against), and every segment in transit toward them (unscaled; published or not)
        self.destination: dict[str, list[float]] | None = None
        self.positions: dict[str, list[float]] | None = None
        self.in_transit = False  # the last snapshot stopped short of the model's centres
        self.since_step = 0  # samples since the last snapshot of either kind
        self.returning: set[str] = set()  # retired ids taken back, not yet published again

    # --- learning -----------------------------------------------------------------------
    def learn(self, feats: Mapping[str, Any]) -> None:
        """Learn from one customer's features (a dict from ``state.features.features``,
        with the purchase summary of :func:`stream_app.core.predictive.training.sample_fields`
        for a customer with an order)."""
        if self.predictive is not None:
            self.predictive.observe(feats)
        self.learn_vector(vectorize(feats), feats.get("preferred_channel"),
                          feats.get("top_category"))

    def learn_vector(self, x: np.ndarray, channel: str | None = None,
                     category: str | None = None) -> None:
        """Learn from an unscaled model vector (:func:`.vectorize.vectorize` output)."""
        self.scaler.learn(x)
        self._sample.append((x, channel, category))
        self.n_learned += 1
        self.since_snapshot += 1
        self.since_step += 1
        if self.scaling is None:
            # Scaling from a handful of samples would be arbitrary; hold the first ones back
            # until there are enough, then fit the first generation's scaling on them.
            if self.n_learned < self.settings.warmup:
                self._warmup.append(x)
                return
            self._warmup = []
            self.new_generation()
            return
        self._learn_scaled(self.scaling.scale(x))

    # --- generations ----------------------------------------------------------------------
    def _fresh_model(self) -> Clusterer:
        s = self.settings
        params = dict(s.model_params)
        if s.clusters_max and s.algorithm == "kmeans":
            params.setdefault("k_min", s.clusters_min)
            params.setdefault("k_max", s.clusters_max)
        return make_model(s.algorithm, FEATURES, clusters=s.clusters, seed=s.seed, **params)

    def new_generation(self) -> None:
        """Fit the scaling on the recent sample. A model that can move into the new space
        (k-means: ``regenerate``) does; any other is replaced by a fresh one that learns the
        recent sample in the new scaling."""
        sample = np.array([x for x, _, _ in self._sample])
        old, new = self.scaling, fit_scaling(sample)
        self.scaling = new
        self.generation += 1
        regenerate = getattr(self.model, "regenerate", None)
        if old is not None and regenerate is not None:
            regenerate(lambda z: new.scale(old.unscale(z)))
            return
        self.model = self._fresh_model()
        for x in sample:
            self._learn_scaled(new.scale(x))

    def drifted(self) -> bool:
        """Whether the recent sample has moved away from the generation's scaling."""
        if self.scaling is None or not self._sample:
            return False
        now = fit_scaling(np.array([x for x, _, _ in self._sample]))
        old = self.scaling
        if not np.array_equal(now.weights, old.weights):
            return True
        use = old.weights > 0
        moved = np.abs(now.mean - old.mean) / old.std
        spread = np.abs(np.log(now.std / old.std))
        s = self.settings
        return bool(np.any(moved[use] > s.drift)
                    or np.any(spread[use] > np.log(s.drift_spread)))

    def _learn_scaled(self, z: np.ndarray) -> None:
        self.model.learn_one(dict(zip(FEATURES, z.tolist(), strict=True)))

    # --- publishing ---------------------------------------------------------------------
    def maybe_snapshot(self, now: float) -> dict[str, Any] | None:
        """A new snapshot if one is due and the model has segments, else ``None``."""
        s = self.settings
        if self.predictive is not None and self.predictive.maybe_fit(float(now)):
            self._fit_unpublished = True
        if self.since_snapshot == 0 and not self._fit_unpublished:
            return None
        late = self.last_snapshot_at is None or now - self.last_snapshot_at >= s.snapshot_every_s
        due = self.since_snapshot >= s.snapshot_every or self._fit_unpublished or (
            late and self.since_snapshot >= s.snapshot_min)
        if not due and self.in_transit and self.since_step >= s.snapshot_min:
            # A transition under way (move_budget) takes its next step toward the same
            # centres at the shorter cadence: each step is bounded by the budget, and the
            # segments reach the model's sooner. The model, its scaling and the ids are
            # looked at again at the usual cadence only.
            step = self._snapshot(float(now), toward_destination=True)
            if step is not None:
                self.since_step = 0
            return step
        if not due or self.scaling is None:
            return None
        if self.drifted():
            self.new_generation()
        snapshot = self._snapshot(float(now))
        if snapshot is not None:
            self.since_snapshot = self.since_step = 0
            self.last_snapshot_at = float(now)
            self._fit_unpublished = False
        return snapshot

    def _snapshot(self, now: float, toward_destination: bool = False) -> dict[str, Any] | None:
        s = self.settings
        scaling = self.scaling
        assert scaling is not None
        sample = np.array([x for x, _, _ in self._sample])
        if toward_destination:
            if self.destination is None or self.scaling is None:
                return None
            target = {sid: scaling.scale(np.array(c)) for sid, c in self.destination.items()}
            return self._publish(now, target, sample, returned=())
        raw = self.model.centres()
        if not raw:
            return None
        raw_ids = sorted(raw)
        centres = np.array([raw[r] for r in raw_ids])
        # Clusters holding (almost) none of the recent customers are not segments: dead
        # k-means centres, density noise. A segment already published survives down to half
        # the share a new one needs, so one hovering at the threshold does not blink.
        share = dict(zip(raw_ids, np.bincount(profiles.assign(scaling.scale(sample), centres),
                                              minlength=len(raw_ids)) / len(sample),
                         strict=True))
        published = self._last_centres()
        last = published
        if s.move_budget > 0 and self.destination is not None:
            last = {sid: np.array(c) for sid, c in self.destination.items()}
        previous = {sid: scaling.scale(c) for sid, c in last.items()}  # for matching
        retired = {sid: scaling.scale(np.array(c)) for sid, c in self.retired.items()}
        candidates = {r: c for r, c in zip(raw_ids, centres, strict=True)
                      if share[r] >= s.min_share / 2}
        matching = match(previous, candidates, self.next_id, max_distance=s.match_distance,
                         retired=retired)
        kept = {r: c for r, c in candidates.items()
                if matching.ids[r] in previous or share[r] >= s.min_share}
        if not kept:
            return None
        if len(kept) < len(candidates):  # number fresh ids without the dropped clusters
            matching = match(previous, kept, self.next_id, max_distance=s.match_distance,
                             retired=retired)
        self.next_id = matching.next_id
        self._remember_retired(matching, last)
        order = sorted(kept, key=lambda r: id_order(matching.ids[r]))
        ids = [matching.ids[r] for r in order]
        kept_centres = np.array([kept[r] for r in order])
        target = dict(zip(ids, kept_centres, strict=True))
        return self._publish(now, target, sample, matching.returned)

    def _publish(self, now: float, target: dict[str, np.ndarray], sample: np.ndarray,
                 returned: Sequence[str]) -> dict[str, Any]:
        """Publish ``target`` (id -> scaled centre, in id order), or with a move budget the
        next step toward it."""
        s = self.settings
        scaling = self.scaling
        assert scaling is not None
        ids = list(target)
        kept_centres = np.array([target[sid] for sid in ids])
        before = {sid: scaling.scale(c) for sid, c in self._last_centres().items()}
        dropped = [sid for sid in before if sid not in target]
        if s.move_budget > 0:
            ids, kept_centres, dropped = self._step(target, before, sample, scaling)
        current = {sid: target.get(sid, c) for sid, c in zip(ids, kept_centres, strict=True)}
        # an id taken back is reported as returned when it is published again, which a
        # transition may leave to a later step
        self.returning.update(sid for sid in returned if sid not in before)
        self.returning.intersection_update(target)
        back = [sid for sid in current if sid not in before and sid in self.returning]
        self.returning.difference_update(back)
        changes = set_changes(before, current, max_distance=s.match_distance, returned=back)
        described = profiles.build_profiles(
            ids, kept_centres, scaling, sample,
            [c for _, c, _ in self._sample], [c for _, _, c in self._sample])
        self.version += 1
        self.last = {
            "format": FORMAT,
            "segmentation": SEGMENTATION,
            "version": self.version,
            "algorithm": s.algorithm,
            "params": dict(self.model.params),
            "created_at": now,
            "n_learned": self.n_learned,
            "features": list(FEATURES),
            "scaling": scaling.to_json(),
            "generation": self.generation,
            "retired": dropped,
            "set_changes": changes,
            "segments": [
                {"id": sid, "name": described[sid]["name"], "centre": c.tolist(),
                 "profile": described[sid]["profile"]}
                for sid, c in zip(ids, kept_centres, strict=True)
            ],
            "predictive": None if self.predictive is None else self.predictive.published(),
        }
        return self.last

    def _step(self, target: dict[str, np.ndarray], before: dict[str, np.ndarray],
              sample: np.ndarray, scaling: Scaling
              ) -> tuple[list[str], np.ndarray, list[str]]:
        """One step of the published centres toward ``target`` (the model's, matched; scaled)
        within the move budget: the ids and centres to publish, and the ids dropped."""
        start = dict(before)
        if self.positions is not None:
            start = {sid: scaling.scale(np.array(c)) for sid, c in self.positions.items()}
            start.update(before)  # what workers hold wins over a stale record
        z = scaling.scale(sample)
        held: list[str | None] | None = None
        if self.last is not None and self.last["segments"] and len(sample):
            # what workers hold: the last snapshot's nearest segment, in its own scaling
            old = Scaling.from_json(self.last["scaling"])
            old_ids = [seg["id"] for seg in self.last["segments"]]
            old_centres = np.array([seg["centre"] for seg in self.last["segments"]])
            held = [old_ids[i] for i in profiles.assign(old.scale(sample), old_centres)]
            if self.last["scaling"] != scaling.to_json():
                start.update(self._recentred(start, z, held))
        moved = transition.step(start, target, z, self.settings.move_budget, held)
        publish = sorted((sid for sid, share in moved.held.items()
                          if share > 0 or (sid in before and sid in target)), key=id_order)
        # out of transit: what left the target and holds nobody
        self.positions = {sid: scaling.unscale(c).tolist() for sid, c in moved.positions.items()
                          if sid in target or moved.held[sid] > 0}
        self.destination = {sid: scaling.unscale(c).tolist() for sid, c in target.items()}
        self.in_transit = moved.fraction < 1.0
        if not publish:  # nothing held yet anywhere: the target as it is
            publish = sorted(target, key=id_order)
            moved.positions.update(target)
        centres = np.array([moved.positions[sid] for sid in publish])
        return publish, centres, [sid for sid in before if sid not in publish]

    @staticmethod
    def _recentred(start: Mapping[str, np.ndarray], z: np.ndarray, held: list[str | None]
                   ) -> dict[str, np.ndarray]:
        """After a new scaling the published centres, the same in real units, draw other
        borders in the new space: each published segment's members would be split
        differently. The centres of each segment's members in the new space keep more of
        them; used when they do (fewer of the sample change segment at the start)."""
        labels = np.array([h if h is not None else "" for h in held])
        members = {sid: z[labels == sid] for sid in start}
        recentred = {sid: m.mean(axis=0) if len(m) else start[sid]
                     for sid, m in members.items()}

        def moves(centres: Mapping[str, np.ndarray]) -> int:
            ids = list(centres)
            near = profiles.assign(z, np.array([centres[i] for i in ids]))
            return int(sum(ids[n] != h for n, h in zip(near, labels, strict=True) if h))
        return recentred if moves(recentred) < moves(start) else {}

    def _remember_retired(self, matching: Matching, last: Mapping[str, np.ndarray]) -> None:
        """Keep the last centre of each id this matching retired (``last``: the last
        snapshot's centres in real units), the latest ``RETIRED_KEPT``; forget those it
        brought back."""
        for sid in matching.returned:
            self.retired.pop(sid, None)
        for sid in matching.retired:
            self.retired.pop(sid, None)  # re-inserted last: the newest retired
            self.retired[sid] = last[sid].tolist()
        while len(self.retired) > RETIRED_KEPT:
            self.retired.pop(next(iter(self.retired)))

    def _last_centres(self) -> dict[str, np.ndarray]:
        """The last snapshot's centres in real (unscaled) units."""
        if self.last is None:
            return {}
        before = Scaling.from_json(self.last["scaling"])
        return {seg["id"]: before.unscale(np.array(seg["centre"]))
                for seg in self.last["segments"]}

    # --- checkpointing ------------------------------------------------------------------
    def to_json(self) -> bytes:
        """Everything needed to resume: settings, model, scaler, samples, counters."""
        settings = asdict(self.settings)
        settings["model_params"] = dict(self.settings.model_params)
        return orjson.dumps({
            "format": FORMAT,
            "settings": settings,
            "model": self.model.to_snapshot(),
            "scaler": self.scaler.to_json(),
            "warmup": [x.tolist() for x in self._warmup],
            "sample": [[x.tolist(), ch, cat] for x, ch, cat in self._sample],
            "n_learned": self.n_learned,
            "since_snapshot": self.since_snapshot,
            "last_snapshot_at": self.last_snapshot_at,
            "version": self.version,
            "next_id": self.next_id,
            "last": self.last,
            "retired": self.retired,
            "generation": self.generation,
            "scaling": None if self.scaling is None else self.scaling.to_json(),
            "predictive": None if self.predictive is None else self.predictive.to_json(),
            "destination": self.destination,
            "positions": self.positions,
            "in_transit": self.in_transit,
            "returning": sorted(self.returning, key=id_order),
        })

    def catch_up(self, snapshot: Mapping[str, Any]) -> None:
        """Never reissue what a published ``snapshot`` used: its version, or a segment id
        it named (the checkpoint is written after the snapshot, so a crash between the two
        leaves the checkpoint one version behind)."""
        self.version = max(self.version, int(snapshot.get("version", 0)))
        used = [seg.get("id") for seg in snapshot.get("segments", ())]
        used += list(snapshot.get("retired", ()))
        numbers = [int(sid[len(PREFIX):]) for sid in used
                   if isinstance(sid, str) and sid.startswith(PREFIX) and sid[len(PREFIX):].isdigit()]
        if numbers:
            self.next_id = max(self.next_id, max(numbers) + 1)
        if self.predictive is not None and self.predictive.bgnbd is None:
            self.predictive.restore(snapshot.get("predictive"))  # keep what workers use

    @classmethod
    def from_json(cls, data: bytes | str) -> Trainer:
        doc = orjson.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unsupported trainer checkpoint format {doc.get('format')!r}")
        out = cls(TrainerSettings(**doc["settings"]))
        out.model = model_from_snapshot(doc["model"])
        out.scaler = RunningScaler.from_json(doc["scaler"])
        out._warmup = [np.array(x) for x in doc["warmup"]]
        out._sample.extend((np.array(x), ch, cat) for x, ch, cat in doc["sample"])
        out.n_learned = doc["n_learned"]
        out.since_snapshot = doc["since_snapshot"]
        out.last_snapshot_at = doc["last_snapshot_at"]
        out.version = doc["version"]
        out.next_id = doc["next_id"]
        out.last = doc["last"]
        out.retired = {str(k): [float(v) for v in c] for k, c in doc.get("retired", {}).items()}
        out.generation = int(doc.get("generation", 0))
        out.in_transit = bool(doc.get("in_transit", False))
        out.returning = {str(sid) for sid in doc.get("returning", ())}
        for name in ("destination", "positions"):
            value = doc.get(name)
            setattr(out, name, None if value is None else
                    {str(k): [float(v) for v in c] for k, c in value.items()})
        if out.predictive is not None:
            out.predictive.restore(doc.get("predictive"))
        if doc.get("scaling") is not None:
            out.scaling = Scaling.from_json(doc["scaling"])
        elif out.n_learned >= out.settings.warmup and out._sample:
            out.new_generation()  # a checkpoint from before generations: start the first
        return out
