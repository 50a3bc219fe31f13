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

Snapshot fields (``format`` 1)::

    format, segmentation ("behavior"), version (1, 2, ...), algorithm, params,
    created_at (the ``now`` given to maybe_snapshot), n_learned, features (names, in order),
    scaling {mean, std} (of the transformed features), retired (ids dropped in this version),
    segments: [{id, name, centre (scaled, in features order), profile}]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

from . import profiles
from .models import Clusterer, make_model, model_from_snapshot
from .stable import PREFIX, id_order, match
from .vectorize import FEATURES, RunningScaler, Scaling, vectorize

FORMAT = 1
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
    match_distance: float = 1.0  # scaled units: farther centres are different segments
    min_share: float = 0.02  # new clusters holding less of the recent sample are not segments
    sample_size: int = 1000  # recent samples kept for profiles and segment sizes


def learn_due(last_sampled_at: float | None, now: float, every_s: float = 86400.0) -> bool:
    """Whether a customer last sampled at ``last_sampled_at`` should be sampled at ``now``."""
    return last_sampled_at is None or now - last_sampled_at >= every_s


class Trainer:
    """Owns the model, the running scaler, stable-id bookkeeping and the profile sample."""

    def __init__(self, settings: TrainerSettings = TrainerSettings()) -> None:
        self.settings = settings
        self.model: Clusterer = make_model(settings.algorithm, FEATURES,
                                           clusters=settings.clusters, seed=settings.seed,
                                           **settings.model_params)
        self.scaler = RunningScaler(window=settings.scaler_window)
        self.n_learned = 0
        self.since_snapshot = 0
        self.last_snapshot_at: float | None = None
        self.version = 0
        self.next_id = 1
        self.last: dict[str, Any] | None = None  # the latest snapshot published
        self._warmup: list[np.ndarray] = []
        self._sample: deque[tuple[np.ndarray, str | None, str | None]] = deque(
            maxlen=settings.sample_size)

    # --- learning -----------------------------------------------------------------------
    def learn(self, feats: Mapping[str, Any]) -> None:
        """Learn from one customer's features (a dict from ``state.features.features``)."""
        self.learn_vector(vectorize(feats), feats.get("preferred_channel"),
                          feats.get("top_category"))

    def learn_vector(self, x: np.ndarray, channel: str | None = None,
                     category: str | None = None) -> None:
        """Learn from an unscaled model vector (:func:`.vectorize.vectorize` output)."""
        self.scaler.learn(x)
        self._sample.append((x, channel, category))
        self.n_learned += 1
        self.since_snapshot += 1
        if self.n_learned <= self.settings.warmup:
            # Scaling from a handful of samples would be arbitrary; hold the first ones back
            # until the scaler has seen enough, then learn them all with that scaling.
            self._warmup.append(x)
            if self.n_learned == self.settings.warmup:
                scaling = self.scaler.frozen()
                for held in self._warmup:
                    self._learn_scaled(scaling.scale(held))
                self._warmup = []
            return
        self._learn_scaled(self.scaler.frozen().scale(x))

    def _learn_scaled(self, z: np.ndarray) -> None:
        self.model.learn_one(dict(zip(FEATURES, z.tolist(), strict=True)))

    # --- publishing ---------------------------------------------------------------------
    def maybe_snapshot(self, now: float) -> dict[str, Any] | None:
        """A new snapshot if one is due and the model has segments, else ``None``."""
        s = self.settings
        if self.since_snapshot == 0:
            return None
        late = self.last_snapshot_at is None or now - self.last_snapshot_at >= s.snapshot_every_s
        due = self.since_snapshot >= s.snapshot_every or (
            late and self.since_snapshot >= s.snapshot_min)
        if not due or self.n_learned < s.warmup:
            return None
        snapshot = self._snapshot(float(now))
        if snapshot is not None:
            self.since_snapshot = 0
            self.last_snapshot_at = float(now)
        return snapshot

    def _snapshot(self, now: float) -> dict[str, Any] | None:
        s = self.settings
        raw = self.model.centres()
        if not raw:
            return None
        scaling = self.scaler.frozen()
        sample = np.array([x for x, _, _ in self._sample])
        raw_ids = sorted(raw)
        centres = np.array([raw[r] for r in raw_ids])
        # Clusters holding (almost) none of the recent customers are not segments: dead
        # k-means centres, density noise. A segment already published survives down to half
        # the share a new one needs, so one hovering at the threshold does not blink.
        share = dict(zip(raw_ids, np.bincount(profiles.assign(scaling.scale(sample), centres),
                                              minlength=len(raw_ids)) / len(sample),
                         strict=True))
        previous = self._previous_centres(scaling)
        candidates = {r: c for r, c in zip(raw_ids, centres, strict=True)
                      if share[r] >= s.min_share / 2}
        matching = match(previous, candidates, self.next_id, max_distance=s.match_distance)
        kept = {r: c for r, c in candidates.items()
                if matching.ids[r] in previous or share[r] >= s.min_share}
        if not kept:
            return None
        if len(kept) < len(candidates):  # number fresh ids without the dropped clusters
            matching = match(previous, kept, self.next_id, max_distance=s.match_distance)
        self.next_id = matching.next_id
        order = sorted(kept, key=lambda r: id_order(matching.ids[r]))
        ids = [matching.ids[r] for r in order]
        kept_centres = np.array([kept[r] for r in order])
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
            "retired": list(matching.retired),
            "segments": [
                {"id": sid, "name": described[sid]["name"], "centre": c.tolist(),
                 "profile": described[sid]["profile"]}
                for sid, c in zip(ids, kept_centres, strict=True)
            ],
        }
        return self.last

    def _previous_centres(self, scaling: Scaling) -> dict[str, np.ndarray]:
        """The last snapshot's centres, moved into the current scaling for matching."""
        if self.last is None:
            return {}
        before = Scaling.from_json(self.last["scaling"])
        return {seg["id"]: scaling.scale(before.unscale(np.array(seg["centre"])))
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
        return out
