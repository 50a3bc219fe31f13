"""Stable segment ids for clusters whose raw ids move, merge and vanish.

River renumbers clusters as it learns (DBSTREAM relabels on every reclustering; KMeans
centres wander), so raw ids cannot be published. Each new set of centres is matched to the
previous snapshot's segments by a minimum-cost assignment (Hungarian,
``scipy.optimize.linear_sum_assignment``) on Euclidean distance:

* a new centre matched to an old segment within ``max_distance`` keeps that segment's id;
* an unmatched new centre (a split, or a new group) gets a fresh id;
* an old segment left unmatched (merged away or vanished) is retired.

Ids are ``<prefix><n>`` with ``n`` from a counter that only grows, so an id is never reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

PREFIX = "b"
Vector = Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class Matching:
    ids: dict[int, str]  # raw cluster id -> stable segment id
    retired: tuple[str, ...]  # previous ids not carried forward
    next_id: int  # counter for the next fresh id


def match(previous: Mapping[str, Vector], current: Mapping[int, Vector],
          next_id: int, *, max_distance: float, prefix: str = PREFIX) -> Matching:
    """Give each current centre a stable id (both sets must be in the same space).

    Pure and deterministic: fresh ids go to unmatched centres in raw-id order; retired ids
    come out in their previous order.
    """
    old_ids, new_raw = list(previous), sorted(current)
    ids: dict[int, str] = {}
    if old_ids and new_raw:
        old = np.array([previous[i] for i in old_ids], dtype=np.float64)
        new = np.array([current[r] for r in new_raw], dtype=np.float64)
        dist = np.sqrt(((old[:, None, :] - new[None, :, :]) ** 2).sum(axis=-1))
        # Pairs beyond the threshold are allowed in the assignment at a prohibitive cost and
        # dropped afterwards; forbidding them outright could leave no feasible assignment.
        cost = np.where(dist <= max_distance, dist, dist.max() * 1e3 + 1e6)
        for r, c in zip(*linear_sum_assignment(cost), strict=True):
            if dist[r, c] <= max_distance:
                ids[new_raw[c]] = old_ids[r]
    for raw in new_raw:
        if raw not in ids:
            ids[raw] = f"{prefix}{next_id}"
            next_id += 1
    kept = set(ids.values())
    return Matching(ids, tuple(i for i in old_ids if i not in kept), next_id)


def id_order(sid: str) -> tuple[int, str]:
    """Sort key putting ``b2`` before ``b10``."""
    digits = "".join(ch for ch in sid if ch.isdigit())
    return (int(digits) if digits else 0, sid)


def set_changes(previous: Mapping[str, Vector], current: Mapping[str, Vector], *,
                max_distance: float) -> list[dict[str, str]]:
    """How the set of segments changed from ``previous`` to ``current`` (id -> centre, both
    in the same space, after :func:`match`), for the model topic and the dashboard:

    * ``split``: a new id whose nearest previous segment lives on, within twice
      ``max_distance`` (a group became two);
    * ``appeared``: any other new id (a group the model had not seen);
    * ``merged``: a dropped id whose nearest current segment is within twice
      ``max_distance`` (``into`` names it);
    * ``retired``: any other dropped id (the group is gone).
    """
    def nearest(pool: Mapping[str, Vector], centre: Vector) -> tuple[str | None, float]:
        best: tuple[str | None, float] = (None, float("inf"))
        for sid, c in pool.items():
            d = float(np.linalg.norm(np.asarray(c, dtype=np.float64)
                                     - np.asarray(centre, dtype=np.float64)))
            if d < best[1]:
                best = (sid, d)
        return best

    out: list[dict[str, str]] = []
    for sid in sorted((i for i in current if i not in previous), key=id_order):
        near, d = nearest(previous, current[sid])
        if near is not None and near in current and d <= 2.0 * max_distance:
            out.append({"change": "split", "segment": sid, "from": near})
        else:
            out.append({"change": "appeared", "segment": sid})
    for sid in sorted((i for i in previous if i not in current), key=id_order):
        near, d = nearest(current, previous[sid])
        if near is not None and d <= 2.0 * max_distance:
            out.append({"change": "merged", "segment": sid, "into": near})
        else:
            out.append({"change": "retired", "segment": sid})
    return out
