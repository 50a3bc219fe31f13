"""The whole pipeline against a small, obviously-correct reference model (hypothesis stateful
testing).

The pipeline under test is the pure multi-partition cluster of ``test_processing.Cluster``:
every partition runs ``Step.run`` over its records, routed records go through per-partition
queues, in batches of generated sizes. Rules send generated events (user and anonymous, keyed,
keyless or on a wrong partition, duplicated, late and out of order, wrongly typed), alias
calls, erasures and time ticks; crash a partition (its outputs delivered, its state writes
lost, its input replayed) or replay everything.

The reference is dicts: who each key belongs to (sequential identity rules), each customer's
distinct events, orders and revenue. After every step the cluster must agree with it, and the
change stream must be consistent: applying the changes in order gives every customer's
memberships, every ``change_id`` names one distinct change (a repeat is an exact copy), and an
erased customer leaves nothing but its exits.

``--hypothesis-profile=deep`` runs many more, longer sequences (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stream_app.core import routing
from stream_app.core.events.interaction import ANON_PREFIX
from stream_app.core.state.customer import DAY, CustomerState, Link

from .test_processing import INPUT, ROUTED, T0, WALL, Cluster, chunks, iso

STEPS: Counter[str] = Counter()

USERS = [f"u{i}" for i in range(5)]
ANONS = [f"v{i}" for i in range(4)] + USERS[:2]  # anonymous ids equal to user ids, on purpose


class Reference:
    """Sequential identity: ``owner[key]`` is the key a merged id was merged into; a root
    (no owner) that holds data is a customer."""

    def __init__(self, partitions: int = 1) -> None:
        self.owner: dict[str, str] = {}
        self.data: dict[str, dict[str, Any]] = {}  # root -> {"ids": set, "orders", "revenue"}
        self.dead_letters = 0
        self.partitions = partitions
        # each partition's largest event time applied: an event is applied on the partition
        # of the customer it belongs to when it comes (the root of its key)
        self.partition_time: dict[int, float] = {}

    def clock(self, wall: float) -> float:
        """The worker's clock: the slowest partition's time (of those with events), never
        past the wall clock; one producer's future events cannot move it. 0.0 before any."""
        return min(wall, min(self.partition_time.values(), default=0.0))

    def root(self, key: str) -> str:
        seen = set()
        while key in self.owner and key not in seen:
            seen.add(key)
            key = self.owner[key]
        return key

    def _customer(self, key: str) -> dict[str, Any]:
        return self.data.setdefault(key, {"ids": set(), "orders": 0, "revenue": 0.0})

    def apply(self, key: str, mid: str, order: float | None, ts: float = T0) -> None:
        root = self.root(key)
        c = self._customer(root)
        if mid in c["ids"]:
            return
        c["ids"].add(mid)
        p = routing.partition_of(root, self.partitions)
        self.partition_time[p] = max(self.partition_time.get(p, 0.0), ts)
        if order is not None:
            c["orders"] += 1
            c["revenue"] += order

    def merge(self, source: str, target: str) -> None:
        """``source``'s history into ``target``'s customer: once (an id merged stays)."""
        dest = self.root(target)
        if source in self.owner or source == dest:
            return
        history = self.data.pop(source, None)
        self.owner[source] = dest
        self._fold(history, dest)

    def crossing(self, a: str, b: str) -> None:
        """a->b and b->a at the same time: a cycle, broken at the smaller id."""
        if a == b or a in self.owner or b in self.owner:
            self.merge(a, b)
            self.merge(b, a)
            return
        dest, other = min(a, b), max(a, b)
        self.owner[other] = dest
        self._fold(self.data.pop(other, None), dest)

    def _fold(self, history: dict[str, Any] | None, dest: str) -> None:
        if history is not None:
            c = self._customer(dest)
            c["ids"] |= history["ids"]
            c["orders"] += history["orders"]
            c["revenue"] += history["revenue"]

    def erase(self, key: str) -> None:
        dest = self.root(key)
        merged = [k for k in list(self.owner) if self.root(k) == dest]
        for k in [*merged, key, dest]:
            self.owner.pop(k, None)
            self.data.pop(k, None)


class Pipeline(RuleBasedStateMachine):
    @initialize(partitions=st.sampled_from([1, 2, 4]), chunk=st.sampled_from([None, 1, 2, 5]))
    def start(self, partitions: int, chunk: int | None) -> None:
        self.cluster = Cluster(partitions, chunk=chunk)
        self.ref = Reference(partitions)
        self.n = 0  # messages sent (message ids)
        self.now = T0

    # --- helpers ---------------------------------------------------------------------------
    def _ts(self, late: int, ahead: int = 0) -> float:
        # ticks move on past T0: events come late; ``ahead``: a producer whose clock runs
        # fast (hours ahead of the others, within SEGMENTER_MAX_FUTURE_SKEW_S of the wall)
        return T0 - late * 3600.0 + ahead * 3600.0

    def _send(self, doc: dict[str, Any], placement: int, twice: bool) -> None:
        c = self.cluster
        rid = doc.get("userId") or doc.get("anonymousId")
        if placement == 0:  # keyed as a well-behaved producer
            key, partition = rid, routing.partition_for(rid, c.n)
        elif placement == 1:  # keyless, any partition
            key, partition = None, self.n % c.n
        else:  # keyed, on a partition that does not own it
            key, partition = rid, (routing.partition_for(rid, c.n) + 1) % c.n
        for _ in range(2 if twice else 1):
            msg = c.produce(INPUT, partition, key.encode() if key else None, orjson.dumps(doc),
                            WALL)
            c.input_log.append(msg)

    # --- rules -----------------------------------------------------------------------------
    @rule(user=st.sampled_from([None, *USERS]), anon=st.sampled_from([None, *ANONS]),
          order=st.one_of(st.none(), st.integers(1, 500)), late=st.integers(0, 72),
          placement=st.integers(0, 2), twice=st.booleans(),
          ahead=st.sampled_from([0, 0, 0, 30, 70]))
    def event(self, user: str | None, anon: str | None, order: int | None, late: int,
              placement: int, twice: bool, ahead: int = 0) -> None:
        if user is None and anon is None:
            user = USERS[0]
        self.n += 1
        mid = f"m{self.n}"
        doc: dict[str, Any] = {"type": "track" if order else "page", "messageId": mid,
                               "timestamp": iso(self._ts(late, ahead))}
        if order:
            doc.update(event="Order Completed", properties={"total": float(order)})
        if user:
            doc["userId"] = user
        if anon:
            doc["anonymousId"] = anon
        self._send(doc, placement, twice)
        key = user if user else ANON_PREFIX + anon  # type: ignore[operator]
        self.ref.apply(key, mid, float(order) if order else None, self._ts(late, ahead))
        if user and anon:
            self.ref.merge(ANON_PREFIX + anon, user)
        self.cluster.run()

    @rule(new=st.sampled_from(USERS), old=st.sampled_from(ANONS + USERS),
          placement=st.integers(0, 2))
    def alias(self, new: str, old: str, placement: int) -> None:
        self.n += 1
        doc = {"type": "alias", "userId": new, "previousId": old, "messageId": f"m{self.n}",
               "timestamp": iso(T0)}
        self._send(doc, placement, False)
        self.ref.apply(new, f"m{self.n}", None)
        for source in (old, ANON_PREFIX + old):
            self.ref.merge(source, new)
        self.cluster.run()

    @rule(bad=st.sampled_from([
        b"{nope", b'{"type":"track","event":"Order Completed"}',
        b'{"type":"page","userId":7}', b'{"type":"page","userId":"anonymous_id:x"}',
        b'{"type":"track","userId":"u1","event":"Order Completed","properties":{"total":-1}}',
        b'{"type":"page","anonymousId":"a\\u0000b"}',
        orjson.dumps({"type": "page", "userId": "u2", "messageId": "far-future",
                      "timestamp": iso(WALL + 3 * DAY)})]), placement=st.integers(0, 1))
    def hostile(self, bad: bytes, placement: int) -> None:
        self.cluster.send(bad, key="u1" if placement == 0 else None,
                          partition=self.n % self.cluster.n, ts=WALL)
        self.ref.dead_letters += 1
        self.cluster.run()

    @rule(value=st.sampled_from([
        orjson.dumps(["ev", None, [], ["order", 7, "m", T0, None, None, None, 1.0, [], None,
                                       None, None]]),
        b'["merge", null, [], "u1"]', b"garbage"]))
    def hostile_routed(self, value: bytes) -> None:
        self.cluster.produce(ROUTED, 0, None, value, WALL)
        self.ref.dead_letters += 1
        self.cluster.run()

    @rule(days=st.integers(1, 90))
    def tick(self, days: int) -> None:
        self.now += days * DAY / 10
        step = self.cluster.step
        for p, table in enumerate(self.cluster.customers):
            if step.start_tick(p, table, self.now):
                res = step.tick(table, list(table), self.now, WALL, 10 * DAY)
                self.cluster.changes += res.changes

    @rule(p=st.integers(0, 3), events=st.integers(1, 4))
    def crash(self, p: int, events: int) -> None:
        """A partition crashes after its outputs were delivered and before its state was
        written: the same input comes again, over the state before the batch."""
        c = self.cluster
        p %= c.n
        for _ in range(events):
            self.n += 1
            c.send({"type": "page", "userId": USERS[self.n % len(USERS)],
                    "messageId": f"m{self.n}", "timestamp": iso(T0)}, ts=WALL)
            self.ref.apply(USERS[self.n % len(USERS)], f"m{self.n}", None)
        pending, c.queues[p] = c.queues[p], []
        before = {k: v.copy() for k, v in c.customers[p].items()}
        for batch in chunks(pending, c.chunk):
            c._absorb_result(c.step.run(p, batch, c.customers[p], WALL))
        c.customers[p] = before  # state lost; outputs (changes, routed records) delivered
        c.queues[p] = pending + c.queues[p]
        c.run()

    @rule()
    def replay_everything(self) -> None:
        """Every input and routed record delivered again (a consumer group reset)."""
        self.cluster.redeliver_everything()
        self.cluster.run()

    # --- invariants ------------------------------------------------------------------------
    @invariant()
    def states_match_the_reference(self) -> None:
        STEPS[type(self).__name__] += 1  # invariants run after every step
        if STEPS.total() % 5000 == 0 and os.environ.get("MODEL_STEPS_LOG"):  # long deep runs
            Path(os.environ["MODEL_STEPS_LOG"]).write_text(f"{dict(STEPS)}\n")
        c, ref = self.cluster, self.ref
        actual = {}
        for table in c.customers:
            for key, entry in table.items():
                if type(entry) is CustomerState and entry.events:
                    actual[key] = (entry.events, entry.orders, round(entry.revenue, 6))
        expected = {key: (len(d["ids"]), d["orders"], round(d["revenue"], 6))
                    for key, d in ref.data.items() if d["ids"] and key not in ref.owner}
        assert actual == expected
        # every merged id leads, link by link, to its customer
        for key in ref.owner:
            k, hops = key, 0
            while type(e := c.entry(k)) is Link and hops < 10:
                k, hops = e.target, hops + 1
            assert k == ref.root(key) or ref.root(key) not in expected, (key, k)

    @invariant()
    def the_clock_is_the_slowest_partitions_time(self) -> None:
        """What the worker ticks at (the host's :class:`EventClock`, fed every step's
        result) is the reference clock: a fast producer moves only its own partition."""
        assert self.cluster.clock.now(WALL, float("inf")) == self.ref.clock(WALL)

    @invariant()
    def every_bad_message_is_dead_lettered(self) -> None:
        """Each bad message once (a replay repeats one only as a copy of the same origin)."""
        origins = {(m.topic, m.partition, m.offset, r.batch_index)
                   for m, r in self.cluster.dead_letters}
        assert len(origins) == self.ref.dead_letters

    @invariant()
    def the_change_stream_is_consistent(self) -> None:
        c = self.cluster
        by_id: dict[str, dict[str, Any]] = {}
        current: dict[tuple[str, str], str | None] = {}
        for change in c.changes:
            rec = change.document()
            first = by_id.setdefault(rec["change_id"], rec)
            assert first == rec, "one change_id named two different changes"
            if first is not rec:
                continue  # an exact repeat (a crash re-emitted it): consumers drop it
            k = (rec["customer_id"], rec["segmentation"])
            assert current.get(k) == rec["previous_segment"], (k, rec)
            current[k] = rec["segment"]
        # time never goes back for a customer: every evaluation (by an event, an absorb or a
        # tick) is at or after the previous one, so a late event cannot flap a customer out
        # of a time-driven segment and back in (exits on erasure or merge are at the
        # customer's last event, and a new customer may start after them)
        last_at: dict[str, datetime] = {}
        for change in c.changes:
            rec = change.document()
            if rec["reason"] in ("erased on request", "merged into another customer"):
                last_at.pop(rec["customer_id"], None)
                continue
            at = datetime.fromisoformat(rec["occurred_at"])
            before = last_at.get(rec["customer_id"])
            assert before is None or at >= before, ("time went back", before, rec)
            last_at[rec["customer_id"]] = at
        memberships = {}
        for table in c.customers:
            for key, entry in table.items():
                if type(entry) is CustomerState:
                    for seg, segment in entry.segments.items():
                        memberships[(key, seg)] = segment
        assert {k: v for k, v in current.items() if v is not None} == memberships


class PipelineWithErasure(Pipeline):
    """The same, with erasures between any two steps."""

    @rule(key=st.sampled_from(USERS + [ANON_PREFIX + a for a in ANONS]))
    def erase(self, key: str) -> None:
        p = routing.partition_of(key, self.cluster.n)
        self.n += 1
        self.cluster.produce(ROUTED, p, key.encode(), routing.erase_op(key, f"er{self.n}"), WALL)
        self.ref.erase(key)
        self.cluster.run()


class PipelineWithCycles(Pipeline):
    """The same, with two crossing aliases handled at the same time (a cycle of links)."""

    @rule(a=st.sampled_from(USERS), b=st.sampled_from(USERS))
    def crossing_aliases(self, a: str, b: str) -> None:
        if a == b:
            return
        for new, old in ((b, a), (a, b)):
            self.n += 1
            self._send({"type": "alias", "userId": new, "previousId": old,
                        "messageId": f"m{self.n}", "timestamp": iso(T0)}, 0, False)
            self.ref.apply(new, f"m{self.n}", None)
        self.ref.crossing(a, b)
        self.ref.merge(ANON_PREFIX + a, b)
        self.ref.merge(ANON_PREFIX + b, a)
        self.cluster.run()


@pytest.fixture(scope="module", autouse=True)
def _report_steps() -> Any:
    """Print how many steps each machine ran and compared (the deep profile's figure)."""
    yield
    print(f"\nmodel-based test, steps checked against the reference: {dict(STEPS)}")


# The suite's run; the deep profile's examples and step counts apply over these.
_DEEP = settings().max_examples >= 5000  # --hypothesis-profile=deep (tests/conftest.py)
SETTINGS = settings(max_examples=5000 if _DEEP else 150,
                    stateful_step_count=60 if _DEEP else 25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# the suite runs the same examples every time (CI must not flake); the deep profile explores
Pipeline.TestCase.settings = settings(SETTINGS, derandomize=not _DEEP, database=None)
PipelineWithCycles.TestCase.settings = settings(SETTINGS, derandomize=not _DEEP, database=None)
PipelineWithErasure.TestCase.settings = settings(SETTINGS, derandomize=not _DEEP, database=None)
test_pipeline_matches_the_reference = Pipeline.TestCase


def test_pipeline_with_cycles_matches_the_reference() -> None:
    PipelineWithCycles.TestCase("runTest").runTest()


def test_a_replay_through_a_broken_cycle_is_not_applied_again() -> None:
    """Was a strict xfail: after a cycle of links was broken, a full replay re-applied one
    relayed record to the new root (5 events instead of 4). The cycle's smallest id was
    exempt from the stamp check whenever it was on the record's path, also when the path
    came from an earlier hop: a replay passed it and reached the root on a new channel."""
    m = PipelineWithCycles()
    m.start(partitions=4, chunk=None)
    m.crossing_aliases(a="u1", b="u2")
    m.crossing_aliases(a="u0", b="u1")
    m.replay_everything()
    m.states_match_the_reference()
    m.the_change_stream_is_consistent()


def test_pipeline_with_erasure_matches_the_reference() -> None:
    PipelineWithErasure.TestCase("runTest").runTest()


def test_a_replayed_unlink_does_not_break_a_link_made_after_it() -> None:
    """Found by the deep profile: an unlink that reached an id already erased was not
    recorded, so after the id was linked again, a full replay of the unlink removed the new
    link (anonymous_id:u1 no longer led to u0)."""
    m = PipelineWithErasure()
    m.start(partitions=4, chunk=None)
    m.alias(new="u0", old="u1", placement=0)
    m.erase(key=ANON_PREFIX + "u1")
    m.event(anon="u1", late=0, order=None, placement=0, twice=False, user="u0")
    m.replay_everything()
    m.states_match_the_reference()
    m.the_change_stream_is_consistent()
