"""The batch step (stream_app.core.processing.Step) with plain dicts as tables, and a loop that
plays a small cluster: every partition runs Step.run and routed records are delivered to their
partitions until nothing is left in flight."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stream_app.core import routing
from stream_app.core.events import parse
from stream_app.core.events.interaction import ANON_PREFIX
from stream_app.core.events.models import SegmentChange
from stream_app.core.processing import (
    Change,
    EventClock,
    Message,
    Step,
    StepResult,
    change_bytes,
    dead_letter_headers,
    event_clock,
)
from stream_app.core.routing import partition_for
from stream_app.core.segmentation.base import Decision, Segmentation, change_id
from stream_app.core.state import codec
from stream_app.core.state.customer import DAY, CustomerState, Erased, Link, StateConfig

INPUT, ROUTED = "customer-interactions", "segmenter-routed"
T0 = 1_700_000_000.0
WALL = T0 + 2 * DAY
N = 4


def pick(prefix: str, partition: int, n: int = N, skip: int = 0) -> str:
    """The first id ``prefix-i`` (after ``skip`` of them) that partition ``partition`` owns."""
    found = (f"{prefix}-{i}" for i in range(1000) if partition_for(f"{prefix}-{i}", n) == partition)
    for _ in range(skip):
        next(found)
    return next(found)


ANON = pick("anon", 0)  # an anonymous id; its customer's key is AKEY
AKEY = ANON_PREFIX + ANON
USER = pick("user", 2)
P_ANON, P_USER = partition_for(ANON, N), partition_for(USER, N)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def track(event: str, ts: float, *, user: str | None = USER, anon: str | None = None,
          mid: str | None = None, **props: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "track", "event": event, "timestamp": iso(ts),
                           "messageId": mid or f"{event}@{ts}/{user or anon}"}
    if user:
        doc["userId"] = user
    if anon:
        doc["anonymousId"] = anon
    if props:
        doc["properties"] = props
    return doc


def page(ts: float, *, user: str | None = None, anon: str | None = ANON) -> dict[str, Any]:
    doc = {"type": "page", "timestamp": iso(ts), "messageId": f"page@{ts}/{user or anon}",
           "name": "Home", "userId": user, "anonymousId": anon}
    return {k: v for k, v in doc.items() if v is not None}


def identify(ts: float, *, user: str = USER, anon: str | None = ANON,
             traits: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {"type": "identify", "userId": user, "timestamp": iso(ts),
           "messageId": f"identify@{ts}/{user}/{anon}", "traits": traits or {"age": 30}}
    if anon:
        doc["anonymousId"] = anon
    return doc


# --- segmentation test doubles -----------------------------------------------------------------

class Tier:
    """'buyer' once the customer ordered, 'browser' after any visit, else none. Counts its own
    evaluations in aux, so aux must follow the state around (and survive batching)."""

    name = "tier"
    version = 7
    time_sensitive = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []  # (customer, now) of every evaluation

    def decide(self, state: CustomerState, feats: dict[str, Any], now: float, aux: Any,
               traits_changed: bool = True, explain: bool = False) -> Decision:
        self.calls.append((state.customer_id, now))
        if feats["orders"] >= 1:
            segment: str | None = "buyer"
        elif feats["page_views"] + feats["product_views"] + feats["cart_adds"] > 0:
            segment = "browser"
        else:
            segment = None
        return Decision(segment, segment and segment.title(), self.version,
                        f"orders={feats['orders']:.0f}", aux=(aux or 0) + 1)

    def describe(self) -> dict[str, Any]:
        return {"segments": ["browser", "buyer"]}


class Engaged:
    """In "engaged" while decayed engagement is at least 1.9, else in no segment; no aux."""

    name = "engaged"
    version = None
    time_sensitive = True

    def decide(self, state: CustomerState, feats: dict[str, Any], now: float, aux: Any,
               traits_changed: bool = True, explain: bool = False) -> Decision:
        if feats["engagement_recent"] >= 1.9:
            return Decision("engaged", "Engaged", None, "engagement >= 1.9")
        return Decision(None, None, None, "engagement < 1.9")

    def describe(self) -> dict[str, Any]:
        return {}


def segmentations() -> list[Segmentation]:
    return [Tier(), Engaged()]


def new_step(partitions: int = N) -> Step:
    return Step(input_topic=INPUT, routed_topic=ROUTED, partitions=partitions,
                segmentations=segmentations())


# --- a small cluster ----------------------------------------------------------------------------

def chunks(items: list[Message], size: int | None) -> Iterator[list[Message]]:
    size = size or max(len(items), 1)
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Cluster:
    """``partitions`` partitions of the input and routed topics, each with its own tables."""

    def __init__(self, partitions: int = N, *, chunk: int | None = None,
                 redeliver_routed: bool = False) -> None:
        self.n = partitions
        self.step = new_step(partitions)
        self.chunk = chunk
        self.redeliver_routed = redeliver_routed
        self.customers: list[dict[str, Any]] = [{} for _ in range(partitions)]
        self.queues: list[list[Message]] = [[] for _ in range(partitions)]
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.routed_log: list[tuple[str, int, bytes]] = []
        self.input_log: list[Message] = []
        self.changes: list[Change] = []
        self.dead_letters: list[tuple[Message, parse.Rejection]] = []
        self.totals: dict[str, int] = defaultdict(int)
        self.clock = EventClock()  # as the host keeps it, fed every step's result

    def produce(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                ts: float) -> Message:
        offset = self.offsets[topic, partition]
        self.offsets[topic, partition] += 1
        msg = Message(topic, partition, offset, key, value, ts)
        self.queues[partition].append(msg)
        return msg

    def send(self, doc: dict[str, Any] | bytes, *, key: str | None = None,
             partition: int | None = None, ts: float = T0) -> Message:
        """Produce to the input topic, keyed like a well-behaved producer unless told."""
        if isinstance(doc, dict):
            key = key or doc.get("userId") or doc.get("anonymousId")
            value = orjson.dumps(doc)
        else:
            value = doc
        if partition is None:
            partition = partition_for(key, self.n) if key else 0
        msg = self.produce(INPUT, partition, key.encode() if key else None, value, ts)
        self.input_log.append(msg)
        return msg

    def run(self) -> int:
        """Process until quiescent; returns the number of rounds."""
        rounds = 0
        while any(self.queues):
            rounds += 1
            assert rounds < 20, "routing does not converge"
            for p in range(self.n):
                pending, self.queues[p] = self.queues[p], []
                for batch in chunks(pending, self.chunk):
                    res = self.step.run(p, batch, self.customers[p], WALL)
                    self.clock.observe(p, res, WALL)
                    self._absorb_result(res)
        return rounds

    def _absorb_result(self, res: StepResult) -> None:
        self.changes += res.changes
        self.dead_letters += res.dead_letters
        for name in ("applied", "duplicates", "written"):
            self.totals[name] += getattr(res, name)
        for key, partition, value in res.routed:
            assert partition == routing.partition_of(key, self.n)
            self.routed_log.append((key, partition, value))
            for _ in range(2 if self.redeliver_routed else 1):
                self.produce(ROUTED, partition, key.encode(), value, WALL)

    def redeliver_everything(self) -> None:
        for key, partition, value in list(self.routed_log):
            self.produce(ROUTED, partition, key.encode(), value, WALL)
        for msg in list(self.input_log):
            self.queues[msg.partition].append(msg)

    # --- views -------------------------------------------------------------------------------
    def entry(self, key: str) -> Any:
        return self.customers[routing.partition_of(key, self.n)].get(key)

    def state(self, key: str) -> CustomerState | None:
        """The customer state of a key (None for none, a link or an erasure marker)."""
        entry = self.entry(key)
        return entry if type(entry) is CustomerState else None

    def link(self, key: str) -> str | None:
        entry = self.entry(key)
        return entry.target if type(entry) is Link else None

    def snapshot(self, stamps: bool = True) -> list[dict[str, bytes]]:
        """Every table entry; ``stamps=False``: without the input positions (bookkeeping
        that depends on which record of a batch sent a repeated request)."""
        def strip(entry: Any) -> Any:
            if stamps:
                return entry
            entry = entry.copy()
            if hasattr(entry, "stamps"):
                entry.stamps = {}
            return entry
        return [{cid: codec.dumps(strip(s)) for cid, s in sorted(t.items())}
                for t in self.customers]

    def change_records(self) -> list[dict[str, Any]]:
        return [c.document() for c in self.changes]

    def changes_of(self, cid: str, segmentation: str = "tier") -> list[tuple[Any, Any]]:
        return [(c.record.previous_segment, c.record.segment) for c in self.changes
                if c.customer_id == cid and c.record.segmentation == segmentation]


def identity_story(cluster: Cluster) -> None:
    """An anonymous visitor browses and fills a cart, then signs in as a user who had visited
    before and orders; later the same browser comes back, still anonymous."""
    cluster.send(page(T0 - DAY, user=USER, anon=None))
    cluster.send(page(T0))
    cluster.send(track("Product Viewed", T0 + 60, user=None, anon=ANON, category="Shoes"))
    cluster.send(track("Product Added", T0 + 120, user=None, anon=ANON, price=30))
    cluster.send(identify(T0 + 180))
    cluster.send(track("Order Completed", T0 + 240, anon=ANON, total=30, mid="order-1"))
    cluster.run()
    cluster.send(page(T0 + 3600))  # after the merge: re-keyed to the user
    cluster.run()


# --- single-step behaviour -----------------------------------------------------------------------

_OFFSETS = itertools.count(1000)


def run_one(step: Step, partition: int, docs: list[dict[str, Any] | bytes],
            customers: dict[str, Any] | None = None, topic: str = INPUT, wall: float = WALL,
            offset: int | None = None) -> tuple[StepResult, dict[str, Any]]:
    """One step over ``docs`` as records at offsets from ``offset`` (default: new ones,
    after every earlier call's, as a topic would have them)."""
    customers = {} if customers is None else customers
    first = next(_OFFSETS) * 1000 if offset is None else offset
    msgs = [Message(topic, partition, first + i, None,
                    doc if isinstance(doc, bytes) else orjson.dumps(doc), T0)
            for i, doc in enumerate(docs)]
    return step.run(partition, msgs, customers, wall), customers


def test_valid_events_are_applied_and_written_once() -> None:
    docs = [page(T0 + i, user=USER, anon=None) for i in range(3)]
    res, customers = run_one(new_step(), P_USER, docs, offset=0)
    assert (res.applied, res.duplicates, res.written) == (3, 0, 1)
    assert res.events_by_kind == {"page_view": 3}
    assert res.max_event_ts == T0 + 2
    assert customers[USER].page_views == 3 and customers[USER].sessions == 1
    assert res.routed == [] and res.dead_letters == []
    # the input positions applied are part of the state
    assert customers[USER].stamps == {f"0:{P_USER}": [2, 0]}


def test_duplicates_are_dropped_within_and_across_batches() -> None:
    step = new_step()
    doc = track("Order Completed", T0, total=10, mid="o-1")
    res, customers = run_one(step, P_USER, [doc, doc], offset=0)
    assert (res.applied, res.duplicates) == (1, 1)
    before = codec.dumps(customers[USER])
    # the same records again (a replay after a crash): skipped by their positions
    res, customers = run_one(step, P_USER, [doc, doc], customers, offset=0)
    assert (res.applied, res.duplicates, res.written, res.changes) == (0, 2, 0, [])
    assert codec.dumps(customers[USER]) == before
    assert customers[USER].orders == 1


def test_a_replay_longer_than_the_message_id_window_is_not_counted_again() -> None:
    """The message-id window remembers 32 ids; the positions in the state cover any replay
    (before, a replay of more than 32 of one customer's events after a crash counted again)."""
    step = new_step()
    docs = [track("Order Completed", T0 + i, total=10, mid=f"o-{i}") for i in range(80)]
    res, customers = run_one(step, P_USER, docs, offset=0)
    assert customers[USER].orders == 80
    res, customers = run_one(step, P_USER, docs, customers, offset=0)
    assert (res.applied, res.duplicates) == (0, 80) and customers[USER].orders == 80


def test_rejects_become_dead_letters_with_their_origin() -> None:
    step = new_step()
    batch = {"batch": [page(T0, user=USER, anon=None), {"type": "track", "userId": USER}]}
    msgs = [Message(INPUT, P_USER, 41, b"k", b"{oops", T0),
            Message(INPUT, P_USER, 42, USER.encode(), orjson.dumps(batch), T0)]
    customers: dict[str, Any] = {}
    res = step.run(P_USER, msgs, customers, WALL)
    assert res.applied == 1 and customers[USER].page_views == 1
    (m1, r1), (m2, r2) = res.dead_letters
    assert (m1.topic, m1.partition, m1.offset, r1.reason, r1.batch_index) == (
        INPUT, P_USER, 41, parse.NOT_JSON, None)
    assert (m2.offset, r2.reason, r2.batch_index) == (42, parse.INVALID, 1)
    assert orjson.loads(r2.payload) == batch["batch"][1]
    headers = dict(dead_letter_headers(m2, r2, WALL))
    assert headers["segmenter.dlq.reason"] == b"invalid_field"
    assert headers["segmenter.dlq.topic"] == INPUT.encode()
    assert headers["segmenter.dlq.partition"] == str(P_USER).encode()
    assert headers["segmenter.dlq.offset"] == b"42"
    assert headers["segmenter.dlq.batch_index"] == b"1"
    assert headers["segmenter.dlq.rejected_at"].endswith(b"Z")
    assert "segmenter.dlq.batch_index" not in dict(dead_letter_headers(m1, r1, WALL))


def test_user_ids_with_the_reserved_prefix_are_rejected() -> None:
    res, customers = run_one(new_step(), P_USER, [page(T0, user=ANON_PREFIX + "x", anon=None)])
    [(_, rej)] = res.dead_letters
    assert rej.reason == parse.INVALID and "reserved" in rej.detail and customers == {}


def test_events_for_another_partitions_customer_are_routed() -> None:
    other = (P_USER + 1) % N
    doc = page(T0, user=USER, anon=None)
    res, customers = run_one(new_step(), other, [doc], offset=0)
    assert customers == {} and res.applied == 0 and res.changes == []
    [(key, partition, value)] = res.routed
    assert (key, partition) == (USER, P_USER)
    op = routing.parse_op(value)
    assert op[0] == routing.OP_EVENT and op[3][1] == USER and op[3][0] == "page_view"
    assert op[1] == [routing.TOPIC_INPUT, other, 0, 1]  # where it was read, for dedupe
    # delivered where it belongs, it is applied there, once
    res2, customers2 = run_one(new_step(), P_USER, [value, value], topic=ROUTED)
    assert (res2.applied, res2.duplicates) == (1, 1)
    assert customers2[USER].page_views == 1 and res2.routed == []


def test_anonymous_events_of_a_linked_id_are_rekeyed_to_the_user() -> None:
    res, customers = run_one(new_step(), P_ANON, [page(T0)], {AKEY: Link(USER)})
    assert set(customers) == {AKEY}
    [(key, partition, value)] = res.routed
    assert (key, partition) == (USER, P_USER)
    wire = routing.parse_op(value)[3]
    assert (wire[1], wire[4], wire[5]) == (USER, None, ANON)  # customer, user id, anonymous id
    # when the user lives on the same partition the event is applied at once
    anon_here = pick("anon", P_USER)
    res, customers = run_one(new_step(), P_USER, [page(T0, anon=anon_here)],
                             {ANON_PREFIX + anon_here: Link(USER)})
    assert res.routed == [] and customers[USER].page_views == 1


def test_an_anonymous_id_equal_to_another_users_id_never_takes_that_user_over() -> None:
    """User ids and anonymous ids are separate id spaces: ``anonymousId=V`` names the
    anonymous visitor V, never the user V (before, M's event with anonymousId=<V's userId>
    merged V's whole history into M)."""
    victim, thief = pick("victim", 1), pick("thief", 3)
    cluster = Cluster()
    cluster.send(track("Order Completed", T0, user=victim, total=500, mid="v-1"))
    cluster.run()
    cluster.send(page(T0 + 60, user=thief, anon=victim))
    cluster.run()
    cluster.send(track("Order Completed", T0 + 120, user=victim, total=70, mid="v-2"))
    cluster.run()
    v, t = cluster.state(victim), cluster.state(thief)
    assert v is not None and (v.orders, v.revenue) == (2, 570.0)
    assert t is not None and t.orders == 0 and t.merged_ids == [ANON_PREFIX + victim]


def test_a_user_event_asks_for_a_merge_once_and_the_history_is_absorbed_once() -> None:
    step = new_step()
    res, customers = run_one(step, P_USER, [identify(T0), identify(T0 + 1, traits={"age": 31})])
    assert res.applied == 2
    [(key, partition, request)] = res.routed  # once per batch
    assert (key, partition) == (AKEY, P_ANON) and routing.parse_op(request)[3:] == [AKEY, USER]
    assert customers[USER].merged_ids == []  # requested, not absorbed yet
    # The anonymous id's partition hands over once, however often it is asked
    # (an id without history of its own is handed over empty, so the user records it).
    res, anon_side = run_one(step, P_ANON, [request, request], topic=ROUTED)
    assert type(anon_side[AKEY]) is Link and anon_side[AKEY].target == USER
    [(key, partition, absorb)] = res.routed
    assert (key, partition, routing.parse_op(absorb)[0]) == (USER, P_USER, routing.OP_ABSORB)
    res, _ = run_one(step, P_USER, [absorb, absorb], customers, topic=ROUTED)
    assert customers[USER].merged_ids == [AKEY] and customers[USER].events == 2
    res, _ = run_one(step, P_USER, [identify(T0 + 2, traits={"age": 32})], customers)
    assert res.applied == 1 and res.routed == []  # absorbed: no more requests


def test_a_redelivered_absorb_is_ignored_however_many_events_came_between() -> None:
    step = new_step()
    res, anon_customers = run_one(step, P_ANON, [page(T0 - 60), page(T0 - 30)])
    absorb = routing.absorb_op(USER, AKEY, codec.dumps(anon_customers[AKEY]), [1, P_ANON, 3, 1])
    res, customers = run_one(step, P_USER, [absorb], topic=ROUTED)
    assert customers[USER].page_views == 2
    # more of the user's own events than the dedupe window remembers message ids
    docs = [page(T0 + i, user=USER, anon=None) for i in range(step.cfg.dedupe_window + 8)]
    res, customers = run_one(step, P_USER, docs, customers)
    before = codec.dumps(customers[USER])
    res, customers = run_one(step, P_USER, [absorb], customers, topic=ROUTED)
    assert codec.dumps(customers[USER]) == before and res.written == 0


def test_alias_asks_to_merge_both_customers_the_previous_id_may_name() -> None:
    doc = {"type": "alias", "userId": USER, "previousId": ANON, "messageId": "al-1",
           "timestamp": iso(T0)}
    res, customers = run_one(new_step(), P_USER, [doc])
    assert sorted((key, routing.parse_op(v)[3:]) for key, _, v in res.routed) == [
        (ANON, [ANON, USER]), (AKEY, [AKEY, USER])]
    assert customers[USER].sessions == 0


def test_alias_of_one_user_id_to_another_merges_and_forwards_later_events() -> None:
    """Segment's alias call renames a user (previousId: the old user id): the old id's
    history moves to the new one, and events still sent under the old id follow it."""
    old = pick("olduser", 1)
    cluster = Cluster()
    cluster.send(track("Order Completed", T0, user=old, total=40, mid="o-old"))
    cluster.send(page(T0 + 60, user=old, anon=None))
    cluster.run()
    cluster.send({"type": "alias", "userId": USER, "previousId": old, "messageId": "al-2",
                  "timestamp": iso(T0 + 120)})
    cluster.run()
    cluster.send(page(T0 + 180, user=old, anon=None))
    cluster.run()
    assert cluster.state(old) is None and cluster.link(old) == USER
    user = cluster.state(USER)
    assert user is not None and old in user.merged_ids
    assert (user.orders, user.revenue, user.page_views) == (1, 40.0, 2)
    assert cluster.dead_letters == []


def alias(new: str, old: str, ts: float) -> dict[str, Any]:
    return {"type": "alias", "userId": new, "previousId": old, "messageId": f"al-{old}-{new}",
            "timestamp": iso(ts)}


def test_alias_chains_lead_to_the_last_id_even_when_a_link_is_local() -> None:
    """X->Y then Y->Z: a later event for X reaches Z (before, it landed on a ghost Y when
    Y's link was on X's partition)."""
    for x_part, y_part in ((0, 0), (0, 1)):
        x, y, z = pick("x", x_part), pick("y", y_part, skip=1), pick("z", 2)
        cluster = Cluster()
        cluster.send(track("Order Completed", T0, user=x, total=10, mid=f"o-{x}"))
        cluster.run()
        cluster.send(alias(y, x, T0 + 10))
        cluster.run()
        cluster.send(alias(z, y, T0 + 20))
        cluster.run()
        cluster.send(track("Order Completed", T0 + 30, user=x, total=5, mid=f"o2-{x}"))
        cluster.run()
        assert cluster.state(y) is None and cluster.state(x) is None
        zs = cluster.state(z)
        assert zs is not None and (zs.orders, zs.revenue) == (2, 15.0), (x_part, y_part)


@pytest.mark.parametrize("same_partition", [False, True])
def test_crossing_aliases_end_in_one_customer_and_nothing_ping_pongs(same_partition) -> None:
    """A->B and B->A handled at the same time leave a cycle of links; it is broken at the
    smaller id, which ends up with both histories (before, events ping-ponged for ever)."""
    a = pick("a", 1)
    b = pick("b", 1 if same_partition else 3)
    cluster = Cluster()
    cluster.send(track("Order Completed", T0, user=a, total=10, mid="oa"))
    cluster.send(track("Order Completed", T0, user=b, total=20, mid="ob"))
    cluster.run()
    cluster.send(alias(b, a, T0 + 10))
    cluster.send(alias(a, b, T0 + 10))
    cluster.run()
    cluster.send(page(T0 + 20, user=a, anon=None))
    cluster.send(page(T0 + 20, user=b, anon=None))
    rounds = cluster.run()
    root, other = min(a, b), max(a, b)
    assert rounds < 6 and cluster.link(other) == root
    rs = cluster.state(root)
    assert rs is not None and (rs.orders, rs.revenue, rs.page_views) == (2, 30.0, 2)


def test_merges_beyond_the_cap_are_refused_and_dead_lettered() -> None:
    step = Step(input_topic=INPUT, routed_topic=ROUTED, partitions=1,
                segmentations=segmentations(), state_config=StateConfig(max_merged_ids=3))
    cluster = Cluster(1)
    cluster.step = step
    for i in range(5):
        cluster.send(page(T0 + i, user=USER, anon=f"visitor-{i}"))
        cluster.run()
    assert len(cluster.state(USER).merged_ids) == 3
    reasons = [rej.reason for _, rej in cluster.dead_letters]
    assert reasons == ["merge_limit", "merge_limit"]
    assert cluster.state(USER).page_views == 5  # the events themselves were applied
    assert cluster.entry(ANON_PREFIX + "visitor-4") is None  # not linked: stays its own


@pytest.mark.parametrize("value", [
    None, b"", b"garbage", b'["merge", "a"]', b'["ev", [1, 2]]', b'["ev", "x"]',
    b'["ev", null, [], [1, 2]]', b'["merge", [0, 1, 2], [], "a", "b"]',
    b'["merge", null, [7], "a", "b"]', b'["erase", null, [], 5, "r"]',
    routing.absorb_op(USER, AKEY, b'[99, "not a state"]', None),
    routing.absorb_op(USER, AKEY, b"{}", None),
    routing.absorb_op(USER, AKEY, b'["L", "x", {}]', None),
    # wrong types inside a well-shaped event row (once an AttributeError: a crash loop)
    orjson.dumps(["ev", None, [], ["order", 7, "m1", T0, None, None, None, 1.0, [], None, None, None]]),
    orjson.dumps(["ev", None, [], ["order", USER, None, T0, None, None, None, 1.0, [], None, None, None]]),
    orjson.dumps(["ev", None, [], ["order", USER, "m1", "soon", None, None, None, 1.0, [], None, None,
                         None]]),
    orjson.dumps(["ev", None, [], ["order", USER, "m1", T0, None, None, None, 1.0, [3], None, None, None]]),
    orjson.dumps(["ev", None, [], ["order", USER, "m1", T0, None, 5, None, 1.0, [], None, None, None]]),
    orjson.dumps(["ev", None, [], ["order", USER, "m1", T0, None, None, None, 1.0, [], None, [1], None]]),
    orjson.dumps(["ev", None, [], ["nonsense", USER, "m1", T0, None, None, None, 1.0, [], None, None,
                         None]]),
])
def test_unreadable_routed_operations_are_dead_lettered(value: bytes | None) -> None:
    step = new_step()
    customers = {USER: CustomerState(customer_id=USER, events=1)}
    msg = Message(ROUTED, P_USER, 5, USER.encode(), value, WALL)
    res = step.run(P_USER, [msg], customers, WALL)
    [(m, rej)] = res.dead_letters
    assert m is msg and rej.reason == parse.INVALID and rej.payload == (value or b"")
    assert customers == {USER: CustomerState(customer_id=USER, events=1)}


def test_erase_deletes_the_customer_and_its_memberships() -> None:
    step = new_step()
    anon_here = ANON_PREFIX + pick("anon", P_USER)
    res, customers = run_one(step, P_USER, [page(T0, user=USER, anon=anon_here[13:])])
    customers[anon_here] = Link(USER)
    run_one(step, P_USER, [routing.absorb_op(USER, anon_here, codec.dumps(
        CustomerState(customer_id=anon_here)), [1, 0, 1, 1])], customers, topic=ROUTED)
    assert customers[USER].segments == {"tier": "browser"}
    assert customers[USER].merged_ids == [anon_here]
    res, customers = run_one(step, P_USER, [routing.erase_op(USER, "er-1")], customers,
                             topic=ROUTED)
    assert set(customers) == {USER, anon_here}
    assert all(type(e) is Erased for e in customers.values())  # no data left, only markers
    [change] = res.changes
    assert (change.record.previous_segment, change.record.segment) == ("browser", None)
    # the markers go with a tick once SEGMENTER_ERASED_KEEP_S has passed
    res = step.tick(customers, list(customers), T0 + DAY, WALL + 10, erased_keep_s=60.0)
    assert len(customers) == 2
    res = step.tick(customers, list(customers), T0 + DAY, WALL + 3600, erased_keep_s=60.0)
    assert customers == {}


# --- segment evaluation ---------------------------------------------------------------------------

def test_changes_only_on_actual_change_and_at_event_time() -> None:
    docs = [page(T0 + i, user=USER, anon=None) for i in range(6)]
    docs.append(track("Order Completed", T0 + 10, total=5, mid="o-1"))
    docs.append(track("Order Completed", T0 + 20, total=5, mid="o-2"))
    step = new_step()
    res, customers = run_one(step, P_USER, docs)
    tier = step.segmentations[0]
    assert isinstance(tier, Tier)  # evaluated after every event, at that event's time
    assert tier.calls == [(USER, T0 + i) for i in range(6)] + [(USER, T0 + 10), (USER, T0 + 20)]
    records = [c.document() for c in res.changes]
    assert [(r["segmentation"], r["previous_segment"], r["segment"]) for r in records] == [
        ("tier", None, "browser"),
        ("engaged", None, "engaged"),  # four page views of 0.5
        ("tier", "browser", "buyer"),
    ]
    assert records[1]["occurred_at"] == iso(T0 + 3).replace("+00:00", "Z")
    assert records[2]["model_version"] == 7 and records[2]["segment_name"] == "Buyer"
    assert records[2]["reason"] == "orders=1"
    for c, r in zip(res.changes, records, strict=True):
        SegmentChange.model_validate(r)  # the published contract
        assert orjson.loads(change_bytes(c)) == r  # serialized by the model itself
    epoch = customers[USER].epoch
    assert records[2]["change_id"] == change_id(USER, "tier", "browser", "buyer", f"{epoch}#2")
    state = customers[USER]
    assert state.segments == {"tier": "buyer", "engaged": "engaged"}
    assert state.segment_aux == {"tier": 8}  # evaluated after each of 8 events; Engaged: none


def test_leaving_a_segment_emits_a_change_to_none() -> None:
    step = new_step()
    docs = [page(T0 + i, user=USER, anon=None) for i in range(4)]
    res, customers = run_one(step, P_USER, docs)
    assert customers[USER].segments["engaged"] == "engaged"
    res, customers = run_one(step, P_USER, [page(T0 + 90 * DAY, user=USER, anon=None)],
                             customers, wall=T0 + 90 * DAY)
    assert res.applied == 1
    [change] = res.changes
    assert (change.record.segmentation, change.record.segment) == ("engaged", None)
    assert "engaged" not in customers[USER].segments


# --- the cluster: identity merge, redelivery, batching ---------------------------------------------

def test_cluster_setup() -> None:
    assert P_ANON != P_USER


def test_anonymous_history_is_merged_into_the_user() -> None:
    cluster = Cluster()
    identity_story(cluster)
    assert cluster.dead_letters == []
    assert cluster.state(AKEY) is None and cluster.link(AKEY) == USER
    user = cluster.state(USER)
    assert user is not None
    assert (user.page_views, user.product_views, user.cart_adds, user.orders) == (3, 1, 1, 1)
    assert user.events == 7 and user.revenue == 30.0
    assert user.first_seen == T0 - DAY and user.last_seen == T0 + 3600
    assert user.merged_ids == [AKEY] and user.anonymous is False
    assert user.categories == {"shoes": 1.0}
    assert user.traits == {"age": 30}
    assert user.cart_pending_since is None  # the anonymous cart was checked out as the user
    assert user.segments == {"tier": "buyer", "engaged": "engaged"}
    # the anonymous customer left its segments when it was merged away
    assert cluster.changes_of(AKEY) == [(None, "browser"), ("browser", None)]
    merged_away = [c.document() for c in cluster.changes if c.customer_id == AKEY][-1]
    assert merged_away["reason"] == "merged into another customer"  # no other id: PII
    assert cluster.changes_of(USER) == [(None, "browser"), ("browser", "buyer")]
    ids = [c.record.change_id for c in cluster.changes]
    assert len(ids) == len(set(ids))


def test_erase_reaches_links_on_other_partitions_and_later_events_start_afresh() -> None:
    cluster = Cluster()
    identity_story(cluster)
    assert cluster.link(AKEY) == USER
    cluster.produce(ROUTED, P_USER, USER.encode(), routing.erase_op(USER, "er-1"), WALL)
    cluster.run()
    assert type(cluster.entry(USER)) is Erased and type(cluster.entry(AKEY)) is Erased
    exits = [c.document() for c in cluster.changes if c.record.reason == "erased on request"]
    assert sorted((r["customer_id"], r["segmentation"], r["segment"]) for r in exits) == [
        (USER, "engaged", None), (USER, "tier", None)]
    # later events: the user starts afresh, the anonymous id is on its own again
    cluster.send(page(T0 + 7200, user=USER, anon=None))
    cluster.send(page(T0 + 7300))
    cluster.run()
    user, anon = cluster.state(USER), cluster.state(AKEY)
    assert user is not None and anon is not None and user.events == anon.events == 1
    assert user.merged_ids == [] and user.orders == 0


def test_merge_happens_exactly_once_when_routed_records_are_redelivered() -> None:
    once = Cluster()
    identity_story(once)
    twice = Cluster(redeliver_routed=True)
    identity_story(twice)
    assert twice.snapshot() == once.snapshot()
    assert twice.change_records() == once.change_records()
    # ... and redelivering everything afterwards (input and routed) changes nothing
    before = once.snapshot()
    n_changes = len(once.changes)
    once.redeliver_everything()
    once.run()
    assert once.snapshot() == before
    assert len(once.changes) == n_changes
    assert once.totals["applied"] == 7  # 7 events, each applied once, ever


def test_merge_when_the_user_was_never_seen_before() -> None:
    cluster = Cluster()
    cluster.send(page(T0))
    cluster.run()
    cluster.send(track("Order Completed", T0 + 60, anon=ANON, total=9, mid="o-x"))
    cluster.run()
    user = cluster.state(USER)
    assert user is not None and (user.page_views, user.orders, user.events) == (1, 1, 2)
    assert cluster.state(AKEY) is None


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_batch_boundaries_do_not_change_the_outcome(chunk: int) -> None:
    whole = Cluster()
    identity_story(whole)
    small = Cluster(chunk=chunk)
    identity_story(small)
    assert small.snapshot(stamps=False) == whole.snapshot(stamps=False)
    assert small.change_records() == whole.change_records()
    assert [(c.customer_id, c.event_ts) for c in small.changes] == [
        (c.customer_id, c.event_ts) for c in whole.changes]


@pytest.mark.parametrize("chunk", [1, 4])
def test_batch_boundaries_on_one_partition(chunk: int) -> None:
    docs: list[dict[str, Any]] = []
    for i, cid in enumerate(["user-a", "user-b", "user-c"] * 6):
        docs.append(page(T0 + i * 400, user=cid, anon=None))
        if i % 4 == 0:
            docs.append(track("Order Completed", T0 + i * 400 + 1, user=cid, total=i))
    docs.append(docs[3])  # a duplicate
    results = []
    for size in (None, chunk):
        step = new_step(partitions=1)
        customers: dict[str, Any] = {}
        msgs = [Message(INPUT, 0, i, None, orjson.dumps(d), T0) for i, d in enumerate(docs)]
        records = []
        for batch in chunks(msgs, size):
            records += [c.document() for c in step.run(0, batch, customers, WALL).changes]
        results.append((records, {c: codec.dumps(s) for c, s in customers.items()}))
    assert results[0] == results[1]
    assert len(results[0][0]) > 3


def test_change_ids_are_deterministic_across_runs() -> None:
    a, b = Cluster(), Cluster()
    identity_story(a)
    identity_story(b)
    assert [c.record.change_id for c in a.changes] == [c.record.change_id for c in b.changes]


def test_unkeyed_input_reaches_the_owner() -> None:
    cluster = Cluster()
    wrong = (P_USER + 1) % N
    cluster.send(page(T0, user=USER, anon=None), partition=wrong)
    cluster.send(page(T0 + 1, user=USER, anon=None), key=None, partition=(P_USER + 2) % N)
    rounds = cluster.run()
    assert rounds == 2
    assert cluster.state(USER) is not None and cluster.state(USER).page_views == 2
    assert all(not t for p, t in enumerate(cluster.customers) if p != P_USER)


# --- the clock ---------------------------------------------------------------------------------------

def test_one_skewed_producer_does_not_move_the_clock() -> None:
    """A partition's far-future event (up to SEGMENTER_MAX_FUTURE_SKEW_S ahead) moved the
    whole worker's clock before; now the clock is the smallest figure over active partitions."""
    wall = T0 + 10 * DAY
    times = {0: T0, 1: T0 + 1, 2: T0 + 23 * 3600 + 10 * DAY, 3: T0 + 2}
    walls = {p: wall - 1 for p in times}
    assert event_clock(times, walls, wall, 60.0) == T0
    # never past the wall clock, even when the skewed partition is the only active one
    assert event_clock({2: wall + 3600}, {2: wall}, wall, 60.0) == wall
    # idle partitions stop holding it back; all idle: on with the wall clock from there
    walls[0] = wall - 600
    assert event_clock(times, walls, wall, 60.0) == T0 + 1
    quiet = {p: wall - 600 for p in times}
    assert event_clock({0: T0}, {0: wall - 600}, wall, 60.0) == T0 + 540
    assert event_clock(times, quiet, wall, 60.0) == wall
    assert event_clock({}, {}, wall, 60.0) == 0.0


def test_a_late_event_does_not_flap_a_customer_out_and_back_and_ids_never_repeat() -> None:
    """A tick moves the customer out of "engaged"; an event that arrives late (a mobile app
    syncing offline events days later) is evaluated at the later of its own time and the time
    the customer was last evaluated at, so it does not move it back in (before: evaluated at
    its old time, it moved back, the next tick moved it out again, and that second exit had
    the same change_id as the first)."""
    step = new_step()
    docs = [page(T0 + i, user=USER, anon=None) for i in range(4)]
    res, customers = run_one(step, P_USER, docs)
    assert customers[USER].segments["engaged"] == "engaged"
    ids = [c.record.change_id for c in res.changes]
    later = T0 + 60 * DAY
    assert step.start_tick(P_USER, customers, later)
    res = step.tick(customers, [USER], later, WALL, 3600.0)
    assert [(c.record.previous_segment, c.record.segment) for c in res.changes] == [
        ("engaged", None)]
    ids += [c.record.change_id for c in res.changes]
    late = [page(T0 + 5 + i, user=USER, anon=None) for i in range(3)]
    res, customers = run_one(step, P_USER, late, customers)
    assert res.applied == 3 and res.changes == []  # no flap
    assert customers[USER].evaluated_at == later
    assert not step.start_tick(P_USER, customers, later)  # nothing new to evaluate at
    # a real comeback: in, and out again at the next tick; every change its own id
    res, customers = run_one(step, P_USER, [page(later + i, user=USER, anon=None)
                                            for i in range(4)], customers, wall=later)
    assert res.applied == 4
    ids += [c.record.change_id for c in res.changes]
    assert step.start_tick(P_USER, customers, later + 60 * DAY)
    res = step.tick(customers, [USER], later + 60 * DAY, WALL, 3600.0)
    ids += [c.record.change_id for c in res.changes]
    assert len(ids) == 5 and len(set(ids)) == 5  # in: tier, engaged; out; in; out


def test_the_same_change_re_emitted_after_a_crash_keeps_its_id() -> None:
    """A batch whose state was lost in a crash is processed again over the same stored
    state: the same changes, with the same ids."""
    step = new_step()
    res, customers = run_one(step, P_USER, [page(T0, user=USER, anon=None)], offset=0)
    stored = {k: v.copy() for k, v in customers.items()}
    batch = [track("Order Completed", T0 + 10, total=5, mid="o-9")]
    first, _ = run_one(step, P_USER, batch, {k: v.copy() for k, v in stored.items()}, offset=1)
    again, _ = run_one(step, P_USER, batch, {k: v.copy() for k, v in stored.items()}, offset=1)
    assert [c.document() for c in first.changes] == [c.document() for c in again.changes]
    assert first.changes
