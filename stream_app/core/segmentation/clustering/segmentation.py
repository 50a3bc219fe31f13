"""``behavior``: the learned segmentation, scored against the latest model snapshot.

Scoring is nearest centre in the snapshot's scaled space: it needs nothing but the snapshot,
so every worker holding the same snapshot assigns the same features to the same segment,
whatever algorithm produced it. A batch of customers costs one numpy matrix product
(:meth:`BehaviorSegmentation.evaluate_many`); one customer, the worker's case (it evaluates
after every event), is scored in plain Python: for one row of eleven features numpy's
per-call overhead cost ~75 µs an event, more than the rest of the event's processing.

Hysteresis keeps boundary customers from flapping when centres move a little between
snapshots or a customer's features wobble: a customer leaves its segment only for a centre
that is closer by a relative ``margin`` *and* has won ``confirmations`` evaluations in a row
(the pending candidate and its count are the per-customer ``aux``). A customer whose segment
was retired moves at once.

Cold start: until a snapshot built from at least ``min_learned`` samples is loaded, the
answer is "no segment" with reason ``model warming up``; a half-trained model would assign
arbitrarily. (A worker that restarts before its first snapshot arrives keeps the stored
memberships instead of dropping everyone; load the latest snapshot before consuming.)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...state.customer import CustomerState
from ..base import Decision
from .trainer import FORMAT, SEGMENTATION
from .vectorize import FEATURES, LOGGED, Scaling, original, vectorize_many

WARMING_UP = "model warming up"
SET_CHANGES_KEPT = 50  # the latest set changes (appeared/returned/split/merged/retired) described


@dataclass(frozen=True, slots=True)
class Hysteresis:
    margin: float = 0.1  # a new centre must be at least this much (relatively) closer ...
    confirmations: int = 2  # ... in this many consecutive evaluations

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0 or self.confirmations < 1:
            raise ValueError("margin must be in [0, 1) and confirmations >= 1")


@dataclass(frozen=True, slots=True)
class Scores:
    """Distances of a batch of customers to every segment of one snapshot."""

    ids: tuple[str, ...]  # segment ids, in column order
    distances: np.ndarray  # shape (customers, segments); Euclidean, scaled space

    def nearest(self) -> list[str]:
        return [self.ids[i] for i in np.argmin(self.distances, axis=1)]


@dataclass(frozen=True, slots=True)
class _Model:
    version: int
    n_learned: int
    ids: tuple[str, ...]
    column: dict[str, int]
    names: dict[str, str]
    centres: np.ndarray
    centre_norms: np.ndarray
    scaling: Scaling
    doc: Mapping[str, Any]
    # the same as plain floats, for scoring one customer without numpy
    rows: tuple[tuple[float, ...], ...] = ()
    # (logged, mean, std) per feature; std 0.0 for a feature out of use
    scale_rows: tuple[tuple[bool, float, float], ...] = ()


class BehaviorSegmentation:
    """Implements :class:`stream_app.core.segmentation.base.Segmentation`."""

    name = SEGMENTATION
    time_sensitive = True  # recency and the decayed activity move with time alone

    def __init__(self, hysteresis: Hysteresis = Hysteresis(), min_learned: int = 1000) -> None:
        self.hysteresis = hysteresis
        self.min_learned = min_learned
        self._model: _Model | None = None
        self._set_changes: deque[dict[str, Any]] = deque(maxlen=SET_CHANGES_KEPT)

    @property
    def version(self) -> int | None:
        return self._model.version if self._model else None

    @property
    def ready(self) -> bool:
        return self._model is not None and self._model.n_learned >= self.min_learned

    def load(self, snapshot: Mapping[str, Any]) -> bool:
        """Swap in ``snapshot`` if it is newer than the one held; True when swapped."""
        if snapshot.get("format") != FORMAT or snapshot.get("segmentation") != self.name:
            raise ValueError("not a behaviour-segmentation snapshot of a supported format")
        if tuple(snapshot["features"]) != FEATURES:
            raise ValueError("snapshot was trained on a different feature list")
        version = int(snapshot["version"])
        if self._model is not None and version <= self._model.version:
            return False
        segments = snapshot["segments"]
        ids = tuple(seg["id"] for seg in segments)
        centres = np.array([seg["centre"] for seg in segments], dtype=np.float64)
        if centres.shape != (len(ids), len(FEATURES)) or not ids:
            raise ValueError("snapshot centres do not match its segments and features")
        scaling = Scaling.from_json(snapshot["scaling"])
        names = {seg["id"]: seg["name"] for seg in segments}
        before = self._model.names if self._model is not None else {}
        for change in snapshot.get("set_changes", ()):
            entry = {"version": version, **change}
            sid = change.get("segment")
            if sid in names or sid in before:
                entry["name"] = names.get(sid) or before[sid]
            self._set_changes.append(entry)
        self._model = _Model(
            version=version, n_learned=int(snapshot["n_learned"]), ids=ids,
            column={sid: i for i, sid in enumerate(ids)},
            names={seg["id"]: seg["name"] for seg in segments}, centres=centres,
            centre_norms=(centres * centres).sum(axis=1), scaling=scaling, doc=snapshot,
            rows=tuple(tuple(row) for row in centres.tolist()),
            scale_rows=tuple(zip(LOGGED.tolist(), scaling.mean.tolist(),
                                 (scaling.std * (scaling.weights > 0)).tolist(), strict=True)))
        return True

    def score_many(self, feats: Sequence[Mapping[str, Any]]) -> Scores | None:
        """Distances of many customers to the current segments (``None`` without a model)."""
        m = self._model
        if m is None:
            return None
        z = m.scaling.scale(vectorize_many(feats))
        d2 = (z * z).sum(axis=1)[:, None] - 2.0 * (z @ m.centres.T) + m.centre_norms[None, :]
        return Scores(m.ids, np.sqrt(np.maximum(d2, 0.0)))

    def distances(self, feats: Mapping[str, Any]) -> list[float] | None:
        """One customer's distances to the current segments, in plain Python (the same
        transforms, scaling and Euclidean distance as :meth:`score_many`)."""
        m = self._model
        if m is None:
            return None
        log1p, dist = math.log1p, math.dist
        # negative inputs clip to 0, which both transforms keep at 0; a feature out of use
        # in this model generation (std 0.0 here) is 0 for everyone
        z = [0.0 if not std else ((log1p(v) if logged else v) - mean) / std if v > 0.0
             else -mean / std
             for v, (logged, mean, std) in zip(original(feats), m.scale_rows, strict=True)]
        return [dist(z, row) for row in m.rows]

    def decide(self, state: CustomerState, feats: dict[str, Any], now: float, aux: Any,
               traits_changed: bool = True, explain: bool = False) -> Decision | None:
        """The nearest segment, through the hysteresis; or None when that keeps the
        segment and ``aux`` as they are (unless ``explain``: then always the
        :class:`Decision`, with why, for ``GET /customers/{id}``).

        The worker's call after every applied event: most events move no one, and the
        explanation a :class:`Decision` carries costs more than the scoring."""
        m = self._model
        if m is None or m.n_learned < self.min_learned:
            return self.evaluate_many([state], [feats], now, [aux])[0]
        dist = self.distances(feats)
        assert dist is not None
        best = dist.index(min(dist))  # the first of equals, as argmin
        current = state.segments.get(self.name)
        col = m.column.get(current) if current is not None else None  # type: ignore[arg-type]
        if (not explain and aux is None and col is not None
                and (best == col or dist[best] >= (1.0 - self.hysteresis.margin) * dist[col])):
            return None  # stays, nothing pending: what _decide would say, without the why
        return self._decide(m, current, dist, best, aux)

    def evaluate_many(self, states: Sequence[CustomerState], feats: Sequence[Mapping[str, Any]],
                      now: float, auxes: Sequence[Any]) -> list[Decision]:
        """The hot path: one numpy scoring for the batch, then hysteresis per customer."""
        m = self._model
        current = [s.segments.get(self.name) for s in states]
        if m is None:
            return [Decision(c, None, None, "no model loaded yet: membership kept" if c
                             else WARMING_UP, {"n_learned": 0, "min_learned": self.min_learned})
                    for c in current]
        if m.n_learned < self.min_learned:
            why = {"n_learned": m.n_learned, "min_learned": self.min_learned}
            return [Decision(None, None, m.version, WARMING_UP, why) for _ in states]
        scores = self.score_many(feats)
        assert scores is not None
        # plain Python floats from here: per-element numpy access costs more than the logic
        nearest = np.argmin(scores.distances, axis=1).tolist()
        return [self._decide(m, cur, row, best, aux) for cur, row, best, aux
                in zip(current, scores.distances.tolist(), nearest, auxes, strict=True)]

    def _decide(self, m: _Model, current: str | None, dist: list[float], best: int, aux: Any
                ) -> Decision:
        best_id = m.ids[best]
        why: dict[str, Any] = {"nearest": best_id, "nearest_distance": round(dist[best], 3)}
        if current is None or current not in m.column:
            reason = "nearest centre" if current is None else f"segment {current} retired"
            return self._to(m, best_id, reason, {**why, "distance": why["nearest_distance"]})
        col = m.column[current]
        why["distance"] = round(dist[col], 3)
        h = self.hysteresis
        if best == col or dist[best] >= (1.0 - h.margin) * dist[col]:
            reason = "nearest centre" if best == col else f"{best_id} not closer by the margin"
            return self._to(m, current, reason, why)
        count = aux["n"] + 1 if isinstance(aux, dict) and aux.get("c") == best_id else 1
        if count >= h.confirmations:
            why["distance"] = why["nearest_distance"]
            return self._to(m, best_id, f"moved from {current}: nearer centre, confirmed", why)
        why["pending"] = {"segment": best_id, "count": count, "needed": h.confirmations}
        return self._to(m, current, f"{best_id} nearer, awaiting confirmation", why,
                        aux={"c": best_id, "n": count})

    @staticmethod
    def _to(m: _Model, segment: str, reason: str, why: dict[str, Any], aux: Any = None
            ) -> Decision:
        return Decision(segment, m.names[segment], m.version, reason, why, aux)

    def describe(self) -> dict[str, Any]:
        m = self._model
        status = "no model" if m is None else "ready" if self.ready else "warming up"
        out: dict[str, Any] = {"segmentation": self.name, "status": status,
                               "min_learned": self.min_learned, "segments": []}
        if m is not None:
            doc = m.doc
            out.update(version=m.version, algorithm=doc["algorithm"],
                       created_at=doc["created_at"], n_learned=m.n_learned,
                       retired=list(doc["retired"]),
                       generation=doc.get("generation"),
                       set_changes=list(reversed(self._set_changes)),
                       segments=[{"id": seg["id"], "name": seg["name"], "profile": seg["profile"]}
                                 for seg in doc["segments"]])
        return out
