"""Run the same event stream through a disturbed and an undisturbed app; compare the outcome.

Both apps consume the one input topic (different app ids: their own consumer groups, routed
topics, changelogs, dead-letter and segment-change topics). The stream comes in phases with
barriers between them (:func:`wait_drained`), so identity merges meet the same history in
both apps whatever the disturbance (see :func:`make_stream`). What is compared:

- every customer's final state, read from each app's changelog (the state that survives a
  crash), field by field;
- the segment changes: the disturbed app emitted every change of the reference, with the
  same content and in the same order per customer and segmentation; anything extra is a
  repeat of one of them (same ``change_id``).

The behavioural clustering (segmentation ``behavior``) is left out of both comparisons: its
assignments depend on which model version a worker holds when it evaluates a customer, and
model versions arrive from the trainer at wall-clock moments that no two runs share.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from stream_app.core.events.interaction import ANON_PREFIX
from stream_app.core.state import codec
from stream_app.core.state.customer import CustomerState, Link
from stream_app.host.broker import EmbeddedBroker

from .conftest import read_topic

INPUT = "customer-interactions"
NONDETERMINISTIC = ("behavior",)  # segmentations whose output depends on model timing
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# --- the stream ------------------------------------------------------------------------------------

@dataclass
class Stream:
    phases: list[list[tuple[bytes | None, bytes]]]  # (key, value) per phase, in order
    expected_events: dict[str, int]  # customers that must exist at the end: distinct events
    gone: set[str]  # anonymous ids merged away (state deleted)
    personal: set[str] = field(default_factory=set)  # strings that must not leave in changes
    hostile: int = 0  # messages that must each end in the dead-letter topic

    @property
    def messages(self) -> int:
        return sum(len(p) for p in self.phases)


HOSTILE = [b"not json", b'{"type":"track","event":"Order Completed"}', b"[1, 2]",
           b'{"type":"page","userId":42}', b'{"type":"nonsense","userId":"x"}', b"\xff\xfe"]


def make_stream(seed: int, users: int = 150, anons: int = 60, linked: int = 40,
                events: int = 2700, hostile: float = 0.0, start: datetime = T0) -> Stream:
    """A seeded stream of spec events keyed by customer id, in three phases.

    A: users' own activity, and anonymous browsing (cart adds, product views).
    B: ``linked`` users sign in (identify with their anonymous id: a merge), the other users
       go on. A linked user gets no other event in this phase: the absorbed history and the
       user's own events would otherwise meet in an order that depends on timing, in any run.
    C: the linked anonymous ids come back without signing in (forwarded to their user by the
       alias), the other users and anonymous visitors go on.
    Some messages are sent twice (a producer retry): applied once. A share ``hostile`` of
    the messages are invalid (half keyless, half keyed with a customer's id): dead letters.
    """
    rng = random.Random(seed)
    uids = [f"u-{i:04d}" for i in range(users)]
    aids = [f"a-{i:04d}" for i in range(anons)]
    pairs = dict(zip(uids[:linked], aids[:linked], strict=True))
    clock = {cid: start + timedelta(hours=rng.uniform(0, 24 * 30)) for cid in uids + aids}
    counts: Counter[str] = Counter()
    personal: set[str] = set()
    serial = 0

    def next_ts(cid: str) -> str:
        clock[cid] += timedelta(minutes=rng.choice([3, 20, 90, 600, 3000, 9000]))
        return clock[cid].isoformat().replace("+00:00", "Z")

    def event(cid: str, *, anon: bool = False) -> dict[str, Any]:
        nonlocal serial
        serial += 1
        ids = {"anonymousId": cid} if anon else {"userId": cid}
        base = {"messageId": f"m-{seed}-{serial}", "timestamp": next_ts(cid),
                "context": {"channel": rng.choice(["web", "mobile", "email"])}, **ids}
        roll = rng.random()
        category = rng.choice(["shoes", "tents", "books", "toys", "garden"])
        if anon:
            kind = rng.choice(["Product Viewed", "Product Viewed", "Product Added", "page"])
        elif roll < 0.08:
            email = f"{cid}@example.org"
            personal.add(email)
            return {**base, "type": "identify", "traits": {
                "age": rng.randint(18, 80), "gender": rng.choice(["female", "male", "other"]),
                "email": email, "phone": f"+49-{rng.randint(10**8, 10**9)}",
                "address": {"country": rng.choice(["DE", "US", "FR", "SE"]), "city": "X"},
                "interests": rng.sample(["running", "travel", "cooking", "golf"], 2)}}
        else:
            kind = rng.choice(["Product Viewed", "Product Added", "Order Completed",
                               "Order Completed", "page", "Email Opened",
                               "Email Link Clicked", "Support Contacted"])
        if kind == "page":
            return {**base, "type": "page", "name": "Home", "category": category}
        props: dict[str, Any] = {"category": category}
        if kind == "Order Completed":
            total = round(rng.uniform(5, 400), 2)
            props = {"total": total, "currency": "EUR",
                     "products": [{"category": category, "price": total, "quantity": 1}]}
        return {**base, "type": "track", "event": kind, "properties": props}

    bad = 0

    def emit(phase: list[tuple[bytes | None, bytes]], cid: str, doc: dict[str, Any],
             owner: str | None = None) -> None:
        nonlocal bad
        if hostile and rng.random() < hostile:
            bad += 1
            phase.append((rng.choice([None, cid.encode()]), rng.choice(HOSTILE)))
        value = orjson.dumps(doc)
        phase.append((cid.encode(), value))
        counts[owner or cid] += 1
        if rng.random() < 0.02:  # a producer retry: the same message again, later
            phase.insert(rng.randint(len(phase) - 1, len(phase)), (cid.encode(), value))

    others = uids[linked:]
    share = events // 3
    a: list[tuple[bytes | None, bytes]] = []
    for _ in range(share * 2):
        if rng.random() < 0.3:
            cid = rng.choice(aids)
            emit(a, cid, event(cid, anon=True))
        else:
            cid = rng.choice(uids)
            emit(a, cid, event(cid))
    b: list[tuple[bytes | None, bytes]] = []
    signers = list(pairs.items())
    rng.shuffle(signers)
    for uid, aid in signers:
        clock[uid] = max(clock[uid], clock[aid])
        doc = event(uid)
        doc.update(type="identify", anonymousId=aid, traits={"age": rng.randint(20, 60)})
        for extra in ("event", "properties", "name", "category"):
            doc.pop(extra, None)
        emit(b, uid, doc)
        for _ in range(rng.randint(3, 8)):
            cid = rng.choice(others)
            emit(b, cid, event(cid))
    c: list[tuple[bytes | None, bytes]] = []
    for _ in range(share):
        roll = rng.random()
        if roll < 0.3:
            uid = rng.choice(uids[:linked])
            aid = pairs[uid]
            emit(c, aid, event(aid, anon=True), owner=uid)  # forwarded to the user
        elif roll < 0.4:
            cid = rng.choice(aids[linked:])
            emit(c, cid, event(cid, anon=True))
        else:
            cid = rng.choice(others)
            emit(c, cid, event(cid))
    merged_away = {ANON_PREFIX + aid for aid in pairs.values()}
    for uid, aid in pairs.items():
        counts[uid] += counts.pop(aid, 0)
    anonymous = set(aids)  # an anonymous customer's key: its own id space
    keyed = {(ANON_PREFIX + cid if cid in anonymous else cid): n for cid, n in counts.items()}
    return Stream([a, b, c], keyed, merged_away, personal, bad)


def produce(producer: KafkaProducer, messages: list[tuple[bytes | None, bytes]],
            rate: float) -> None:
    """Send at about ``rate`` messages a second (keyed: the default partitioner places them)."""
    chunk = max(1, int(rate / 10))
    for i in range(0, len(messages), chunk):
        for key, value in messages[i:i + chunk]:
            producer.send(INPUT, key=key, value=value)
        producer.flush()
        time.sleep(chunk / rate)


# --- waiting ---------------------------------------------------------------------------------------

class Offsets:
    """True end offsets (the broker's own are one batch short) and committed offsets."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                      enable_auto_commit=False)
        self.admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()

    def ends(self, topics: list[str]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        ends = dict(self.consumer.end_offsets(tps))
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, max(0, ends[tp] - 1))
        while True:  # read past the reported end until the fetch stays empty
            got = self.consumer.poll(timeout_ms=300, max_records=10_000)
            if not got:
                break
            for tp, records in got.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        return ends

    def committed(self, group: str) -> dict[TopicPartition, int]:
        try:
            if hasattr(self.admin, "list_group_offsets"):  # kafka-python 3.x
                offsets = self.admin.list_group_offsets(group).get(group, {})
            else:  # kafka-python 2.x
                offsets = self.admin.list_consumer_group_offsets(group)
        except Exception:  # the group is rebalancing / its coordinator busy: not yet
            return {}
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def wait_drained(offsets: Offsets, groups: list[str], timeout: float = 120.0) -> float:
    """Wait until each group has committed everything of the input and its routed topic.

    Done when the true ends did not move between two looks and every group's committed
    offsets reach them: whatever a processed message produced (routed operations) was
    flushed before its offset was committed, so nothing more is on its way.
    """
    started = time.monotonic()
    topics = [INPUT] + [f"{g}-routed" for g in groups]
    last: dict[TopicPartition, int] | None = None
    while time.monotonic() - started < timeout:
        ends = offsets.ends(topics)
        done = ends == last and all(
            offsets.committed(g).get(tp, 0) >= end
            for g in groups for tp, end in ends.items()
            if tp.topic in (INPUT, f"{g}-routed") and end > 0)
        if done:
            return time.monotonic() - started
        last = ends
        time.sleep(0.5)
    lag = {g: {f"{tp.topic}[{tp.partition}]": (offsets.committed(g).get(tp), end)
               for tp, end in (last or {}).items()
               if tp.topic in (INPUT, f"{g}-routed")} for g in groups}
    raise AssertionError(f"not drained within {timeout}s: (committed, end) {lag}")


class Producing(threading.Thread):
    """Produce the phases in the background, draining both apps between phases."""

    def __init__(self, broker: EmbeddedBroker, stream: Stream, groups: list[str],
                 rate: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.stream, self.groups, self.rate = broker, stream, groups, rate
        self.error: BaseException | None = None
        self.drain_s: list[float] = []

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=5)
        offsets = Offsets(self.broker)
        try:
            for phase in self.stream.phases:
                produce(producer, phase, self.rate)
                self.drain_s.append(wait_drained(offsets, self.groups, timeout=240))
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            producer.close(timeout=5)
            offsets.close()


# --- outcome ---------------------------------------------------------------------------------------

def comparable(state_bytes: bytes) -> dict[str, Any] | None:
    """A customer state's fields as compared between apps (None for a link, an erasure
    marker or a clock). The stamps are left out: they hold positions on each app's own
    routed topic, which a crash makes differ (a re-sent record has a new offset)."""
    entry = codec.loads(state_bytes)
    if type(entry) is not CustomerState:
        return None
    doc = codec.to_json(entry)
    doc.pop("stamps")
    for name in NONDETERMINISTIC:
        doc["change_seq"].pop(name, None)
    for name in NONDETERMINISTIC:
        doc["segments"].pop(name, None)
        doc["segment_aux"].pop(name, None)
    return doc


def final_table(broker: EmbeddedBroker, app_id: str, table: str) -> dict[str, bytes | None]:
    """Last value per key of a table's changelog (None: deleted, a tombstone)."""
    last: dict[str, bytes | None] = {}
    for rec in read_topic(broker, f"{app_id}-{table}-changelog", expect=1, idle=1.0):
        last[rec.key.decode()] = rec.value
    return last


def final_states(broker: EmbeddedBroker, app_id: str) -> dict[str, dict[str, Any]]:
    out = {}
    for cid, value in final_table(broker, app_id, "customers").items():
        doc = comparable(value) if value else None
        if doc is not None:
            out[cid] = doc
    return out


def final_links(broker: EmbeddedBroker, app_id: str) -> dict[str, str]:
    """The links (merged id -> customer) in an app's customers table."""
    out = {}
    for cid, value in final_table(broker, app_id, "customers").items():
        entry = codec.loads(value) if value else None
        if type(entry) is Link:
            out[cid] = entry.target
    return out


def changes(broker: EmbeddedBroker, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_topic(broker, topic, expect=1, idle=1.0)
            if orjson.loads(r.value)["segmentation"] not in NONDETERMINISTIC]


def compare_changes(reference: list[dict[str, Any]], disturbed: list[dict[str, Any]]
                    ) -> dict[str, int]:
    """Assert the disturbed run emitted exactly the reference's changes, repeats aside."""
    ref_by_id = {c["change_id"]: c for c in reference}
    assert len(ref_by_id) == len(reference), "the reference repeated a change"
    seen: dict[str, dict[str, Any]] = {}
    for c in disturbed:
        first = seen.setdefault(c["change_id"], c)
        assert c == first, f"two different changes share a change_id: {first} / {c}"
    extra = [c for cid, c in seen.items() if cid not in ref_by_id]
    missing = [c for cid, c in ref_by_id.items() if cid not in seen]
    assert not missing, f"{len(missing)} changes never emitted, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} changes the reference never emitted, e.g. {extra[:3]}"
    for cid, c in ref_by_id.items():
        assert seen[cid] == c, f"same change_id, other content: {c} / {seen[cid]}"

    def sequences(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = defaultdict(list)
        for c in records:
            key = (c["customer_id"], c["segmentation"])
            if c["change_id"] not in out[key]:
                out[key].append(c["change_id"])
        return out

    assert sequences(disturbed) == sequences(reference), "changes came in another order"
    return {"changes": len(reference), "records": len(disturbed),
            "repeats": len(disturbed) - len(seen)}


def dead_letters(broker: EmbeddedBroker, topic: str, expect: int
                 ) -> dict[tuple[str, ...], list[tuple[bytes, dict[str, bytes]]]]:
    """A dead-letter topic's records by origin (input topic, partition, offset, batch index):
    the value and the headers that describe the rejection (all but its wall-clock time)."""
    out: dict[tuple[str, ...], list[tuple[bytes, dict[str, bytes]]]] = defaultdict(list)
    for rec in read_topic(broker, topic, expect=expect, idle=1.0):
        h = {k: v for k, v in rec.headers if k != "segmenter.dlq.rejected_at"}
        origin = tuple(h.get(f"segmenter.dlq.{n}", b"").decode()
                       for n in ("topic", "partition", "offset", "batch_index"))
        out[origin].append((rec.value, h))
    return out


def compare_dead_letters(stream: Stream, reference: dict[tuple[str, ...], list[Any]],
                         disturbed: dict[tuple[str, ...], list[Any]]) -> dict[str, int]:
    """Every hostile message dead-lettered in both; repeats only as exact copies."""
    assert len(reference) == stream.hostile, (len(reference), stream.hostile)
    assert all(len(v) == 1 for v in reference.values()), "the reference repeated a dead letter"
    assert disturbed.keys() == reference.keys(), (
        f"missing {len(reference.keys() - disturbed.keys())}, "
        f"extra {len(disturbed.keys() - reference.keys())}")
    for origin, copies in disturbed.items():
        assert all(c == reference[origin][0] for c in copies), (origin, copies, reference[origin])
    return {"dead_letters": len(reference),
            "dead_letter_repeats": sum(len(v) - 1 for v in disturbed.values())}


def compare_states(stream: Stream, reference: dict[str, dict[str, Any]],
                   disturbed: dict[str, dict[str, Any]]) -> None:
    # Both against the truth first: equal and both wrong would prove nothing.
    for name, states in (("reference", reference), ("disturbed", disturbed)):
        events = {cid: s["events"] for cid, s in states.items()}
        wrong = {cid: (events.get(cid), n) for cid, n in stream.expected_events.items()
                 if events.get(cid) != n}
        assert not wrong, f"{name}: (events, expected) differ for {len(wrong)}: " \
                          f"{dict(list(wrong.items())[:5])}"
        assert not (stream.gone & states.keys()), f"{name}: merged ids still have state"
        assert set(states) == set(stream.expected_events), f"{name}: unexpected customers"
    differing = [cid for cid in reference if reference[cid] != disturbed[cid]]
    if differing:
        cid = differing[0]
        diff = {k: (reference[cid][k], disturbed[cid][k]) for k in reference[cid]
                if reference[cid][k] != disturbed[cid][k]}
        raise AssertionError(f"{len(differing)} customers differ, e.g. {cid}: {diff}")


def explain(broker: EmbeddedBroker, customer: str, apps: list[str]) -> str:
    """What happened to one customer, for a failure message: its input messages in log order,
    and each app's changelog writes (events, and the message ids applied, oldest first)."""
    from stream_app.core.state.customer import message_digest

    lines = [f"--- {customer}: input (partition, offset, messageId)"]
    names: dict[int, str] = {}
    for rec in read_topic(broker, INPUT, expect=1, idle=1.0):
        if rec.key and rec.key.decode() == customer:
            mid = orjson.loads(rec.value).get("messageId", "?")
            names[message_digest(mid)] = mid
            lines.append(f"  {rec.partition}@{rec.offset} {mid}")
    for app in apps:
        lines.append(f"--- {app}: routed records mentioning it")
        for rec in read_topic(broker, f"{app}-routed", expect=0, idle=1.0):
            if customer.encode() in (rec.value or b""):
                lines.append(f"  {rec.partition}@{rec.offset} {rec.value[:160]!r}")
        lines.append(f"--- {app}: changelog writes (offset: events, applied ids)")
        for rec in read_topic(broker, f"{app}-customers-changelog", expect=1, idle=1.0):
            if rec.key.decode() != customer:
                continue
            if not rec.value:
                lines.append(f"  {rec.offset}: deleted")
                continue
            state = codec.loads(rec.value)
            if type(state) is not CustomerState:
                lines.append(f"  {rec.offset}: {state}")
                continue
            applied = [names.get(d, str(d)) for d in state.seen]
            lines.append(f"  {rec.offset}: events={state.events} sessions={state.sessions} "
                         f"{applied}")
    return "\n".join(lines)
