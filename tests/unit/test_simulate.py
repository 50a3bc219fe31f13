"""The persona simulator: deterministic, valid spec events, truthful ground truth."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import islice

import orjson
import pytest

from stream_app.core.events import interaction as ix
from stream_app.core.events.parse import decode
from stream_app.simulate import (
    DAY,
    PERSONA_KEYS,
    PERSONAS,
    Shift,
    population,
    shifts_for,
    simulate,
)

SMALL = {"customers": 120, "days": 20.0, "seed": 4}


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(simulate(**SMALL))


@pytest.fixture(scope="module")
def decoded(events: list[dict]) -> list[ix.Interaction]:
    out = []
    for event in events:
        recs, rejections = decode(orjson.dumps(event), now=2e9, fallback_ts=0.0)
        assert not rejections, rejections
        out.extend(recs)
    return out


def test_same_arguments_same_stream_and_truth(events: list[dict]) -> None:
    again = simulate(**SMALL)
    assert list(again) == events
    assert list(again) == events  # iterating twice replays, too
    assert again.ground_truth == simulate(**SMALL).ground_truth


def test_another_seed_another_stream(events: list[dict]) -> None:
    other = simulate(**{**SMALL, "seed": 5})
    assert list(islice(other, 200)) != events[:200]


def test_events_are_valid_spec_events_in_event_time_order(
        events: list[dict], decoded: list[ix.Interaction]) -> None:
    assert len(decoded) == len(events) > 1000
    times = [rec.ts for rec in decoded]
    assert times == sorted(times)
    start = simulate(**SMALL).start.timestamp()
    assert start <= times[0] and times[-1] < start + SMALL["days"] * DAY
    assert len({e["messageId"] for e in events}) == len(events)
    kinds = Counter(rec.kind for rec in decoded)
    for kind in (ix.PRODUCT_VIEW, ix.CART_ADD, ix.CHECKOUT, ix.ORDER, ix.EMAIL_OPEN,
                 ix.EMAIL_CLICK, ix.PAGE_VIEW, ix.SCREEN_VIEW, ix.IDENTIFY):
        assert kinds[kind] > 0, kind
    orders = [rec for rec in decoded if rec.kind == ix.ORDER]
    assert all(rec.amount > 0 and rec.categories for rec in orders)
    identify = next(e for e in events if e["type"] == "identify")
    assert {"age", "gender", "income", "address", "interests"} <= set(identify["traits"])


def test_ground_truth_covers_every_customer_with_the_planned_mix(
        decoded: list[ix.Interaction]) -> None:
    sim = simulate(**SMALL)
    assert set(sim.ground_truth) == {ix.raw_id(rec.customer_id) for rec in decoded}
    assert sim.ground_truth == population(SMALL["customers"], SMALL["seed"])
    counts = Counter(sim.ground_truth.values())
    for persona in PERSONAS:
        assert counts[persona.key] == pytest.approx(SMALL["customers"] * persona.share, abs=1)
    prospects = [c for c in sim.ground_truth if c.startswith("anon-")]
    assert prospects and {sim.ground_truth[c] for c in prospects} == {"window_shoppers"}


def test_personas_behave_as_described(decoded: list[ix.Interaction]) -> None:
    truth = simulate(**SMALL).ground_truth
    orders: dict[str, int] = defaultdict(int)
    first_seen: dict[str, float] = {}
    for rec in decoded:
        first_seen.setdefault(rec.customer_id, rec.ts)
        orders[rec.customer_id] += rec.kind == ix.ORDER
    by = defaultdict(list)
    for cid, persona in truth.items():
        by[persona].append(cid)
    assert all(orders[c] == 0 for c in by["window_shoppers"])
    assert all(orders[c] == 1 for c in by["lapsing_one_time"])
    assert all(1 <= orders[c] <= 2 for c in by["new_customers"])
    start = simulate(**SMALL).start.timestamp()
    late = start + 0.85 * SMALL["days"] * DAY
    assert all(first_seen[c] >= late for c in by["new_customers"])
    mean = {p: sum(orders[c] for c in by[p]) / len(by[p]) for p in PERSONA_KEYS}
    assert mean["champions"] > 2 * mean["loyal_regulars"] > 0


def test_shift_changes_behaviour_and_ground_truth() -> None:
    initial = population(200, seed=2)
    shifts = shifts_for(initial, share=0.5, day=10.0, source="window_shoppers",
                        target="champions", seed=2)
    assert shifts and all(not s.customer_id.startswith("anon-") for s in shifts)
    sim = simulate(customers=200, days=20.0, seed=2, shifts=shifts)
    shifted = {s.customer_id for s in shifts}
    assert all(sim.ground_truth[c] == "champions" for c in shifted)
    assert all(sim.initial[c] == "window_shoppers" for c in shifted)
    switch = sim.start.timestamp() + 10.0 * DAY
    before = after = 0
    for event in sim:
        if event.get("event") == "Order Completed" and event.get("userId") in shifted:
            recs, _ = decode(orjson.dumps(event), now=2e9, fallback_ts=0.0)
            before += recs[0].ts < switch
            after += recs[0].ts >= switch
    assert before == 0 and after > len(shifted)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        simulate(customers=0)
    with pytest.raises(ValueError):
        simulate(customers=10, shifts=[Shift("nobody", 1.0, "champions")])
