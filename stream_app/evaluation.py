"""A history through the pure pipeline, and how the behavioural segments behaved on it.

``segmenter evaluate FILE`` and ``bench/quality.py --horizon`` both run this: events go through
the worker's own :class:`~stream_app.core.processing.Step` (decode, identity, state, features,
segmentation, change events) on one partition, in micro-batches, with a time tick of every
customer each ``tick_s`` of event time; the step's training samples feed one
:class:`~stream_app.core.segmentation.clustering.Trainer`, and each snapshot it publishes is loaded
at once, as the model follower would. No Kafka, no clock: the trainer publishes by sample
count (a replay outruns its hourly cadence), so a run is deterministic.

What it measures (:class:`Result`):

* **versions**: per model version, its event time, the ids it minted, and *stability*, of
  the customers holding a segment, features frozen (so only the model moved): *raw*, the
  share whose nearest segment id is the same under the new version as under the previous
  one; *served*, the share that still hold the segment they held, through the hysteresis
  every worker applies, evaluated ``confirmations`` times (so a confirmation only delays a
  move, it cannot hide one). Served is what customers and audiences see.
* **id churn**: new segment ids per quarter of event time (from the first event).
* **changes per customer per day**: segment moves (not first assignments) over the days each
  customer held a segment, events, ticks and re-scoring included.
* **agreement**: adjusted Rand index of the final segments against batch k-means (Lloyd,
  k-means++, best of 10) on the same vectors and scaling with the same k; against batch
  k-means on recency, frequency and monetary value alone (log scale, standardised); and,
  when the data comes with it, against the truth (customers with ``truth_min_tenure_days``
  of history: a customer seen for a week cannot be told apart by behaviour yet).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from .core.processing import Message, Step, StepResult
from .core.segmentation.clustering import BehaviorSegmentation, Hysteresis, Trainer, TrainerSettings
from .core.segmentation.clustering.models import best_kmeans
from .core.segmentation.clustering.vectorize import Scaling, vectorize_many
from .core.state.customer import CustomerState
from .core.state.features import features

DAY = 86400.0
QUARTER = 91.31 * DAY
INPUT, ROUTED = "evaluate-input", "evaluate-routed"


@dataclass(frozen=True, slots=True)
class EvaluationSettings:
    trainer: TrainerSettings = TrainerSettings()
    min_learned: int = 1000
    hysteresis: Hysteresis = Hysteresis()
    tick_s: float = DAY  # event time between re-evaluations of every customer
    sample_every_s: float = DAY  # at most one training sample per customer per this
    batch: int = 500  # records per step batch
    rescore: bool = True  # re-score every customer when a new model version is loaded
    truth_min_tenure_days: float = 60.0
    seed: int = 0


def trainer_settings(settings: Any) -> TrainerSettings:
    """The trainer a worker with these :class:`~stream_app.config.Settings` would run."""
    return TrainerSettings(algorithm=settings.cluster_model.value, clusters=settings.clusters,
                           clusters_min=settings.clusters_min,
                           clusters_max=settings.clusters_max,
                           snapshot_every=settings.model_snapshot_every,
                           snapshot_every_s=settings.model_snapshot_every_s,
                           move_budget=settings.model_move_budget,
                           predictions=settings.predictions)


@dataclass(slots=True)
class Version:
    version: int
    at: float  # event time it was loaded
    ids: tuple[str, ...]
    new: tuple[str, ...]
    stable: float | None  # raw (nearest id); None: no customer held a segment yet
    set_changes: tuple[dict[str, Any], ...] = ()
    stable_served: float | None = None  # through the hysteresis; None as ``stable``


@dataclass
class Result:
    customers: int
    events: int
    start: float
    end: float
    run_s: float
    versions: list[Version]
    changes: int
    exposure_days: float
    members: dict[str, str]  # customer -> final segment
    segments: list[dict[str, Any]]  # final snapshot's segments, with member counts
    ari_batch: float | None
    ari_rfm: float | None
    ari_truth: float | None
    first_ready_at: float | None
    unassigned_after_first_ready: int  # customers with data left without a segment then
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_per_customer_day(self) -> float | None:
        return self.changes / self.exposure_days if self.exposure_days else None

    def new_ids_per_quarter(self) -> list[int]:
        quarters = max(math.ceil((self.end - self.start) / QUARTER), 1)
        out = [0] * quarters
        for v in self.versions:
            out[min(int((v.at - self.start) // QUARTER), quarters - 1)] += len(v.new)
        return out

    def stability(self) -> list[float]:
        """Raw stability per version transition (nearest id, features frozen)."""
        return [v.stable for v in self.versions if v.stable is not None]

    def served_stability(self) -> list[float]:
        """Served stability per version transition (segment held, through the hysteresis)."""
        return [v.stable_served for v in self.versions if v.stable_served is not None]


class Evaluation:
    """Feed events (:meth:`feed`), then :meth:`finish`. One model, one partition."""

    def __init__(self, settings: EvaluationSettings = EvaluationSettings(),
                 truth: Mapping[str, str] | None = None) -> None:
        self.s = settings
        self.truth = truth
        self.seg = BehaviorSegmentation(settings.hysteresis, settings.min_learned)
        self.trainer = Trainer(settings.trainer)
        self.step = Step(input_topic=INPUT, routed_topic=ROUTED, partitions=1,
                         segmentations=[self.seg], sample_every_s=settings.sample_every_s)
        self.customers: dict[str, Any] = {}
        self.versions: list[Version] = []
        self.changes = 0
        self.assigned_at: dict[str, float] = {}
        self.events = 0
        self.start: float | None = None
        self.clock = 0.0
        self.next_tick: float | None = None
        self.first_ready_at: float | None = None
        self.unassigned_at_ready = 0
        self._offsets = {INPUT: 0, ROUTED: 0}
        self._pending: list[Message] = []
        self._routed: list[Message] = []
        self._started = time.perf_counter()
        self.wall = time.time()  # for the step's checks of event time against the clock
        self.dead_letters = 0

    # --- input --------------------------------------------------------------------------
    def feed(self, events: Iterable[Mapping[str, Any]],
             progress: Callable[[int], None] | None = None) -> None:
        for event in events:
            ts = _event_time(event)
            if ts is not None:
                if self.start is None or ts < self.start:
                    self.start = ts
                if self.next_tick is None:
                    self.next_tick = (math.floor(ts / self.s.tick_s) + 1) * self.s.tick_s
                if self.next_tick is not None and ts >= self.next_tick:
                    # the tick falls before this event: run what came before it, then tick
                    self._run_batch()
                    self.clock = max(self.clock, ts)
                    self._ticks()
            key = event.get("userId") or event.get("anonymousId")
            self._pending.append(self._message(INPUT, str(key).encode() if key else None,
                                               orjson.dumps(event)))
            self.events += 1
            if len(self._pending) >= self.s.batch:
                self._run_batch()
                if progress is not None:
                    progress(self.events)
        self._run_batch()
        if progress is not None:
            progress(self.events)

    def _message(self, topic: str, key: bytes | None, value: bytes) -> Message:
        offset = self._offsets[topic]
        self._offsets[topic] += 1
        return Message(topic, 0, offset, key, value, self.wall)

    def _run_batch(self) -> None:
        while self._pending or self._routed:
            msgs, self._pending = self._routed + self._pending, []
            self._routed = []
            result = self.step.run(0, msgs, self.customers, self.wall)
            self.dead_letters += len(result.dead_letters)
            for key, _, value in result.routed:
                self._routed.append(self._message(ROUTED, key.encode(), value))
            if result.max_event_ts:
                if self.start is None:
                    self.start = result.max_event_ts
                self.clock = max(self.clock, result.max_event_ts)
            self._absorb(result, self.clock)
            if self.next_tick is None:
                self._ticks()

    def _ticks(self) -> None:
        """The ticks due up to the clock (the latest event time applied)."""
        if self.start is None:
            return
        if self.next_tick is None:
            self.next_tick = (math.floor(self.start / self.s.tick_s) + 1) * self.s.tick_s
        while self.next_tick <= self.clock:
            self.tick(self.next_tick)
            self.next_tick += self.s.tick_s

    def tick(self, now: float) -> None:
        """Re-evaluate every customer at event time ``now`` (the worker's time tick)."""
        if not self.step.start_tick(0, self.customers, now):
            return
        keys = [k for k, v in self.customers.items() if type(v) is CustomerState]
        self._absorb(self.step.tick(self.customers, keys, now, self.wall, math.inf), now)

    # --- outputs of the step --------------------------------------------------------------
    def _absorb(self, result: StepResult, now: float) -> None:
        for change in result.changes:
            r = change.record
            if r.segmentation != self.seg.name:
                continue
            if r.previous_segment is not None:
                self.changes += 1
            if r.segment is not None:
                self.assigned_at.setdefault(r.customer_id, change.event_ts)
        for feats in result.samples:
            self.trainer.learn(feats)
            snapshot = self.trainer.maybe_snapshot(0.0)
            if snapshot is not None:
                self._load(snapshot, now)

    def _load(self, snapshot: dict[str, Any], now: float) -> None:
        seen = {sid for v in self.versions for sid in v.ids}
        holders = [(k, st) for k, st in self._states() if self.seg.name in st.segments]
        frozen = [features(st, _eval_time(st), self.step.cfg) for _, st in holders]
        before = self.seg.score_many(frozen) if holders and self.seg.ready else None
        self.seg.load(snapshot)
        after = self.seg.score_many(frozen) if before is not None else None
        stable = served = None
        if before is not None and after is not None:
            same = sum(a == b for a, b in zip(before.nearest(), after.nearest(), strict=True))
            stable = same / len(holders)
            served = self._served_kept([st for _, st in holders], frozen, now)
        ids = tuple(seg["id"] for seg in snapshot["segments"])
        self.versions.append(Version(int(snapshot["version"]), now, ids,
                                     tuple(i for i in ids if i not in seen), stable,
                                     tuple(snapshot.get("set_changes", ())), served))
        if self.s.rescore and self.seg.ready:
            self._absorb(self.step.rescore(self.customers, list(self.customers), [self.seg],
                                           self.wall), now)
        if self.seg.ready and self.first_ready_at is None:
            self.first_ready_at = now
            self.unassigned_at_ready = sum(1 for _, st in self._states()
                                           if self.seg.name not in st.segments)

    def _served_kept(self, holders: list[CustomerState], frozen: list[dict[str, Any]],
                     now: float) -> float:
        """Share of ``holders`` that keep their segment under the model just loaded (see
        :func:`kept_through_hysteresis`; the re-scoring that follows applies the moves)."""
        auxes = [st.segment_aux.get(self.seg.name) for st in holders]
        return kept_through_hysteresis(self.seg, holders, frozen, auxes, now) / len(holders)

    def _states(self) -> list[tuple[str, CustomerState]]:
        return [(k, v) for k, v in self.customers.items() if type(v) is CustomerState]

    # --- results --------------------------------------------------------------------------
    def finish(self) -> Result:
        self._run_batch()
        self._ticks()
        end = self.clock
        self.tick(end + 1.0)  # a last evaluation of everyone at the end of the history
        states = dict(self._states())
        members = {st.customer_id: st.segments[self.seg.name] for st in states.values()
                   if self.seg.name in st.segments}
        exposure = sum((end - at) / DAY for at in self.assigned_at.values() if at <= end)
        order = sorted(members)
        by_id = {st.customer_id: st for st in states.values()}
        final = [features(by_id[c], end, self.step.cfg) for c in order]
        labels = [members[c] for c in order]
        doc = self.trainer.last
        ari_batch = ari_rfm = ari_truth = None
        k = len(set(labels))
        if doc is not None and k >= 2:
            scaling = Scaling.from_json(doc["scaling"])
            rng = np.random.default_rng(self.s.seed)
            z = scaling.scale(vectorize_many(final))
            ari_batch = adjusted_rand(labels, kmeans_labels(z, k, rng))
            ari_rfm = adjusted_rand(labels, kmeans_labels(rfm(final), k, rng))
        if self.truth is not None and labels:
            old = [i for i, c in enumerate(order) if c in self.truth
                   and final[i]["tenure_days"] >= self.s.truth_min_tenure_days]
            if old:
                ari_truth = adjusted_rand([labels[i] for i in old],
                                          [self.truth[order[i]] for i in old])
        sizes: dict[str, int] = {}
        for lab in labels:
            sizes[lab] = sizes.get(lab, 0) + 1
        segments = [{"id": seg["id"], "name": seg["name"], "members": sizes.get(seg["id"], 0),
                     "typical": seg["profile"]["typical"]}
                    for seg in (doc["segments"] if doc else [])]
        return Result(len(states), self.events, self.start or 0.0, end,
                      time.perf_counter() - self._started, self.versions, self.changes,
                      exposure, members, segments, ari_batch, ari_rfm, ari_truth,
                      self.first_ready_at, self.unassigned_at_ready)


def kept_through_hysteresis(seg: BehaviorSegmentation, states: list[CustomerState],
                            feats: list[dict[str, Any]], auxes: list[Any], now: float = 0.0
                            ) -> int:
    """How many of ``states`` keep the segment they hold under ``seg``'s model, features
    ``feats`` frozen, after as many evaluations as the hysteresis needs to confirm a move (so
    a confirmation only delays a move, it cannot hide one). The states are read, not changed."""
    decisions = []
    for _ in range(seg.hysteresis.confirmations):
        decisions = seg.evaluate_many(states, feats, now, auxes)
        auxes = [d.aux for d in decisions]
    return sum(d.segment == st.segments.get(seg.name)
               for d, st in zip(decisions, states, strict=True))


def _event_time(event: Mapping[str, Any]) -> float | None:
    """An event's time in epoch seconds, for placing ticks (the step parses it again, fully;
    an unreadable one is left to it)."""
    text = event.get("timestamp") or event.get("originalTimestamp")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _eval_time(state: CustomerState) -> float:
    return max(state.last_seen, state.evaluated_at)


def kmeans_labels(z: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Batch k-means labels (k-means++ and Lloyd, best of 10 by inertia)."""
    centres, _ = best_kmeans(z, k, 10, rng)
    d2 = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return np.argmin(d2, axis=1).tolist()


def rfm(feats: list[dict[str, Any]]) -> np.ndarray:
    """Recency (capped at 365 days), frequency and monetary value: log1p, standardised."""
    x = np.log1p(np.array([[min(f["recency_days"], 365.0), f["orders"], max(f["revenue"], 0.0)]
                           for f in feats], dtype=np.float64))
    return (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)


def adjusted_rand(a: Iterable[Any], b: Iterable[Any]) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings of the same items."""
    _, ia = np.unique(np.asarray(list(a), dtype=object).astype(str), return_inverse=True)
    _, ib = np.unique(np.asarray(list(b), dtype=object).astype(str), return_inverse=True)
    n = len(ia)
    if n < 2:
        return 1.0
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)
