"""Re-scoring customers when a new behavioural model version is loaded.

Without it a customer is scored by a new model only at its next event or time tick: after a
replay, customers sat without a segment, or in ids of an older version, until the ticks
caught up (~75 s in the report of issue 14). Pure, as :meth:`Step.tick` is: the worker runs
it under its state lock, chunk by chunk (:func:`stream_app.modeling.rescore_all`); the
evaluation engine runs it after each snapshot.

Each customer is evaluated at its own last evaluation time (its last event or tick), not at
a new time: only the model moved, so no time-driven segment moves with it. Hysteresis holds
as for any evaluation: a customer without a segment, or whose segment was retired, gets one
at once; one whose segment lives on moves only on confirmed evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

from .processing import Change, Step, StepResult
from .segmentation.base import Segmentation
from .state.customer import CustomerState


def rescore(step: Step, customers: MutableMapping[str, Any], keys: Iterable[str],
            segmentation: Segmentation | Sequence[Segmentation], wall: float) -> StepResult:
    """Evaluate ``segmentation`` (or several) for the customer states among ``keys``; a
    state is written back only when a segment or its bookkeeping changed. New predictive
    parameters re-score the segmentations whose rules read predictions this way too."""
    segmentations = ([segmentation] if not isinstance(segmentation, Sequence)
                     else list(segmentation))
    res = StepResult()
    for key in keys:
        stored = customers.get(key)
        if type(stored) is not CustomerState:
            continue
        state = stored.copy()
        out: list[Change] = []
        step.evaluate(state, max(state.last_seen, state.evaluated_at), wall, out,
                      segmentations=segmentations)
        if out or state.segment_aux != stored.segment_aux:
            customers[key] = state
            res.written += 1
            res.changes.extend(out)
    return res
