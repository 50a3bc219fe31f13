"""River clustering models behind one small contract, with a plain-JSON snapshot format.

Every algorithm offered (``stream_app.config.ClusterModel``) is wrapped so the trainer and the
tests drive it the same way (:class:`Clusterer`): ``learn_one(x)``, ``predict_one(x)`` (a raw
cluster id, or ``None`` while the model has no cluster), ``centres()`` and
``to_snapshot()`` / :func:`model_from_snapshot`.

Why wrappers rather than River objects directly:

* **No pickle.** A snapshot is a JSON-safe dict (``format``, ``algorithm``, ``features``,
  ``params``, ``state``) holding the model's full internal state, so a restored model makes
  the same predictions and keeps learning exactly as the original would.
* **Determinism.** River keys features by whatever the input dict uses; with string keys,
  ``KMeans`` draws random initial coordinates in set-iteration order, which changes with
  ``PYTHONHASHSEED``. The wrappers feed River integer keys (the feature's position) and
  draw every initial coordinate up front, so a seed gives the same model in every process.
* **"Unknown" instead of an arbitrary answer.** Untrained River models answer with cluster
  0, a random centre, or an exception; the wrappers return ``None`` until the model has a
  learned cluster.

Raw cluster ids are River's own and are *not* stable over time (they move, merge and
vanish as the model learns); :mod:`.stable` maps them to lasting segment ids.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
from river import cluster
from river.cluster.denstream import DenStreamMicroCluster

from .vectorize import FEATURES

FORMAT = 1
K_SWITCH = 0.04  # silhouette gain another k needs over the current centres (_recheck_k)
K_CHECK_EVERY = 5  # k is re-checked every this many refit checks, and at each generation


class Clusterer(Protocol):
    """What the trainer needs from a clustering model."""

    algorithm: str
    features: tuple[str, ...]
    params: dict[str, Any]  # the constructor arguments (JSON-safe)

    def learn_one(self, x: Mapping[str, float]) -> None:
        """Learn from one vector (every name in ``features`` must be present)."""
        ...

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        """Raw id of the cluster ``x`` belongs to; ``None`` while there is no cluster."""
        ...

    def centres(self) -> dict[int, list[float]]:
        """Raw cluster id -> centre (values in ``features`` order)."""
        ...

    def to_snapshot(self) -> dict[str, Any]:
        """The whole model as a JSON-safe dict; :func:`model_from_snapshot` reverses it."""
        ...


class _RiverModel:
    """Shared plumbing: feature-name <-> integer-key mapping and the snapshot envelope."""

    algorithm: ClassVar[str]

    def __init__(self, features: Sequence[str], params: dict[str, Any]) -> None:
        if len(set(features)) != len(features) or not features:
            raise ValueError("features must be distinct names")
        self.features = tuple(features)
        self.params = params

    def _keyed(self, x: Mapping[str, float]) -> dict[int, float]:
        return {i: float(x[name]) for i, name in enumerate(self.features)}

    def _listed(self, centre: Mapping[int, float]) -> list[float]:
        return [float(centre[i]) for i in range(len(self.features))]

    def to_snapshot(self) -> dict[str, Any]:
        return {"format": FORMAT, "algorithm": self.algorithm, "features": list(self.features),
                "params": dict(self.params), "state": self._state()}

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restore(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError


def _materialise(model: cluster.KMeans, n_features: int) -> None:
    """Draw every initial coordinate now, in a fixed order (see the module docstring)."""
    for centre in model.centers.values():
        for i in range(n_features):
            centre[i]  # noqa: B018 - the lookup itself draws the value


def _set_centres(model: cluster.KMeans, centres: Sequence[Sequence[float]]) -> None:
    for i, values in enumerate(centres):
        model.centers[i].update(enumerate(values))


class KMeansModel(_RiverModel):
    """``river.cluster.KMeans`` (each point moves its nearest centre by ``halflife``), made
    robust to its start and to a population whose shape changes.

    Sequential k-means never leaves a bad configuration: River's random Gaussian start leaves
    centres no point reaches, and once two groups share a centre while another group holds
    two, nothing pulls them apart (measured on simulated traffic: ARI 0.54 against the true
    personas, against 0.95 for batch k-means on the same vectors). So the wrapper keeps the
    last ``window`` points and

    * seeds the centres from the first ``window`` points (k-means++ and Lloyd, best of
      ``restarts``) instead of at random;
    * every ``check_every`` points, runs the same batch k-means on the window and adopts its
      centres only if they fit the window better by more than ``min_gain`` (relative
      inertia). A settled model is left alone, so centres (and segments) do not jump.

    Between checks River does the learning, so centres follow drift point by point.
    ``centres()`` lists only centres that hold points.

    With ``k_min < k_max`` the number of centres is chosen from the data when the model is
    seeded (:func:`choose_k`: the highest silhouette over the candidate k), and kept until the model is seeded again (a new model
    generation); ``clusters`` is then only the size of the unseeded model.
    """

    algorithm = "kmeans"

    def __init__(self, features: Sequence[str] = FEATURES, *, clusters: int = 7,
                 halflife: float = 0.005, window: int = 1000, check_every: int = 2000,
                 restarts: int = 5, min_gain: float = 0.2, seed: int = 0, k_min: int = 0,
                 k_max: int = 0, settle: bool = False) -> None:
        if window < max(clusters, k_max):
            raise ValueError("window must hold at least `clusters` (and `k_max`) points")
        if k_max and not 2 <= k_min <= k_max:
            raise ValueError("need 2 <= k_min <= k_max to choose k")
        super().__init__(features, {
            "clusters": clusters, "halflife": halflife, "window": window,
            "check_every": check_every, "restarts": restarts, "min_gain": min_gain,
            "seed": seed, **({"k_min": k_min, "k_max": k_max} if k_max else {}),
            **({"settle": True} if settle else {})})
        self._river = cluster.KMeans(n_clusters=clusters, halflife=halflife, seed=seed)
        _materialise(self._river, len(self.features))
        self._window: deque[list[float]] = deque(maxlen=window)
        self._wins = [0] * clusters
        self._n = 0
        self._checks = 0

    def learn_one(self, x: Mapping[str, float]) -> None:
        keyed = self._keyed(x)
        self._window.append(self._listed(keyed))
        self._n += 1
        p = self.params
        if self._n < p["window"]:
            return  # not enough points to seed from yet
        if self._n == p["window"]:
            points = np.array(self._window)
            if p.get("k_max"):
                rng = np.random.default_rng([p["seed"], self._checks])
                self._checks += 1
                k, centres, inertia = choose_k(points, p["k_min"], p["k_max"], p["restarts"], rng)
                self._resize(k)
                self._adopt((centres, inertia), points)
            else:
                self._adopt(self._batch(), points)
            return
        self._wins[self._river.learn_predict_one(keyed)] += 1
        if (self._n - p["window"]) % p["check_every"] == 0:
            points = np.array(self._window)
            checks = (self._n - p["window"]) // p["check_every"]
            if p.get("k_max") and checks % K_CHECK_EVERY == 0 and self._recheck_k(points):
                return
            centres, inertia = self._batch()
            # A restart is adopted only when it fits much better than the current centres
            # would after settling (Lloyd from them): then the structure changed; a
            # configuration that merely lags is left to River's learning, so segments do
            # not jump.
            warm = lloyd(points, self._all_centres())
            if inertia < (1.0 - p["min_gain"]) * _inertia(points, warm):
                self._adopt((centres, inertia), points)
            elif p.get("settle"):
                self._adopt((warm, _inertia(points, warm)), points)

    def _batch(self) -> tuple[np.ndarray, float]:
        rng = np.random.default_rng([self.params["seed"], self._checks])
        self._checks += 1
        return best_kmeans(np.array(self._window), len(self._wins), self.params["restarts"], rng)

    def _resize(self, k: int) -> None:
        """A River KMeans of ``k`` centres (its size is fixed when it is made)."""
        if k == len(self._wins):
            return
        p = self.params
        self._river = cluster.KMeans(n_clusters=k, halflife=p["halflife"], seed=p["seed"])
        _materialise(self._river, len(self.features))
        self._wins = [0] * k

    def _adopt(self, fit: tuple[np.ndarray, float], points: np.ndarray) -> None:
        centres, _ = fit
        _set_centres(self._river, centres.tolist())
        self._wins = np.bincount(_nearest(points, centres), minlength=len(centres)).tolist()

    def _recheck_k(self, points: np.ndarray) -> bool:
        """Adopt another k when its silhouette on ``points`` beats the current centres' (as
        they would settle there) by ``K_SWITCH``; True when adopted."""
        p = self.params
        centres = self._all_centres()
        current = silhouette(points, _nearest(points, lloyd(points, centres)))
        rng = np.random.default_rng([p["seed"], self._checks])
        self._checks += 1
        k, fitted, inertia = choose_k(points, p["k_min"], p["k_max"], p["restarts"], rng)
        if k == len(self._wins) or silhouette(points, _nearest(points, fitted)) <= current + K_SWITCH:
            return False
        self._resize(k)
        self._adopt((fitted, inertia), points)
        return True

    def regenerate(self, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        """Carry the model into a new generation's space: ``transform`` maps old scaled
        vectors to new ones; centres and window move with it, so nothing is relearned and
        the segments stay what they were. With ``k_max`` set, k is checked again on the
        window: another k is adopted when its silhouette beats the current centres' by
        ``K_SWITCH`` (the margin keeps k from flipping on noise)."""
        if not self._window:
            return
        points = transform(np.array(self._window))
        self._window = deque(points.tolist(), maxlen=self._window.maxlen)
        seeded = self._n >= self.params["window"]
        if not seeded:
            return
        _set_centres(self._river, transform(self._all_centres()).tolist())
        if self.params.get("k_max"):
            self._recheck_k(points)

    def _all_centres(self) -> np.ndarray:
        return np.array([self._listed(c) for c in self._river.centers.values()])

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        trained = self.centres()
        if not trained:
            return None
        ids = sorted(trained)
        nearest = _nearest(np.array([self._listed(self._keyed(x))]),
                           np.array([trained[i] for i in ids]))
        return ids[int(nearest[0])]

    def centres(self) -> dict[int, list[float]]:
        return {i: self._listed(c) for i, c in self._river.centers.items() if self._wins[i]}

    def _state(self) -> dict[str, Any]:
        return {"centres": self._all_centres().tolist(), "wins": list(self._wins),
                "window": [list(p) for p in self._window], "n": self._n,
                "checks": self._checks}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._resize(len(state["centres"]))
        _set_centres(self._river, state["centres"])
        self._wins = [int(w) for w in state["wins"]]
        self._window.extend([float(v) for v in p] for p in state["window"])
        self._n = int(state["n"])
        self._checks = int(state["checks"])


def best_kmeans(points: np.ndarray, k: int, restarts: int, rng: np.random.Generator,
                max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Batch k-means (k-means++ seeding, then Lloyd), best of ``restarts`` by inertia."""
    best: tuple[np.ndarray, float] | None = None
    for _ in range(restarts):
        centres = lloyd(points, _kmeans_pp(points, k, rng), max_iter)
        inertia = _inertia(points, centres)
        if best is None or inertia < best[1]:
            best = (centres, inertia)
    assert best is not None
    return best


def lloyd(points: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Lloyd's iterations from ``centres`` (a copy) until the labels stop changing."""
    centres = np.array(centres, dtype=np.float64)
    labels = _nearest(points, centres)
    for _ in range(max_iter):
        for j in range(len(centres)):
            members = points[labels == j]
            if len(members):  # an emptied centre stays where it was
                centres[j] = members.mean(axis=0)
        relabelled = _nearest(points, centres)
        if np.array_equal(relabelled, labels):
            break
        labels = relabelled
    return centres


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) of a labelling: per point ``(b - a) / max(a, b)``,
    ``a`` its mean distance to its own cluster, ``b`` to the nearest other; 0 for a point
    alone in its cluster. Exact, O(n^2) memory: meant for the trainer's window."""
    ks, inv = np.unique(labels, return_inverse=True)
    if len(ks) < 2:
        return 0.0
    sq = (points * points).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0.0))
    onehot = np.zeros((len(points), len(ks)))
    onehot[np.arange(len(points)), inv] = 1.0
    counts = onehot.sum(axis=0)
    sums = d @ onehot
    own_n = counts[inv] - 1.0
    a = np.where(own_n > 0, sums[np.arange(len(points)), inv] / np.maximum(own_n, 1.0), 0.0)
    other = sums / counts[None, :]
    other[np.arange(len(points)), inv] = np.inf
    b = other.min(axis=1)
    s = np.where(own_n > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(points: np.ndarray, k_min: int, k_max: int, restarts: int,
             rng: np.random.Generator) -> tuple[int, np.ndarray, float]:
    """The number of clusters for ``points``: the k in ``[k_min, k_max]`` whose best batch
    k-means has the highest mean silhouette (the first of equals); ``(k, centres, inertia)``.

    Tried and dropped: "the smallest k within 0.01 of the best" (a parsimony rule) chose
    k = 4 for six simulated groups whose silhouette is flat from 4 to 8 (ARI 0.55 against
    0.86 for the highest)."""
    fits = []
    for k in range(k_min, min(k_max, len(points) - 1) + 1):
        centres, inertia = best_kmeans(points, k, restarts, rng)
        fits.append((silhouette(points, _nearest(points, centres)), k, centres, inertia))
    if not fits:
        raise ValueError("k_min must not exceed k_max")
    _, k, centres, inertia = max(fits, key=lambda f: (f[0], -f[1]))
    return k, centres, inertia


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre is drawn with probability
    proportional to its squared distance from those already chosen."""
    centres = [points[rng.integers(len(points))]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    while len(centres) < k:
        total = d2.sum()
        pick = points[rng.choice(len(points), p=d2 / total)] if total > 0 else centres[-1]
        centres.append(pick)
        d2 = np.minimum(d2, ((points - pick) ** 2).sum(axis=1))
    return np.array(centres, dtype=np.float64)


def _d2(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(_d2(points, centres), axis=1)


def _inertia(points: np.ndarray, centres: np.ndarray) -> float:
    return float(_d2(points, centres).min(axis=1).sum())


class STREAMKMeansModel(_RiverModel):
    """``river.cluster.STREAMKMeans``: k-means over chunks, whose centres feed a KMeans."""

    algorithm = "streamkmeans"

    def __init__(self, features: Sequence[str] = FEATURES, *, clusters: int = 7,
                 chunk_size: int = 200, halflife: float = 0.1, sigma: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(features, {"clusters": clusters, "chunk_size": chunk_size,
                                    "halflife": halflife, "sigma": sigma, "seed": seed})
        self._river = cluster.STREAMKMeans(chunk_size=chunk_size, n_clusters=clusters,
                                           halflife=halflife, sigma=sigma, seed=seed)
        _materialise(self._river._kmeans, len(self.features))

    def learn_one(self, x: Mapping[str, float]) -> None:
        self._river.learn_one(self._keyed(x))

    def _trained(self) -> bool:
        # River exposes the outer k-means' random starting centres from the first point on;
        # they mean something only once a chunk has been clustered into them.
        return self._river.time_stamp >= self._river.chunk_size

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        if not self._trained():
            return None
        return int(self._river.predict_one(self._keyed(x)))

    def centres(self) -> dict[int, list[float]]:
        if not self._trained():
            return {}
        return {i: self._listed(c) for i, c in self._river.centers.items()}

    def _state(self) -> dict[str, Any]:
        r = self._river
        return {"time_stamp": r.time_stamp,
                "chunk": [[i, self._listed(p)] for i, p in r._temp_chunk.items()],
                "centres": [self._listed(c) for c in r._kmeans.centers.values()]}

    def _restore(self, state: Mapping[str, Any]) -> None:
        r = self._river
        r.time_stamp = int(state["time_stamp"])
        r._temp_chunk = {int(i): dict(enumerate(p)) for i, p in state["chunk"]}
        _set_centres(r._kmeans, state["centres"])
        r.centers = r._kmeans.centers if r.time_stamp > 0 else {}  # as River's learn_one does


class DBSTREAMModel(_RiverModel):
    """``river.cluster.DBSTREAM``: micro-clusters joined by shared density into clusters.

    The number of clusters is found by the algorithm (``clusters`` is not a parameter).
    """

    algorithm = "dbstream"

    def __init__(self, features: Sequence[str] = FEATURES, *, clustering_threshold: float = 1.5,
                 fading_factor: float = 0.0005, cleanup_interval: int = 200,
                 intersection_factor: float = 0.3, minimum_weight: float = 3.0) -> None:
        super().__init__(features, {
            "clustering_threshold": clustering_threshold, "fading_factor": fading_factor,
            "cleanup_interval": cleanup_interval, "intersection_factor": intersection_factor,
            "minimum_weight": minimum_weight})
        self._river = cluster.DBSTREAM(
            clustering_threshold=clustering_threshold, fading_factor=fading_factor,
            cleanup_interval=cleanup_interval, intersection_factor=intersection_factor,
            minimum_weight=minimum_weight)

    def learn_one(self, x: Mapping[str, float]) -> None:
        self._river.learn_one(self._keyed(x))

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        if not self._river.centers:
            return None
        return int(self._river.predict_one(self._keyed(x)))

    def centres(self) -> dict[int, list[float]]:
        return {int(i): self._listed(c) for i, c in self._river.centers.items()}

    def _state(self) -> dict[str, Any]:
        r = self._river
        return {
            "time_stamp": r._time_stamp,
            "micro": [[i, self._listed(mc.center), mc.last_update, mc.weight]
                      for i, mc in r._micro_clusters.items()],
            "s": [[i, [[j, v, r.s_t[i][j]] for j, v in row.items()]] for i, row in r.s.items()],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        r = self._river
        r._time_stamp = int(state["time_stamp"])
        r._micro_clusters = {
            int(i): cluster.dbstream.DBSTREAMMicroCluster(
                x=dict(enumerate(centre)), last_update=int(last), weight=float(weight))
            for i, centre, last, weight in state["micro"]}
        r.s = {int(i): {int(j): float(v) for j, v, _ in row} for i, row in state["s"]}
        r.s_t = {int(i): {int(j): int(t) for j, _, t in row} for i, row in state["s"]}
        r.clustering_is_up_to_date = False


class DenStreamModel(_RiverModel):
    """``river.cluster.DenStream``: potential/outlier micro-clusters, DBSCAN on request.

    River's ``predict_one`` builds the final clusters by shallow-copying micro-clusters and
    merging into them, which alters the sums of the live micro-clusters whenever a final
    cluster has several: predicting would change the model. The wrapper therefore runs it on
    a deep copy (slow, but serving never calls it: workers score against snapshot centres).
    """

    algorithm = "denstream"

    def __init__(self, features: Sequence[str] = FEATURES, *, decaying_factor: float = 0.01,
                 beta: float = 0.5, mu: float = 4.0, epsilon: float = 1.0,
                 n_samples_init: int = 500, stream_speed: int = 100) -> None:
        super().__init__(features, {
            "decaying_factor": decaying_factor, "beta": beta, "mu": mu, "epsilon": epsilon,
            "n_samples_init": n_samples_init, "stream_speed": stream_speed})
        self._river = cluster.DenStream(
            decaying_factor=decaying_factor, beta=beta, mu=mu, epsilon=epsilon,
            n_samples_init=n_samples_init, stream_speed=stream_speed)

    def learn_one(self, x: Mapping[str, float]) -> None:
        self._river.learn_one(self._keyed(x))

    def _reclustered(self) -> cluster.DenStream | None:
        if not self._river.initialized or not self._river.p_micro_clusters:
            return None
        scratch = copy.deepcopy(self._river)
        scratch.predict_one({i: 0.0 for i in range(len(self.features))})
        return scratch

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        scratch = self._reclustered()
        return None if scratch is None else int(scratch.predict_one(self._keyed(x)))

    def centres(self) -> dict[int, list[float]]:
        scratch = self._reclustered()
        if scratch is None:
            return {}
        return {int(i): self._listed(c) for i, c in scratch.centers.items()}

    def _state(self) -> dict[str, Any]:
        r = self._river
        state: dict[str, Any] = {
            "timestamp": r.timestamp, "initialized": r.initialized,
            "n_seen": r._n_samples_seen,
            "p": [[k, self._micro(mc)] for k, mc in r.p_micro_clusters.items()],
            "o": [[k, self._micro(mc)] for k, mc in r.o_micro_clusters.items()],
        }
        if not r.initialized:
            state["buffer"] = [[self._listed(b.x), b.timestamp[0], b.covered]
                               for b in r._init_buffer]
        return state

    def _micro(self, mc: DenStreamMicroCluster) -> dict[str, Any]:
        return {"x": self._listed(mc.x), "last": mc.last_edit_time, "created": mc.creation_time,
                "n": mc.N, "ls": self._listed(mc.linear_sum), "ss": self._listed(mc.squared_sum)}

    def _restore(self, state: Mapping[str, Any]) -> None:
        r = self._river
        r.timestamp = int(state["timestamp"])
        r.initialized = bool(state["initialized"])
        r._n_samples_seen = int(state["n_seen"])
        r.p_micro_clusters = {int(k): self._unmicro(m) for k, m in state["p"]}
        r.o_micro_clusters = {int(k): self._unmicro(m) for k, m in state["o"]}
        if r.initialized:
            del r._init_buffer  # River drops the buffer once initialised
        else:
            r._init_buffer.extend(r.BufferItem(dict(enumerate(x)), int(ts), bool(covered))
                                  for x, ts, covered in state["buffer"])

    def _unmicro(self, doc: Mapping[str, Any]) -> DenStreamMicroCluster:
        mc = DenStreamMicroCluster(x=dict(enumerate(doc["x"])), timestamp=int(doc["created"]),
                                   decaying_factor=self._river.decaying_factor)
        mc.last_edit_time = int(doc["last"])
        mc.N = doc["n"]
        mc.linear_sum = dict(enumerate(doc["ls"]))
        mc.squared_sum = dict(enumerate(doc["ss"]))
        return mc


MODELS: dict[str, type[_RiverModel]] = {
    m.algorithm: m for m in (KMeansModel, STREAMKMeansModel, DBSTREAMModel, DenStreamModel)
}
# Algorithms whose number of clusters is a parameter (the others find it themselves).
TAKES_CLUSTERS = frozenset({"kmeans", "streamkmeans"})


def make_model(algorithm: str, features: Sequence[str] = FEATURES, *, clusters: int = 7,
               seed: int = 0, **params: Any) -> Clusterer:
    """A fresh model by name (a ``ClusterModel`` value) with tuned defaults, overridable."""
    try:
        factory: Callable[..., Clusterer] = MODELS[algorithm]  # type: ignore[assignment]
    except KeyError:
        raise ValueError(f"unknown clustering algorithm {algorithm!r}; "
                         f"one of {sorted(MODELS)}") from None
    if algorithm in TAKES_CLUSTERS:
        params = {"clusters": clusters, "seed": seed} | params
    return factory(features, **params)


def model_from_snapshot(doc: Mapping[str, Any]) -> Clusterer:
    """Rebuild a model from :meth:`Clusterer.to_snapshot` output (after a JSON round trip)."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"unsupported model snapshot format {doc.get('format')!r}")
    model = MODELS[doc["algorithm"]](doc["features"], **doc["params"])
    model._restore(doc["state"])
    return model  # type: ignore[return-value]

