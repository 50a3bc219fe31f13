"""The memberships records the step returns (the compacted ``segment-memberships`` topic): read
as the topic is compacted (the newest record per key, a tombstone removing it), they equal
every customer's segments in the tables, after merges, an erasure, ticks and a full replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream_app.core import routing
from stream_app.core.processing import MembershipUpdate, StepResult, membership_bytes
from stream_app.core.state.customer import DAY, CustomerState

from .test_processing import (
    ANON,
    P_USER,
    ROUTED,
    T0,
    USER,
    WALL,
    Cluster,
    identity_story,
    new_step,
    page,
    pick,
    run_one,
    track,
)
from .test_schemas import validator


class Recorded(Cluster):
    """A cluster that keeps the memberships records too, as the topic would have them."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.memberships: list[MembershipUpdate] = []

    def _absorb_result(self, res: StepResult) -> None:
        super()._absorb_result(res)
        changed = {c.customer_id for c in res.changes}
        assert changed <= {m.customer_id for m in res.memberships}
        self.memberships += res.memberships

    def erase(self, cid: str, request: str) -> None:
        p = routing.partition_of(cid, self.n)
        self.produce(ROUTED, p, cid.encode(), routing.erase_op(cid, request), WALL)

    def tick(self, now: float) -> None:
        for p in range(self.n):
            self._absorb_result(self.step.tick(self.customers[p], list(self.customers[p]), now,
                                               WALL, erased_keep_s=1e9))


def compacted(updates: list[MembershipUpdate]) -> dict[str, dict[str, Any]]:
    """What a reader of the compacted topic ends with: the newest value per key."""
    out: dict[str, dict[str, Any]] = {}
    for u in updates:
        value = membership_bytes(u)
        if value is None:
            out.pop(u.customer_id, None)
        else:
            doc = orjson.loads(value)
            validator("segment-membership.schema.json").validate(doc)
            assert doc["customer_id"] == u.customer_id
            out[u.customer_id] = doc
    return out


def tables_view(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every customer state's segments, each segmentation in force listed (null: none)."""
    names = [seg.name for seg in cluster.step.segmentations]
    out = {}
    for table in cluster.customers:
        for cid, entry in table.items():
            if type(entry) is CustomerState:
                out[cid] = {**dict.fromkeys(names), **entry.segments}
    return out


def assert_topic_matches_tables(cluster: Recorded) -> dict[str, dict[str, Any]]:
    topic = compacted(cluster.memberships)
    tables = tables_view(cluster)
    # a customer with a record holds just those segments; every customer in a segment has
    # one; nobody else (erased, merged away) has one
    assert {cid: doc["segments"] for cid, doc in topic.items()} == {
        cid: segs for cid, segs in tables.items() if cid in topic}
    assert {cid for cid, segs in tables.items() if any(segs.values())} <= set(topic)
    return topic


def test_topic_equals_the_tables_after_merge_erasure_tick_and_replay() -> None:
    cluster = Recorded()
    identity_story(cluster)  # an anonymous visitor merged into a user
    gone = pick("gone", 1)
    cluster.send(track("Order Completed", T0, user=gone, total=20, mid="g-1"))
    cluster.send(page(T0, user=pick("other", 3), anon=None))
    cluster.run()
    topic = assert_topic_matches_tables(cluster)
    assert topic[USER]["segments"] == {"tier": "buyer", "engaged": "engaged"}
    assert topic[gone]["segments"]["tier"] == "buyer"
    # the anonymous customer was in a segment before the merge; merged, it is gone
    anon_key = "anonymous_id:" + ANON
    assert any(m.customer_id == anon_key and m.record is not None for m in cluster.memberships)
    assert anon_key not in topic and cluster.link(anon_key) == USER

    cluster.erase(gone, "er-1")
    cluster.run()
    assert cluster.memberships[-1] == MembershipUpdate(gone, None)  # a tombstone
    topic = assert_topic_matches_tables(cluster)
    assert gone not in topic

    before = len(cluster.memberships)
    cluster.tick(T0 + 200 * DAY)  # engagement decays: time-driven changes, new records
    assert len(cluster.memberships) > before
    topic = assert_topic_matches_tables(cluster)
    assert topic[USER]["segments"]["engaged"] is None
    assert topic[USER]["updated_at"] == "2024-06-01T22:13:20Z"  # the tick's event time

    cluster.redeliver_everything()  # a full replay changes nothing
    cluster.run()
    assert compacted(cluster.memberships) == topic


def test_a_replayed_step_writes_the_same_records() -> None:
    step = new_step()
    docs = [page(T0, user=USER, anon=None),
            track("Order Completed", T0 + 60, user=USER, total=9, mid="o-1")]
    stored: dict[str, Any] = {}
    first, after = run_one(step, P_USER, docs, dict(stored), offset=0)
    again, _ = run_one(step, P_USER, docs, dict(stored), offset=0)  # state lost in a crash
    assert [membership_bytes(m) for m in first.memberships] == [
        membership_bytes(m) for m in again.memberships]
    [update] = first.memberships
    assert orjson.loads(membership_bytes(update) or b"") == {
        "customer_id": USER, "segments": {"tier": "buyer", "engaged": "engaged"},
        "updated_at": "2023-11-14T22:14:20Z"}
    # applied and stored already: nothing changes, nothing is written
    res, _ = run_one(step, P_USER, docs, after, offset=0)
    assert res.changes == [] and res.memberships == []


def test_erasure_of_a_customer_in_no_segment_still_sends_a_tombstone() -> None:
    step = new_step()
    cid = pick("quiet", P_USER)
    # an identify only: a customer, in no segment of these segmentations
    _, customers = run_one(step, P_USER, [{"type": "identify", "userId": cid,
                                           "messageId": "i-1", "traits": {"age": 30}}])
    assert type(customers[cid]) is CustomerState and not customers[cid].segments
    res, _ = run_one(step, P_USER, [routing.erase_op(cid, "er-2")], customers, topic=ROUTED)
    assert res.changes == [] and res.memberships == [MembershipUpdate(cid, None)]


def test_the_readme_shows_the_example_subscriber_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    example = (root / "examples/subscriber.py").read_text()
    assert "```python\n" + example + "```" in (root / "README.md").read_text()


def test_a_backfill_under_new_definitions_rewrites_the_records() -> None:
    """Live definitions (Step.redefine, Step.backfill): each customer moved gets a record with
    the segmentations now in force (a removed one is no longer listed, a new one is)."""
    from .test_redefinition import V2, redefine, stored_under_v1

    step, table, _ = stored_under_v1()
    redefine(step, V2)
    res = step.backfill(0, table, sorted(table), WALL)
    docs = {u.customer_id: orjson.loads(membership_bytes(u) or b"") for u in res.memberships}
    assert {cid: doc["segments"] for cid, doc in docs.items()} == {
        "a": {"spend": "big", "tier": None},
        "b": {"spend": "small", "tier": "gold"},
        "c": {"spend": "big", "tier": None},
    }
    for doc in docs.values():
        validator("segment-membership.schema.json").validate(doc)
    assert step.backfill(0, table, sorted(table), WALL).memberships == []  # nothing left


def test_member_list_cursors_round_trip_and_bad_input_is_named() -> None:
    import pytest

    from stream_app.web.members import (
        MAX_CURSOR,
        MAX_LIMIT,
        BadRequest,
        decode_cursor,
        encode_cursor,
        parse_query,
    )

    for cid in ("u-1", "anonymous_id:a/b?c=d", "Zoë-✓", "x" * 269):
        cursor = encode_cursor(cid)
        assert decode_cursor(cursor) == cid and len(cursor) <= MAX_CURSOR
        assert parse_query({"cursor": cursor}) == (100, cid)
    assert parse_query({}) == (100, None) and parse_query({"limit": "1000"}) == (1000, None)
    for query, named in (({"limit": "0"}, "limit"), ({"limit": str(MAX_LIMIT + 1)}, "limit"),
                         ({"limit": "1e3"}, "limit"), ({"cursor": "%%%"}, "cursor"),
                         ({"cursor": "a" * (MAX_CURSOR + 1)}, "cursor"),
                         ({"cursor": encode_cursor("x")[:-1] + "!"}, "cursor"),
                         ({"cursor": "_-8"}, "cursor")):  # valid base64url, not UTF-8
        with pytest.raises(BadRequest, match=named):
            parse_query(query)


def test_members_export_to_an_unwritable_file_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream_app.cli.main import cli

    out = tmp_path / "missing-dir" / "big.csv"
    result = CliRunner().invoke(cli, ["members", "spend", "big", "--out", str(out),
                                      "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    said = result.output.replace("\n", "")  # rich wraps long lines
    assert f"cannot write {out}: No such file or directory" in said
