"""Live definitions in the pure parts: checking and versioning a new text
(stream_app.core.segmentation.rules.live) and the backfill of stored customers under it
(Step.redefine, Step.backfill), with a plain dict as the table."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stream_app.core.processing import Message, Step
from stream_app.core.segmentation.rules import DefinitionsError
from stream_app.core.segmentation.rules.live import (
    MAX_DEFINITIONS_BYTES,
    decode_record,
    encode_record,
    format_of,
    parse_set,
)
from stream_app.core.state.customer import CustomerState

T0 = 1_780_000_000.0
WALL = T0 + 86400

V1 = """
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 100}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
  - name: legacy
    segments:
      - {id: buyer, name: Buyer, when: {feature: orders, ">=": 1}}
"""
# spend's threshold moves, legacy is gone, tier is new
V2 = """
segmentations:
  - name: spend
    segments:
      - {id: big, name: Big spender, when: {feature: revenue, ">=": 50}}
      - {id: small, name: Small spender, when: {feature: revenue, ">": 0}}
  - name: tier
    segments:
      - {id: gold, name: Gold, when: {feature: orders, ">=": 2}}
"""


def order(cid: str, ts: float, total: float, mid: str) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": cid, "messageId": mid,
            "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(),
            "properties": {"total": total}}


def make_step(text: str) -> Step:
    return Step(input_topic="in", routed_topic="routed", partitions=1,
                segmentations=parse_set(text, format="yaml", source="file").segmentations)


def feed(step: Step, table: dict[str, Any], events: list[dict[str, Any]], first: int = 0
         ) -> list[dict]:
    msgs = [Message("in", 0, first + i, ev["userId"].encode(), orjson.dumps(ev), T0)
            for i, ev in enumerate(events)]
    return [c.document() for c in step.run(0, msgs, table, WALL).changes]


def stored_under_v1() -> tuple[Step, dict[str, Any], list[dict]]:
    step = make_step(V1)
    table: dict[str, Any] = {}
    before = feed(step, table, [
        order("a", T0, 60, "a1"),                       # small under v1, big under v2
        order("b", T0, 30, "b1"), order("b", T0 + 60, 10, "b2"),  # small both, gold in tier
        order("c", T0, 150, "c1"),                      # big both
    ])
    return step, table, before


def redefine(step: Step, text: str) -> int:
    new = parse_set(text, format="yaml", source="api")
    step.redefine(new.segmentations, new.version)
    return new.version


# --- checking and versions ------------------------------------------------------------------

def test_version_ignores_layout_and_format_but_not_content() -> None:
    yaml_set = parse_set(V1, format="yaml", source="file")
    as_json = orjson.dumps(yaml_set.definitions.model_dump(mode="json", by_alias=True,
                                                            exclude_none=True))
    assert parse_set(as_json, format="json", source="api").version == yaml_set.version
    assert parse_set("# a comment\n" + V1, format="yaml", source="file").version == \
        yaml_set.version
    assert parse_set(V2, format="yaml", source="file").version != yaml_set.version


def test_invalid_definitions_are_refused_with_their_place() -> None:
    bad = V1.replace("feature: orders", "feature: ordrs")
    with pytest.raises(DefinitionsError, match=r"request.yaml:\d+: .*legacy.*'orders'"):
        parse_set(bad, format="yaml", source="api", name="request")
    with pytest.raises(DefinitionsError, match="not valid JSON"):
        parse_set(b"{", format="json", source="api")
    with pytest.raises(DefinitionsError, match="not UTF-8"):
        parse_set(b"segmentations: [\xff]", format="yaml", source="api")
    with pytest.raises(DefinitionsError, match="more than"):
        parse_set(b"#" * (MAX_DEFINITIONS_BYTES + 1), format="yaml", source="api")
    with pytest.raises(DefinitionsError, match="reserved"):
        parse_set(V1.replace("name: legacy", "name: behavior"), format="yaml", source="api")


def test_format_from_file_name_or_content_type() -> None:
    assert format_of("/etc/segments.JSON") == "json"
    assert format_of("application/json; charset=utf-8") == "json"
    assert format_of("application/yaml") == "yaml"
    assert format_of("segments.yaml") == "yaml"


def test_topic_record_round_trip_and_checks() -> None:
    defs = parse_set(V2, format="yaml", source="api")
    value = encode_record(defs, file_version=7, published_at=T0, published_by="w1")
    got = decode_record(value)
    assert got.defs.version == defs.version and got.defs.text == V2
    assert (got.file_version, got.published_at, got.published_by) == (7, T0, "w1")
    assert got.defs.source == "api"
    forged = orjson.loads(value)
    forged["version"] = defs.version + 1
    with pytest.raises(DefinitionsError, match="does not match"):
        decode_record(orjson.dumps(forged))
    forged = orjson.loads(value)
    forged["text"] = V2.replace("orders", "ordrs")
    with pytest.raises(DefinitionsError):
        decode_record(orjson.dumps(forged))
    with pytest.raises(DefinitionsError, match="not JSON"):
        decode_record(b"\x80pickle")


# --- the backfill -------------------------------------------------------------------------------

def test_backfill_moves_stored_customers_and_says_why() -> None:
    step, table, before = stored_under_v1()
    v1 = {seg.name: seg.version for seg in step.redefinable}
    v2 = redefine(step, V2)
    new = {seg.name: seg.version for seg in step.redefinable}
    res = step.backfill(0, table, sorted(table), WALL + 5)
    got = {(c.record.customer_id, c.record.segmentation): c.document() for c in res.changes}
    assert set(got) == {("a", "spend"), ("a", "legacy"), ("b", "legacy"), ("b", "tier"),
                        ("c", "legacy")}
    a = got[("a", "spend")]
    assert (a["previous_segment"], a["segment"]) == ("small", "big")
    assert a["reason"] == (f"definition changed ({v1['spend']:08x} -> {new['spend']:08x}): "
                           "revenue >= 50")
    assert a["model_version"] == new["spend"]
    gold = got[("b", "tier")]
    assert (gold["previous_segment"], gold["segment"]) == (None, "gold")
    assert gold["reason"] == f"definition changed (new -> {new['tier']:08x}): orders >= 2"
    for cid in "abc":  # the removed segmentation: its members leave
        gone = got[(cid, "legacy")]
        assert (gone["previous_segment"], gone["segment"]) == ("buyer", None)
        assert gone["reason"].startswith(f"definition changed ({v1['legacy']:08x} -> removed)")
        assert gone["model_version"] == v2
        assert "legacy" not in table[cid].segments and "legacy" not in table[cid].segment_aux
    # occurred at the time the customer was last evaluated: only the definitions moved
    assert got[("a", "spend")]["occurred_at"].startswith(
        datetime.fromtimestamp(T0, UTC).date().isoformat())
    assert table["a"].segments == {"spend": "big"}
    assert table["b"].segments == {"spend": "small", "tier": "gold"}
    ids = [c["change_id"] for c in before] + [c.record.change_id for c in res.changes]
    assert len(ids) == len(set(ids))
    # brought over: a second pass has nothing to do
    again = step.backfill(0, table, sorted(table), WALL + 10)
    assert again.changes == [] and again.written == 0


def test_backfill_replayed_after_a_crash_sends_the_same_changes() -> None:
    step, table, _ = stored_under_v1()
    redefine(step, V2)
    lost = copy.deepcopy(table)  # the state the crash left: the pass's writes never stored
    first = step.backfill(0, table, sorted(table), WALL + 5)
    replay = step.backfill(0, lost, sorted(lost), WALL + 99)
    assert [c.document() for c in replay.changes] == [c.document() for c in first.changes]


def test_backfill_changes_ids_after_moving_back() -> None:
    """v1 -> v2 -> v1: every move is a change of its own, none reuses an id."""
    step, table, before = stored_under_v1()
    ids = [c["change_id"] for c in before]
    for text in (V2, V1, V2):
        redefine(step, text)
        ids += [c.record.change_id for c in step.backfill(0, table, sorted(table), WALL)
                .changes]
    assert len(ids) == len(set(ids)) and len(ids) > len(before) + 10


def test_events_after_the_switch_use_the_new_definitions_and_backfill_skips_them() -> None:
    step, table, _ = stored_under_v1()
    redefine(step, V2)
    after = feed(step, table, [order("a", T0 + 120, 1, "a2")], first=100)
    spend = [c for c in after if c["segmentation"] == "spend"]
    assert [c["segment"] for c in spend] == ["big"]
    assert spend[0]["reason"].startswith("definition changed (")
    res = step.backfill(0, table, ["a"], WALL)
    # only the removed segmentation is left to do for a
    assert [(c.record.segmentation, c.record.segment) for c in res.changes] == [
        ("legacy", None)]


def test_redefine_keeps_other_segmentations_and_time_sensitivity() -> None:
    step = make_step(V1)
    assert [seg.name for seg in step.timed] == []
    redefine(step, V2 + """
  - name: recency
    segments:
      - {id: recent, name: Recent, when: {feature: days_since_seen, "<=": 30}}
""")
    assert [seg.name for seg in step.segmentations] == ["spend", "tier", "recency"]
    assert [seg.name for seg in step.timed] == ["recency"]


def test_backfill_leaves_erasure_markers_links_and_unknown_bookkeeping() -> None:
    step, table, _ = stored_under_v1()
    table["a"].segment_aux["_other"] = 1.5  # someone else's bookkeeping, not a rule version
    redefine(step, V2)
    step.backfill(0, table, sorted(table), WALL)
    assert table["a"].segment_aux["_other"] == 1.5
    assert isinstance(table["a"], CustomerState)
