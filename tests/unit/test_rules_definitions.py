"""Loading definitions (errors that point into the file), versions, and RuleSegmentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app.core.segmentation.clustering.trainer import SEGMENTATION as CLUSTERING
from stream_app.core.segmentation.rules import (
    DefinitionsError,
    RuleSegmentation,
    load_definitions,
    load_segmentations,
    parse_definitions,
)
from stream_app.core.segmentation.rules.definitions import RESERVED_NAMES
from stream_app.core.state.customer import DAY, CustomerState
from stream_app.core.state.features import features

T0 = 1_700_000_000.0

GOOD = """\
# two segmentations; comments and layout do not matter to the version
segmentations:
  - name: value
    description: by orders
    segments:
      - id: big
        name: Big
        when: {feature: orders, ">=": 5}
      - id: small
        name: Small
        when: {feature: orders, ">=": 1}
  - name: geographic
    segments:
      - id: dach
        name: DACH
        when:
          and:
            - {trait: country, in: [DE, AT, CH]}
            - {feature: orders_30d, ">=": 1.0}
"""


def definitions(text: str = GOOD, source: str = "segments.yaml") -> Any:
    return parse_definitions(text, source)


def failure(text: str, source: str = "segments.yaml") -> str:
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(text, source)
    return str(caught.value)


# --- loading and errors -----------------------------------------------------------------------

def test_loads_files_in_yaml_and_json(tmp_path: Path) -> None:
    as_yaml = tmp_path / "segments.yaml"
    as_yaml.write_text(GOOD)
    as_json = tmp_path / "segments.json"
    as_json.write_text(json.dumps(yaml.safe_load(GOOD)))
    a, b = load_definitions(as_yaml), load_definitions(as_json)
    assert [s.name for s in a.segmentations] == ["value", "geographic"]
    assert [seg.id for seg in a.segmentations[0].segments] == ["big", "small"]
    assert a.version == b.version


def test_unknown_feature_is_located_by_line_and_path() -> None:
    text = GOOD.replace("orders_30d", "ordrs_30d")
    assert failure(text) == (
        "segments.yaml:19: segmentations[1] (geographic) -> segments[0] (dach) -> when.and[1]:"
        " unknown feature 'ordrs_30d' (did you mean 'orders_30d'?)")


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("id: small", "id: big"),
     "segments.yaml:3: segmentations[0] (value): duplicate segment id 'big'"
     " (segments[0] and segments[1])"),
    (GOOD.replace("name: geographic", "name: value"),
     "segments.yaml:2: duplicate segmentation name 'value' (segmentations[0] and segmentations[1])"),
    (GOOD.replace("name: value", "name: behavior"),
     "segments.yaml:3: segmentations[0] (behavior): the name 'behavior' is reserved for the"
     " learned clustering; choose another"),
    (GOOD.replace("id: dach", "id: DACH"),
     "segments.yaml:14: segmentations[1] (geographic) -> segments[0] (DACH) -> id: 'DACH' is not"
     " a valid id"),
    (GOOD.replace("        when: {feature: orders, \">=\": 1}\n", ""),
     "segments.yaml:9: segmentations[0] (value) -> segments[1] (small) -> when: Field required"),
    (GOOD.replace("    description: by orders", "    descripton: by orders"),
     "segments.yaml:3: segmentations[0] (value): unexpected key 'descripton'"
     " (did you mean 'description'?)"),
    (GOOD.replace("id: small", "id: small\n        when: {feature: orders, \">\": 0}"),
     "segments.yaml:12: segmentations[0] (value) -> segments[1] (small): duplicate key 'when'"),
    ("segmentations:\n  - name: x\n    segments: []\n",
     "segments.yaml:3: segmentations[0] (x) -> segments: List should have at least 1 item"),
    ("segmentations:\n  - name: x\n    segments: [\n", "segments.yaml:4:1: not valid YAML"),
    ("- name: x\n", "segments.yaml: expected a mapping with a 'segmentations' list"),
    ("", "segments.yaml: expected a mapping with a 'segmentations' list"),
])
def test_errors_say_where_and_why(text: str, message: str) -> None:
    assert failure(text).startswith(message)


def test_every_error_is_reported() -> None:
    text = GOOD.replace("orders_30d", "ordrs_30d").replace('orders, ">=": 5', 'orders, ">=": x')
    lines = failure(text).splitlines()
    assert len(lines) == 2
    assert "segments[0] (big) -> when.>=: Input should be a valid number (got 'x')" in lines[0]
    assert "unknown feature 'ordrs_30d'" in lines[1]


def test_json_errors(tmp_path: Path) -> None:
    assert failure('{"segmentations": [}', "s.json").startswith("s.json:1:20: not valid JSON")
    assert failure('{"segmentations": [], "segmentations": []}', "s.json") == (
        "s.json: duplicate key 'segmentations'")
    doc = yaml.safe_load(GOOD)
    doc["segmentations"][0]["segments"][0]["when"] = {"feature": "order", ">=": 5}
    assert failure(json.dumps(doc), "s.json") == (
        "s.json: segmentations[0] (value) -> segments[0] (big) -> when: unknown feature 'order'"
        " (did you mean 'orders'?)")


def test_an_unreadable_file_is_a_definitions_error(tmp_path: Path) -> None:
    with pytest.raises(DefinitionsError, match="cannot read the definitions"):
        load_definitions(tmp_path / "missing.yaml")


def test_the_reserved_name_is_the_clustering_one() -> None:
    assert CLUSTERING in RESERVED_NAMES


# --- versions ---------------------------------------------------------------------------------

def test_versions_ignore_formatting_and_follow_content() -> None:
    base = definitions()
    restyled = definitions(
        "segmentations:\n" + "".join(
            f"- {json.dumps(seg)}\n" for seg in yaml.safe_load(GOOD)["segmentations"]))
    assert restyled.version == base.version
    assert definitions(GOOD.replace('">=": 1.0', '">=": 1')).version == base.version

    edited = definitions(GOOD.replace("[DE, AT, CH]", "[DE, AT]"))
    assert edited.version != base.version
    # per segmentation: only the edited one moves
    assert edited.segmentations[0].version == base.segmentations[0].version
    assert edited.segmentations[1].version != base.segmentations[1].version
    renamed = definitions(GOOD.replace("name: Big", "name: Large"))
    assert renamed.segmentations[0].version != base.segmentations[0].version


# --- RuleSegmentation -------------------------------------------------------------------------

def _segmentations(text: str = GOOD) -> dict[str, RuleSegmentation]:
    return {s.name: RuleSegmentation(s) for s in definitions(text).segmentations}


def _customer(orders: int, country: str | None = None) -> CustomerState:
    ts = [[T0 - i * DAY, 10.0] for i in range(orders)][::-1]
    return CustomerState("c1", first_seen=T0 - 60 * DAY, last_seen=T0, orders=orders,
                         revenue=10.0 * orders, last_order_at=T0 if orders else None,
                         recent_orders=ts, traits={"country": country} if country else {})


def test_first_matching_segment_wins_with_why() -> None:
    seg = _segmentations()["value"]
    s = _customer(6)
    d = seg.decide(s, features(s, T0), T0, None, explain=True)
    assert (d.segment, d.segment_name, d.reason) == ("big", "Big", "orders >= 5")
    assert d.why == {"matched": "orders >= 5", "not_matched": ()}
    assert d.version == d.aux == seg.version == definitions().segmentations[0].version
    s = _customer(2)
    d = seg.decide(s, features(s, T0), T0, None, explain=True)
    assert (d.segment, d.reason) == ("small", "orders >= 1")
    assert d.why == {"matched": "orders >= 1", "not_matched": ("big",)}


def test_no_segment_when_nothing_matches() -> None:
    seg = _segmentations()["geographic"]
    s = _customer(1, country="FR")
    d = seg.decide(s, features(s, T0), T0, None, explain=True)
    assert (d.segment, d.segment_name, d.reason) == (None, None, "no segment matches")
    assert d.why == {"matched": None, "not_matched": ("dach",)}


def test_a_change_caused_by_new_definitions_says_so() -> None:
    old = _segmentations()["geographic"]
    new = _segmentations(GOOD.replace("[DE, AT, CH]", "[DE, AT, CH, FR]"))["geographic"]
    s = _customer(1, country="FR")
    first = old.decide(s, features(s, T0), T0, None, explain=True)
    assert first.segment is None

    d = new.decide(s, features(s, T0), T0, first.aux, explain=True)
    assert d.segment == "dach"
    assert d.reason == (f"definition changed ({old.version:08x} -> {new.version:08x}):"
                        " country in [DE, AT, CH, FR] and orders_30d >= 1")
    s.segments["geographic"] = "dach"  # what the worker stores
    assert new.decide(s, features(s, T0), T0, d.aux, explain=True).reason.startswith("country in")

    # a customer whose membership the new definitions do not change gets the plain reason
    de = _customer(1, country="DE")
    de.segments["geographic"] = "dach"
    assert new.decide(de, features(de, T0), T0, first.aux, explain=True).reason.startswith("country in")
    # ... and so does one leaving for another reason (time passing) under the same version
    later = T0 + 31 * DAY
    assert new.decide(s, features(s, later), later, d.aux, explain=True).reason == "no segment matches"


def test_describe_lists_segments_in_order_with_their_conditions() -> None:
    seg = _segmentations()["geographic"]
    assert seg.describe() == {
        "segmentation": "geographic", "kind": "rules", "description": "",
        "version": seg.version, "time_sensitive": True,
        "segments": [{"id": "dach", "name": "DACH", "description": "",
                      "when": "country in [DE, AT, CH] and orders_30d >= 1"}],
    }


def test_time_sensitivity_per_segmentation() -> None:
    segs = _segmentations()
    assert segs["geographic"].time_sensitive  # orders_30d moves with time
    assert not segs["value"].time_sensitive


def test_load_segmentations_from_a_file_or_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "segments.yaml"
    path.write_text(GOOD)
    assert [s.name for s in load_segmentations(path)] == ["value", "geographic"]
    assert [s.name for s in load_segmentations(None)] == [
        s.name for s in load_definitions(None).segmentations]
