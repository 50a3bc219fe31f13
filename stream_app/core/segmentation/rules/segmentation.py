"""Named rule segmentations: the first segment whose condition matches wins.

One :class:`RuleSegmentation` per segmentation of the definitions file, each meeting the
:class:`~stream_app.core.segmentation.base.Segmentation` contract. Conditions are compiled to
generated Python once, at load (:mod:`.compiled`), so an evaluation is one function call.

The per-customer ``aux`` is the version of the segmentation's definition the customer was
last evaluated under. When it differs from the current one and the membership changes, the
reason starts with ``definition changed``: a consumer can tell a re-definition (everyone
moving at once, on the next event or time tick) from a change in the customer's behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...state.customer import CustomerState
from ..base import Decision
from .compiled import compile_rules, subjects
from .definitions import SegmentationDef, load_definitions
from .fields import NULLABLE_FEATURES

NO_MATCH = "no segment matches"
REDEFINED = "definition changed"  # the reason's prefix when the definition moved a customer


class RuleSegmentation:
    """Implements :class:`stream_app.core.segmentation.base.Segmentation` for one definition."""

    def __init__(self, definition: SegmentationDef) -> None:
        self.definition = definition
        self.name = definition.name
        # Whether time passing alone can move a customer: the worker's time ticks re-evaluate
        # only the segmentations where this is True.
        self.time_sensitive = definition.time_sensitive
        self._version = definition.version
        self._ids = tuple(seg.id for seg in definition.segments)
        self._names = tuple(seg.name for seg in definition.segments)
        rules = compile_rules([seg.when for seg in definition.segments], self.name)
        self._first_match, self._explain = rules.first_match, rules.explain
        # Reads nothing but profile traits (age band, country, interests ...): its segment
        # can only move when the traits do.
        self.traits_only = all(kind == "trait" for seg in definition.segments
                               for kind, _ in subjects(seg.when))
        # Reads a prediction (p_alive, ...): new predictive parameters can move it.
        self.reads_predictions = any(kind == "feature" and name in NULLABLE_FEATURES
                                     for seg in definition.segments
                                     for kind, name in subjects(seg.when))

    @property
    def version(self) -> int:
        return self._version

    def decide(self, state: CustomerState, feats: Mapping[str, Any], now: float, aux: Any,
               traits_changed: bool = True, explain: bool = False) -> Decision | None:
        """The segment of the first matching segment's condition (None: none matches), or
        None when that keeps the customer's segment and ``aux`` (unless ``explain``: then
        always the :class:`Decision`, with why, for ``GET /customers/{id}``).

        The worker's call after every applied event: the common case, nothing moves, costs
        one generated function call and builds no :class:`Decision`. ``traits_changed=False``
        is the caller's promise that the traits are the ones this segmentation was last
        evaluated on (``aux`` says under which version): then a segmentation of traits alone
        has nothing to look at.
        """
        current = type(aux) is int and aux == self._version  # else the Decision says more
        if current and not explain and self.traits_only and not traits_changed:
            return None
        i = self._first_match(state, feats, now)
        segment = self._ids[i] if i >= 0 else None
        if current and not explain and segment == state.segments.get(self.name):
            return None
        if i < 0:
            return self._decide(state, None, None, NO_MATCH,
                                {"matched": None, "not_matched": self._ids}, aux)
        matched = self._explain(i, state, feats, now)
        return self._decide(state, segment, self._names[i], matched,
                            {"matched": matched, "not_matched": self._ids[:i]}, aux)

    def _decide(self, state: CustomerState, segment: str | None, name: str | None,
                reason: str, why: dict[str, Any], aux: Any) -> Decision:
        if (isinstance(aux, int) and aux != self._version
                and segment != state.segments.get(self.name)):
            reason = f"{REDEFINED} ({aux:08x} -> {self._version:08x}): {reason}"
        return Decision(segment, name, self._version, reason, why, aux=self._version)

    def describe(self) -> dict[str, Any]:
        """The segments in evaluation order with their conditions, for GET /segments."""
        d = self.definition
        return {
            "segmentation": self.name,
            "kind": "rules",
            "description": d.description,
            "version": self._version,
            "time_sensitive": self.time_sensitive,
            "segments": [{"id": seg.id, "name": seg.name, "description": seg.description,
                          "when": seg.when.text} for seg in d.segments],
        }


def load_segmentations(path: str | Path | None = None) -> list[RuleSegmentation]:
    """The rule segmentations of a definitions file (``None``: the shipped defaults).

    Raises :class:`~.definitions.DefinitionsError` with located messages when the file is
    unusable, so a worker refuses to start rather than segmenting wrongly.
    """
    return [RuleSegmentation(seg) for seg in load_definitions(path).segmentations]
