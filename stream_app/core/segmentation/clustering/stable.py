"""Stable segment ids for clusters whose raw ids move, merge and vanish.

River renumbers clusters as it learns (DBSTREAM relabels on every reclustering; KMeans
centres wander), so raw ids cannot be published. Each new set of centres is matched to the
previous snapshot's segments by a minimum-cost assignment (Hungarian,
``scipy.optimize.linear_sum_assignment``) on Euclidean distance:

* a new centre matched to an old segment within ``max_distance`` keeps that segment's id;
* an unmatched new centre (a split, or a new group) gets a fresh id;
* an old segment left unmatched (merged away or vanished) is retired;
* an unmatched new centre within ``max_distance`` of where a retired segment was last seen
  (``retired``, matched the same way) takes that id back: the group has *returned*. Over long
  histories k-means may merge two groups and split them again when the population moves;
  minting fresh ids each time would make audiences built on the old ids vanish for nothing.

Fresh ids are ``<prefix><n>`` with ``n`` from a counter that only grows, so an id never
names a different group: it comes back only for a centre where its group was.
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
    returned: tuple[str, ...] = ()  # retired ids taken back by a centre where they were


def match(previous: Mapping[str, Vector], current: Mapping[int, Vector],
          next_id: int, *, max_distance: float, prefix: str = PREFIX,
          retired: Mapping[str, Vector] | None = None) -> Matching:
    """Give each current centre a stable id (all sets must be in the same space).

    Pure and deterministic: current centres are matched to ``previous`` first, the rest to
    ``retired`` (ids no longer in use, at their last centres); fresh ids go to what is left
    in raw-id order; retired ids come out in their previous order.
    """
    ids = _assign(previous, sorted(current), current, max_distance)
    returned: tuple[str, ...] = ()
    if retired:
        back = {sid: c for sid, c in retired.items() if sid not in previous}
        taken = _assign(back, [r for r in sorted(current) if r not in ids], current, max_distance)
        ids.update(taken)
        returned = tuple(sorted(taken.values(), key=id_order))
    for raw in sorted(current):
        if raw not in ids:
            ids[raw] = f"{prefix}{next_id}"
            next_id += 1
    kept = set(ids.values())
    return Matching(ids, tuple(i for i in previous if i not in kept), next_id, returned)


def _assign(old_centres: Mapping[str, Vector], new_raw: list[int],
            current: Mapping[int, Vector], max_distance: float) -> dict[int, str]:
    """Minimum-cost assignment of ``new_raw`` centres to ``old_centres`` within
    ``max_distance`` (Hungarian on Euclidean distance)."""
    old_ids = list(old_centres)
    ids: dict[int, str] = {}
    if not old_ids or not new_raw:
        return ids
    old = np.array([old_centres[i] for i in old_ids], dtype=np.float64)
    new = np.array([current[r] for r in new_raw], dtype=np.float64)
    dist = np.sqrt(((old[:, None, :] - new[None, :, :]) ** 2).sum(axis=-1))
    # Pairs beyond the threshold are allowed in the assignment at a prohibitive cost and
    # dropped afterwards; forbidding them outright could leave no feasible assignment.
    cost = np.where(dist <= max_distance, dist, dist.max() * 1e3 + 1e6)
    for r, c in zip(*linear_sum_assignment(cost), strict=True):
        if dist[r, c] <= max_distance:
            ids[new_raw[c]] = old_ids[r]
    return ids


def id_order(sid: str) -> tuple[int, str]:
    """Sort key putting ``b2`` before ``b10``."""
    digits = "".join(ch for ch in sid if ch.isdigit())
    return (int(digits) if digits else 0, sid)


def set_changes(previous: Mapping[str, Vector], current: Mapping[str, Vector], *,
                max_distance: float, returned: Sequence[str] = ()) -> list[dict[str, str]]:
    """How the set of segments changed from ``previous`` to ``current`` (id -> centre, both
    in the same space, after :func:`match`), for the model topic and the dashboard:

    * ``returned``: a retired id taken back (see :func:`match`);
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
        if sid in returned:
            out.append({"change": "returned", "segment": sid})
            continue
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
