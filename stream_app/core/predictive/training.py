"""The predictive models' side of the trainer: a uniform sample of customers, refitted as
event time advances. Pure (no I/O, no clock: event time comes with the samples).

What it learns from: the clustering's training samples (at most one per customer per day
of event time, from events and from time ticks, so quiet customers too) carry, for a
customer with an order, ``_purchases`` (the five-number :class:`~.summary.PurchaseSummary`),
``_key`` (a 64-bit hash of the customer id, never the id) and ``_at`` (the event time it
was taken at). :class:`PredictiveTrainer` keeps each sampled customer's latest summary.

Sample: uniform over customers, at most ``capacity`` (:data:`~.fitting.SAMPLE_SIZE`,
300,000: within 2.3 % of the parameters of a fit on all of 1M customers, see
:mod:`.fitting`). A customer is in it when its hash is below a threshold; when the sample
outgrows its capacity the threshold halves and the customers above it leave, so it stays a
uniform sample (by hash, not by arrival) of however many customers there are, with no need
to know the total. Memory: ~100 bytes a customer (four numpy columns and an index).

When it fits (:meth:`PredictiveTrainer.due`, at event time ``now``, the latest ``_at``):

* no usable fit yet: whenever the sample has grown by 10 % since the last attempt (so the
  first predictions come as soon as the minimums of :mod:`.fitting` are met);
* otherwise once per day of event time: the inputs are whole days, so ``T`` moves only at
  day boundaries, and in a day every customer has been sampled again (ticks sample the
  quiet ones), so the sample is fresh; a day's new orders move population parameters by
  far less than their sampling error. Also when the sample grew by 25 % (a young,
  fast-growing base). A fit of 300,000 customers takes about a second on 2 cores; a
  two-year replay refits ~730 times.
* and, once a fit passed, at most once per ``min_interval_s`` (60) seconds of the caller's
  clock (the worker's wall clock): a replay of history crosses a day of event time every few
  hundred milliseconds, and refitting (and re-scoring every customer with the new
  parameters) at each would cost the worker more than the events (a year replayed in 40 s
  refitted ~365 times); live, a day of event time takes a day, and this never binds;
* after a restart with fits to keep (from the checkpoint, or the last snapshot), not
  before the sample has been filling for a day of event time: the sample is not checkpointed (300,000 summaries would be
  ~15 MB, over Kafka's 1 MB message limit), and the customers sampled first after a
  restart are the active ones, a biased sample.

A fit that fails, or finds too few customers, keeps the previous parameters (:attr:`bgnbd`
and :attr:`gamma_gamma` hold the last fits that passed; :attr:`last_attempt` the outcomes of
the latest attempt, for logs and the snapshot).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .fitting import MIN_CUSTOMERS, SAMPLE_SIZE, Fit, fit_bgnbd, fit_gamma_gamma
from .summary import DAY_S, PurchaseSummary

PURCHASES = "_purchases"  # sample keys (stream_app/core/processing.py adds them)
KEY = "_key"
AT = "_at"
_FULL = 1 << 64


def customer_key(customer_id: str) -> int:
    """The 64-bit hash that stands for a customer in samples (BLAKE2b: the same on every
    worker and run, unlike Python's ``hash``)."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big")


def sample_fields(customer_id: str, summary: PurchaseSummary, at: float) -> dict[str, Any]:
    """What a training sample carries for the predictive models."""
    return {PURCHASES: list(summary), KEY: customer_key(customer_id), AT: at}


class PredictiveTrainer:
    def __init__(self, capacity: int = SAMPLE_SIZE, min_interval_s: float = 60.0) -> None:
        self.capacity = capacity
        self.min_interval_s = min_interval_s
        self.fitted_clock: float | None = None  # the caller's clock at the last passing fit
        self.threshold = _FULL  # customers with a key below it are in the sample
        self._row: dict[int, int] = {}
        self._cols = np.zeros((4, 1024))  # first_day, last_day, repeats, repeat_value
        self._keys = np.zeros(1024, dtype=np.uint64)
        self.now = 0.0  # the latest event time sampled
        self.filling_since: float | None = None  # event time of this instance's first sample
        self.bgnbd: Fit | None = None
        self.gamma_gamma: Fit | None = None
        self.last_attempt: dict[str, Fit] = {}
        self.attempted_at_size = 0
        self.fitted_day: int | None = None
        self.fitted_size = 0
        self.fits = 0  # fits attempted by this instance
        self.restored = False  # the fits in force came from a checkpoint or snapshot
        self.last_fit_s = 0.0  # wall seconds the latest attempt took (both models)

    def __len__(self) -> int:
        return len(self._row)

    # --- sampling --------------------------------------------------------------------------
    def observe(self, sample: Mapping[str, Any]) -> None:
        """Take a training sample's purchase summary (samples without one are ignored)."""
        summary = sample.get(PURCHASES)
        if summary is None:
            return
        key, at = int(sample[KEY]), float(sample[AT])
        self.now = max(self.now, at)
        if self.filling_since is None:
            self.filling_since = at
        if key >= self.threshold:
            return
        first, _, last, repeats, repeat_value = summary
        row = self._row.get(key)
        if row is None:
            row = len(self._row)
            if row == self._keys.size:
                self._cols = np.concatenate([self._cols, np.zeros_like(self._cols)], axis=1)
                self._keys = np.concatenate([self._keys, np.zeros_like(self._keys)])
            self._row[key] = row
            self._keys[row] = key
        self._cols[:, row] = (first, last, repeats, repeat_value)
        if len(self._row) > self.capacity:
            self._halve()

    def _halve(self) -> None:
        while len(self._row) > self.capacity:
            self.threshold //= 2
            n = len(self._row)
            keep = self._keys[:n] < np.uint64(self.threshold)
            self._keys = self._keys[:n][keep].copy()
            self._cols = self._cols[:, :n][:, keep].copy()
            self._row = {int(k): i for i, k in enumerate(self._keys.tolist())}

    def inputs(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, t_x, T, m_x)`` of the sample at event time ``now`` (days)."""
        n = len(self._row)
        first, last, x, value = self._cols[:, :n]
        t_x = last - first
        T = np.maximum(math.floor(now / DAY_S) - first, t_x)
        with np.errstate(divide="ignore", invalid="ignore"):
            m_x = np.where(x > 0, value / np.maximum(x, 1.0), 0.0)
        return x, t_x, T, m_x

    # --- fitting ---------------------------------------------------------------------------
    def due(self, clock: float | None = None) -> bool:
        """Whether a fit is due; ``clock``: the caller's clock (seconds), for the floor."""
        n = len(self._row)
        if n < MIN_CUSTOMERS:
            return False
        if self.bgnbd is None:
            return n >= self.attempted_at_size * 1.1
        if (clock is not None and self.fitted_clock is not None
                and clock - self.fitted_clock < self.min_interval_s):
            return False
        assert self.filling_since is not None
        if self.restored and self.now - self.filling_since < DAY_S:
            return False
        return (math.floor(self.now / DAY_S) != self.fitted_day
                or n >= self.fitted_size * 1.25)

    def maybe_fit(self, clock: float | None = None) -> bool:
        """Fit both models if due; True when a new BG/NBD or Gamma-Gamma fit passed.
        ``clock``: the caller's clock in seconds (the worker's wall clock), for the floor of
        ``min_interval_s`` between refits; None: no floor."""
        if not self.due(clock):
            return False
        now = self.now
        started = time.perf_counter()  # how long fits take (for logs), not event time
        x, t_x, T, m_x = self.inputs(now)
        bg = fit_bgnbd(x, t_x, T, fitted_at=now)
        gg = fit_gamma_gamma(x, m_x, fitted_at=now)
        self.last_fit_s = time.perf_counter() - started
        self.fits += 1
        self.last_attempt = {"bgnbd": bg, "gamma_gamma": gg}
        self.attempted_at_size = len(self._row)
        changed = False
        if bg.ok:
            self.bgnbd, changed, self.restored = bg, True, False
            self.fitted_clock = clock
            self.fitted_day, self.fitted_size = math.floor(now / DAY_S), len(self._row)
        if gg.ok and self.bgnbd is not None:
            self.gamma_gamma, changed = gg, True
        return changed

    # --- publishing and checkpoints --------------------------------------------------------
    def published(self) -> dict[str, Any]:
        """The snapshot's ``predictive`` part: the fits in force (null until one passed),
        the latest attempt's outcome and the sample's size."""
        return {
            "bgnbd": None if self.bgnbd is None else self.bgnbd.to_json(),
            "gamma_gamma": None if self.gamma_gamma is None else self.gamma_gamma.to_json(),
            "last_attempt": {name: {"status": fit.status, "reason": fit.reason,
                                    "customers": fit.customers}
                             for name, fit in self.last_attempt.items()},
            "sample": len(self._row),
            "fit_s": round(self.last_fit_s, 4),
        }

    def to_json(self) -> dict[str, Any]:
        """For the trainer's checkpoint: the fits in force, not the sample (see above)."""
        return {"bgnbd": None if self.bgnbd is None else self.bgnbd.to_json(),
                "gamma_gamma": None if self.gamma_gamma is None else self.gamma_gamma.to_json(),
                "fitted_day": self.fitted_day, "fitted_size": self.fitted_size}

    def restore(self, doc: Mapping[str, Any] | None) -> None:
        """Take the fits of a checkpoint (:meth:`to_json`) or of a published snapshot's
        ``predictive`` part; the sample starts empty and fills from new samples."""
        if not doc:
            return
        for name in ("bgnbd", "gamma_gamma"):
            if doc.get(name) is not None:
                fit = Fit.from_json(doc[name])
                if fit.ok:
                    setattr(self, name, fit)
                    self.restored = True
        if doc.get("fitted_day") is not None:
            self.fitted_day = int(doc["fitted_day"])
            self.fitted_size = int(doc.get("fitted_size", 0))
