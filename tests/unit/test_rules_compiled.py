"""The generated evaluator of each rule segmentation agrees with a plain interpreter.

The worker asks a segmentation's :meth:`RuleSegmentation.decide` after every applied event;
that runs the generated ``first_match`` (``compiled.py``) and, only when the segment moves,
the generated ``explain`` for the reason. Both must say what the language means for every
customer (the reference: ``rules_reference.py``, a few readable lines per condition kind),
or a change would be missed, invented or misexplained; and the cheap answer (None: nothing
moves) must agree with the explained one. Checked here on customers simulated event by event
(the shipped defaults and a file using every operator), at each event's time and later, as
the time tick evaluates them.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stream_app.core.events.parse import decode
from stream_app.core.predictive import BgNbdParams, GammaGammaParams
from stream_app.core.predictive.live import LivePredictions
from stream_app.core.segmentation.rules import load_segmentations
from stream_app.core.segmentation.rules.definitions import parse_definitions
from stream_app.core.segmentation.rules.segmentation import RuleSegmentation
from stream_app.core.state.customer import (
    DAY,
    CustomerState,
    StateConfig,
    apply_in_place,
    new_state,
)
from stream_app.core.state.features import features
from stream_app.simulate import simulate

from . import rules_reference as reference

EVERY_OPERATOR = """
segmentations:
  - name: mixed
    segments:
      - id: fading
        name: Fading (predictions may be None)
        when:
          and:
            - {feature: p_alive, between: [0.05, 0.8]}
            - not: {feature: expected_revenue_90d, "<": 20}
      - id: nordic_runner
        name: Nordic runner
        when:
          and:
            - {trait: country, in: [SE, 'NO', DK, FI]}
            - {trait: interests, contains any: [running, outdoors]}
      - id: young_not_web
        name: Young, not on the web
        when:
          and:
            - {trait: age, between: [18, 34]}
            - {feature: preferred_channel, "!=": web}
      - id: big_week
        name: Big week
        when:
          or:
            - {window: {metric: revenue, days: 7}, ">": 150}
            - {window: {metric: orders, days: 14}, ">=": 2}
      - id: no_gender
        name: No gender given
        when:
          and:
            - {trait: gender, exists: false}
            - {feature: is_anonymous, "==": false}
      - id: not_books
        name: Anything but books
        when:
          and:
            - {feature: top_category, not in: [books, grocery]}
            - not: {feature: orders, "<": 1}
            - {feature: cart_abandon_rate, ">=": 0.2}
      - id: female_or_tech
        name: Female or tech
        when:
          or:
            - {trait: gender, "==": FEMALE}
            - {trait: interests, contains: tech}
            - {feature: email_click_rate, ">": 0.3}
"""


MODEL = LivePredictions.fixed(BgNbdParams(0.5, 20.0, 0.8, 3.0), GammaGammaParams(6.0, 4.0, 15.0))


def _segmentations(which: str) -> list[RuleSegmentation]:
    if which == "defaults":
        return load_segmentations()
    defs = parse_definitions(EVERY_OPERATOR, "test")
    return [RuleSegmentation(seg) for seg in defs.segmentations]


def _histories(customers: int, seed: int) -> dict[str, list[Any]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: dict[str, list[Any]] = {}
    for event in simulate(customers=customers, days=120, seed=seed, start=start):
        recs, rejects = decode(orjson.dumps(event), now=start.timestamp() + 400 * DAY,
                               fallback_ts=start.timestamp())
        assert not rejects
        for rec in recs:
            out.setdefault(rec.customer_id, []).append(rec)
    return out


@pytest.mark.parametrize("which", ["defaults", "every_operator"])
def test_decide_agrees_with_the_reference_and_with_itself_explained(which: str) -> None:
    segs = _segmentations(which)
    cfg = StateConfig()
    checked = moved = 0
    seen_segments: set[tuple[str, str | None]] = set()
    for n, history in enumerate(itertools.islice(_histories(60, seed=5).values(), 60)):
        # predictions (numbers, or None: no model, no order) as the step adds them
        model = MODEL if n % 3 else LivePredictions()
        state: CustomerState | None = None
        aux: dict[str, Any] = {}
        for rec in history:
            if state is None:
                state = new_state(rec)
            traits = state.traits.copy()
            if not apply_in_place(state, rec, cfg):
                continue
            # at the event, and later (what a time tick sees)
            for now in (state.last_seen, state.last_seen + 45 * DAY):
                f = {**features(state, now, cfg), **model.of(state.purchases, now)}
                for seg in segs:
                    before = (state.segments.get(seg.name), aux.get(seg.name))
                    decided = seg.decide(state, f, now, before[1],
                                         traits_changed=state.traits != traits)
                    evaluated = seg.decide(state, f, now, before[1], explain=True)
                    assert evaluated is not None
                    i, text = reference.first_match(
                        [segment.when for segment in seg.definition.segments], state, f, now)
                    assert evaluated.segment == (seg.definition.segments[i].id if i >= 0
                                                 else None)
                    assert evaluated.why["matched"] == text
                    if decided is None:
                        assert (evaluated.segment, evaluated.aux) == before
                    else:
                        assert decided == evaluated
                    checked += 1
                    seen_segments.add((seg.name, evaluated.segment))
                    if now == state.last_seen:  # the event's own evaluation is kept
                        moved += evaluated.segment != before[0]
                        aux[seg.name] = evaluated.aux
                        if evaluated.segment is None:
                            state.segments.pop(seg.name, None)
                        else:
                            state.segments[seg.name] = evaluated.segment
    assert checked > 10_000 and moved > 100
    # the walk reached most segments, so most generated branches were taken
    reachable = {(s.name, seg.id) for s in segs for seg in s.definition.segments}
    assert len(seen_segments & reachable) >= 0.6 * len(reachable)
