"""Gradual transitions: the published centres move toward the trainer's target a bounded
share of customers at a time.

A re-clustering (k re-chosen, a group split or merged, centres re-fitted on a new window)
can move a large share of customers between two consecutive model versions even when
none of them changed. Instead of publishing the target at once, each version publishes the
centres part of the way along a path from those published before to the target, as far as
moves at most ``budget`` of the trainer's recent sample to another segment:

* a segment in both moves in a straight line from its published centre to its target;
* a new segment comes in from outside: it starts far beyond its target, on the side away
  from its nearest neighbour, and no customer is nearest to it until it comes close; it is
  published once it holds some of the sample;
* a segment the target no longer has moves out, away from its nearest remaining segment,
  and its customers pass to their neighbours a few at a time; it is retired once it holds
  none of the sample.

The share moved is measured on nearest-centre assignment, the same rule every worker scores
with. Pure numerics: no I/O, no River.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .profiles import assign

STEPS = 20  # bisection steps on the path's fraction (2^-20 of the way: far finer than needed)


@dataclass(frozen=True, slots=True)
class Step:
    positions: dict[str, np.ndarray]  # every segment in transit (published or still out)
    held: dict[str, float]  # share of the sample nearest to each, at ``positions``
    fraction: float  # how far along the path (1.0: the target reached)
    moved: float  # share of the sample whose nearest segment changed


def step(start: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray], sample: np.ndarray,
         budget: float, held: Sequence[str | None] | None = None) -> Step:
    """Move ``start`` (id -> centre, including segments still coming in) toward ``target``
    (id -> centre) as far as moves at most ``budget`` of ``sample`` (all scaled).

    Moved is counted against ``held`` (each sample point's segment as workers hold it now,
    None: none), by default the nearest of ``start``.
    """
    ids = sorted(set(start) | set(target))
    a, b = _ends(ids, start, target, sample)
    if held is None:
        before = _labels(sample, ids, a, start)
    else:
        index = {sid: i for i, sid in enumerate(ids)}
        before = np.array([index.get(h, -1) if h is not None else -1 for h in held],
                          dtype=np.int64)
    published_before = np.array([sid in start for sid in ids])

    def at(fraction: float) -> tuple[np.ndarray, float]:
        pos = a + fraction * (b - a)
        labels = assign(sample, pos)
        held = before >= 0
        moved = float(np.mean(held & (labels != before))) if len(sample) else 0.0
        return pos, moved

    pos, moved = at(1.0)
    fraction = 1.0
    if moved > budget and bool(published_before.any()):
        lo, hi = 0.0, 1.0
        pos, moved = at(lo)
        for _ in range(STEPS):
            mid = (lo + hi) / 2
            p, m = at(mid)
            if m <= budget:
                lo, pos, moved = mid, p, m
            else:
                hi = mid
        fraction = lo
    labels = assign(sample, pos)
    counts = np.bincount(labels, minlength=len(ids)) / max(len(sample), 1)
    positions = {sid: pos[i] for i, sid in enumerate(ids)
                 if fraction < 1.0 or sid in target}
    held = {sid: float(counts[i]) for i, sid in enumerate(ids) if sid in positions}
    return Step(positions, held, fraction, moved)


def _ends(ids: list[str], start: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray],
          sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's path: from its start (a new one: far out beyond its target) to its end
    (a dropped one: far out beyond its start)."""
    dim = sample.shape[1] if sample.ndim == 2 and len(sample) else len(
        next(iter(target.values()), next(iter(start.values()), np.zeros(1))))
    a = np.zeros((len(ids), dim))
    b = np.zeros((len(ids), dim))
    for i, sid in enumerate(ids):
        if sid in start and sid in target:
            a[i], b[i] = start[sid], target[sid]
        elif sid in target:  # coming in
            b[i] = target[sid]
            a[i] = _far(target[sid], [c for s, c in target.items() if s != sid], sample)
        else:  # going out
            a[i] = start[sid]
            b[i] = _far(start[sid], list(target.values()), sample)
    return a, b


def _far(centre: np.ndarray, others: list[np.ndarray], sample: np.ndarray) -> np.ndarray:
    """A point beyond ``centre``, away from the nearest of ``others``, farther from every
    sample point than any of them is from ``centre``'s neighbourhood: no point is nearest
    to it there."""
    centre = np.asarray(centre, dtype=np.float64)
    if others:
        near = min(others, key=lambda c: float(np.linalg.norm(np.asarray(c) - centre)))
        away = centre - np.asarray(near, dtype=np.float64)
    else:
        away = np.zeros_like(centre)
    norm = float(np.linalg.norm(away))
    if norm == 0.0:
        away, norm = np.eye(len(centre))[0], 1.0
    reach = float(np.max(np.linalg.norm(sample - centre, axis=1))) if len(sample) else 1.0
    return centre + (away / norm) * (4.0 * reach + 1.0)


def _labels(sample: np.ndarray, ids: list[str], a: np.ndarray,
            start: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each point's nearest segment among those published at the start (-1: none)."""
    present = [i for i, sid in enumerate(ids) if sid in start]
    if not present or not len(sample):
        return np.full(len(sample), -1)
    near = assign(sample, a[present])
    return np.array(present)[near]
