"""The batch step: one partition's messages in, state writes and output records out.

No Kafka I/O here: the worker's agent hands in a partition's messages (in offset order) and
that partition's view of the tables, then sends what comes back. The same code serves the
stream, benchmarks and tests.

Semantics:
- input messages are decoded and validated; rejects become dead letters with their origin;
- an event whose customer lives on another partition is forwarded through the routed topic;
- anonymous ids already linked to a user are re-keyed to the user;
- a user event that carries a new anonymous id triggers a merge of that anonymous history;
- each applied event is followed by an evaluation of every segmentation, at the customer's
  own event time, so the changes emitted do not depend on how messages were batched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from .events import interaction as ix
from .events.interaction import Interaction
from .events.parse import Limits, Rejection, decode
from .kafka import routing
from .segmentation.base import Decision, Segmentation, change_id
from .state import codec
from .state.customer import (
    CustomerState,
    StateConfig,
    apply_in_place,
    merge,
    new_state,
)
from .state.features import features


class Record(Protocol):
    """What the step needs of a Kafka record: a :class:`Message`, or the worker's Faust
    message itself (no copy per record on the hot path)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> float: ...  # seconds


@dataclass(frozen=True, slots=True)
class Message:
    """A Kafka record as the step needs it (tests, benchmarks and replays build these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # seconds


@dataclass(slots=True)
class Change:
    customer_id: str
    record: dict[str, Any]  # the SegmentChange JSON document
    event_ts: float
    ingest_ts: float


@dataclass(slots=True)
class StepResult:
    routed: list[tuple[str, int, bytes]] = field(default_factory=list)  # key, partition, value
    dead_letters: list[tuple[Record, Rejection]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    written: int = 0
    deleted: int = 0
    applied: int = 0
    duplicates: int = 0
    events_by_kind: dict[str, int] = field(default_factory=dict)
    max_event_ts: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)  # features for the trainer


SAMPLED_AT = "_sampled_at"  # segment_aux key: event time of the last training sample


@functools.lru_cache(maxsize=64)
def _iso(ts: float) -> str:
    # cached: an event that moves a customer in several segmentations has one time (~1.5 µs)
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


Decide = Callable[[CustomerState, dict[str, Any], float, Any, bool], Decision | None]


def _deciders(segmentations: Sequence[Segmentation]) -> list[tuple[str, Decide]]:
    """(name, decide) per segmentation. ``decide(state, feats, now, aux, traits_changed)``
    is the segmentation's own when it has one: it returns None when evaluating would change
    neither the segment nor ``aux``, and can tell that cheaply (both kinds shipped here do).
    Otherwise it is ``evaluate``, always building a :class:`Decision`."""
    out: list[tuple[str, Decide]] = []
    for seg in segmentations:
        decide = getattr(seg, "decide", None)
        if decide is None:
            def decide(state: CustomerState, feats: dict[str, Any], now: float, aux: Any,
                       traits_changed: bool, _evaluate: Any = seg.evaluate) -> Decision:
                return _evaluate(state, feats, now, aux)  # type: ignore[no-any-return]
        out.append((seg.name, decide))
    return out


class Step:
    """Holds configuration and segmentations; :meth:`run` processes one partition's batch."""

    def __init__(self, *, input_topic: str, routed_topic: str, partitions: int,
                 segmentations: Sequence[Segmentation], limits: Limits = Limits(),
                 state_config: StateConfig = StateConfig(),
                 sample_every_s: float | None = None) -> None:
        self.input_topic = input_topic
        self.routed_topic = routed_topic
        self.partitions = partitions
        self.segmentations = list(segmentations)
        self._deciders = _deciders(self.segmentations)
        self.limits = limits
        self.cfg = state_config
        # Training samples for the clustering: at most one per customer per this much event
        # time, so busy customers do not dominate the model (None: no clustering).
        self.sample_every_s = sample_every_s

    # --- entry point -----------------------------------------------------------------------
    def run(self, partition: int, messages: Iterable[Record],
            customers: MutableMapping[str, CustomerState], aliases: MutableMapping[str, str],
            wall_now: float) -> StepResult:
        batch = _Batch(self, partition, customers, aliases, wall_now)
        for msg in messages:
            if msg.topic == self.routed_topic:
                batch.on_routed(msg)
            else:
                batch.on_input(msg)
        return batch.finish()

    # --- segmentation -----------------------------------------------------------------------
    def evaluate(self, state: CustomerState, now: float, cause: str, event_ts: float,
                 ingest_ts: float, out: list[Change], reason_prefix: str = "",
                 segmentations: Sequence[Segmentation] | None = None,
                 samples: list[dict[str, Any]] | None = None,
                 traits_changed: bool = True) -> None:
        """Evaluate segmentations (default: all) for ``state`` at event time ``now``.

        When ``samples`` is given and the customer is due, its features are added to it for
        the clustering trainer. ``traits_changed=False`` promises that the traits are those of
        the last evaluation (see :func:`_deciders`).
        """
        feats = features(state, now, self.cfg)
        if samples is not None and self.sample_every_s is not None:
            last = state.segment_aux.get(SAMPLED_AT)
            if last is None or now - last >= self.sample_every_s:
                state.segment_aux[SAMPLED_AT] = now
                samples.append(feats)
        aux_of = state.segment_aux
        for name, decide in (self._deciders if segmentations is None
                             else _deciders(segmentations)):
            # None: evaluating would change nothing (the common case): no Decision built
            decision = decide(state, feats, now, aux_of.get(name), traits_changed)
            if decision is None:
                continue
            if decision.aux is None:
                aux_of.pop(name, None)
            else:
                aux_of[name] = decision.aux
            previous = state.segments.get(name)
            if decision.segment == previous:
                continue
            if decision.segment is None:
                del state.segments[name]
            else:
                state.segments[name] = decision.segment
            out.append(Change(state.customer_id, {
                "change_id": change_id(state.customer_id, name, previous, decision.segment, cause),
                "customer_id": state.customer_id,
                "segmentation": name,
                "previous_segment": previous,
                "segment": decision.segment,
                "segment_name": decision.segment_name,
                "model_version": decision.version,
                "occurred_at": _iso(event_ts),
                "reason": reason_prefix + decision.reason,
            }, event_ts, ingest_ts))

    def exit_all(self, state: CustomerState, cause: str, event_ts: float, ingest_ts: float,
                 reason: str, out: list[Change]) -> None:
        """The customer leaves every segment (erasure, merged into another customer)."""
        for name, previous in sorted(state.segments.items()):
            out.append(Change(state.customer_id, {
                "change_id": change_id(state.customer_id, name, previous, None, cause),
                "customer_id": state.customer_id,
                "segmentation": name,
                "previous_segment": previous,
                "segment": None,
                "segment_name": None,
                "model_version": None,
                "occurred_at": _iso(event_ts),
                "reason": reason,
            }, event_ts, ingest_ts))
        state.segments.clear()


class _Batch:
    """Working set of one step: states loaded once, written once."""

    def __init__(self, step: Step, partition: int, customers: MutableMapping[str, CustomerState],
                 aliases: MutableMapping[str, str], wall_now: float) -> None:
        self.step = step
        self.partition = partition
        self.customers = customers
        self.aliases = aliases
        self.wall_now = wall_now
        self.work: dict[str, CustomerState | None] = {}
        self.dirty: set[str] = set()  # customers whose working state differs from the table
        self.merges: set[tuple[str, str]] = set()  # merge requests sent by this batch
        self.result = StepResult()

    # --- state access ------------------------------------------------------------------------
    def _load(self, cid: str) -> CustomerState | None:
        if cid in self.work:
            return self.work[cid]
        stored = self.customers.get(cid)
        state = stored.copy() if stored is not None else None
        self.work[cid] = state
        return state

    def _owned(self, cid: str) -> bool:
        return routing.partition_for(cid, self.step.partitions) == self.partition

    def _route(self, cid: str, value: bytes) -> None:
        self.result.routed.append((cid, routing.partition_for(cid, self.step.partitions), value))

    def _request_merge(self, anon: str, user: str) -> None:
        if (anon, user) not in self.merges:  # once per batch is enough
            self.merges.add((anon, user))
            self._route(anon, routing.merge_op(anon, user))

    # --- input ------------------------------------------------------------------------------
    def on_input(self, msg: Record) -> None:
        recs, rejects = decode(msg.value, now=self.wall_now, fallback_ts=msg.timestamp,
                               limits=self.step.limits)
        for rej in rejects:
            self.result.dead_letters.append((msg, rej))
        for rec in recs:
            self.on_interaction(rec, msg.timestamp)

    def on_interaction(self, rec: Interaction, ingest_ts: float) -> None:
        if rec.kind == ix.ALIAS and rec.previous_id:
            rec.anonymous_id = rec.previous_id  # alias links previousId to userId
        cid = rec.customer_id
        if not self._owned(cid):
            self._route(cid, routing.event_op(rec))
            return
        # An id merged into another customer (an anonymous id, or a user id renamed by an
        # alias call) forwards its later events to that customer.
        user = self.aliases.get(cid)
        if user is not None and user != cid:
            rec.customer_id = cid = user
            if not self._owned(cid):
                self._route(cid, routing.event_op(rec))
                return
        self._apply(rec, ingest_ts)

    def _apply(self, rec: Interaction, ingest_ts: float) -> None:
        res = self.result
        cid = rec.customer_id
        state = self._load(cid)
        anon = rec.anonymous_id
        # A user event that carries an anonymous id this customer has not absorbed yet asks
        # for a merge, duplicate or not: if a crash came between storing the state and sending
        # the request, the redelivered event is a duplicate and must still ask. The anonymous
        # id's partition ignores repeated requests.
        if (rec.user_id is not None and anon is not None and anon != cid
                and (state is None or anon not in state.anonymous_ids)):
            self._request_merge(anon, cid)
        if state is None:
            state = self.work[cid] = new_state(rec)
        traits = state.traits.copy()
        if not apply_in_place(state, rec, self.step.cfg):
            res.duplicates += 1
            return
        res.applied += 1
        self.dirty.add(cid)
        res.events_by_kind[rec.kind] = res.events_by_kind.get(rec.kind, 0) + 1
        res.max_event_ts = max(res.max_event_ts, rec.ts)
        self.step.evaluate(state, state.last_seen, rec.message_id, rec.ts, ingest_ts, res.changes,
                           samples=res.samples, traits_changed=state.traits != traits)

    # --- routed operations ------------------------------------------------------------------
    def on_routed(self, msg: Record) -> None:
        # Decode everything before touching state: an unreadable operation (a tombstone, a
        # foreign producer, a state layout from another version) is dead-lettered rather
        # than crashing the worker on every restart.
        try:
            op = routing.parse_op(msg.value or b"")
            rec = Interaction.from_wire(op[1]) if op[0] == routing.OP_EVENT else None
            other = codec.loads(op[3].encode()) if op[0] == routing.OP_ABSORB else None
        except (ValueError, TypeError) as exc:
            self.result.dead_letters.append((msg, Rejection(
                "invalid_field", f"unreadable routed operation: {exc}"[:1000], msg.value or b"")))
            return
        kind = op[0]
        if rec is not None:
            self.on_interaction(rec, msg.timestamp)
        elif kind == routing.OP_MERGE:
            self._merge_out(op[1], op[2], msg.timestamp)
        elif other is not None:
            self._absorb(op[1], op[2], other, msg.timestamp)
        elif kind == routing.OP_ERASE:
            self._erase(op[1], op[2], msg.timestamp)

    def _merge_out(self, anon: str, user: str, ingest_ts: float) -> None:
        """At the anonymous id's partition: hand its history to the user, alias the id."""
        if self.aliases.get(anon) == user:
            return  # already merged (a repeated request): the absorb was sent back then
        self.aliases[anon] = user
        state = self._load(anon)
        if state is None:  # nothing to hand over; the user still records the id as absorbed
            state = CustomerState(customer_id=anon)
        else:
            self.step.exit_all(state, f"merge:{anon}->{user}", state.last_seen, ingest_ts,
                               "merged into another customer", self.result.changes)
            self.work[anon] = None
            self.dirty.add(anon)
        self._route(user, routing.absorb_op(user, anon, codec.dumps_json(state)))

    def _absorb(self, user: str, anon: str, other: CustomerState, ingest_ts: float) -> None:
        """At the user's partition: fold an anonymous history in, once.

        ``merge`` records the anonymous id in ``anonymous_ids``, and only absorbing does, so
        a redelivered absorb is recognised however many events came in between (a dedupe
        marker among the last message ids would be pushed out by them).
        """
        state = self._load(user)
        if state is not None and anon in state.anonymous_ids:
            return  # redelivered
        if state is None:
            if other.events == 0:
                return
            state = CustomerState(customer_id=user, first_seen=other.first_seen,
                                  last_seen=other.last_seen, decay_ref=other.decay_ref)
        other.segments.clear()
        other.segment_aux.clear()
        merged = merge(state, other, self.step.cfg)
        self.work[user] = merged
        self.dirty.add(user)
        if other.events:
            self.step.evaluate(merged, merged.last_seen, f"absorb:{anon}", merged.last_seen,
                               ingest_ts, self.result.changes)

    def _erase(self, cid: str, message_id: str, ingest_ts: float) -> None:
        """Erasure: the customer's state, and the links of its anonymous ids, everywhere.

        The customer leaves its segments (changes to null), its state is deleted (a tombstone
        in the changelog), and its anonymous ids stop pointing at it: here directly, on other
        partitions through an erase request for each id. Later events start a new customer.
        """
        self.aliases.pop(cid, None)  # an anonymous id erased on its own: forget its link too
        state = self._load(cid)
        if state is None:
            return
        self.step.exit_all(state, f"erase:{message_id}", state.last_seen, ingest_ts,
                           "erased on request", self.result.changes)
        for anon in state.anonymous_ids:
            if self._owned(anon):
                self.aliases.pop(anon, None)
            else:
                self._route(anon, routing.erase_op(anon, message_id))
        self.work[cid] = None
        self.dirty.add(cid)

    def finish(self) -> StepResult:
        """Write the working set back: one table write per touched customer."""
        res = self.result
        for cid in self.dirty:
            state = self.work[cid]
            if state is None:
                if self.customers.get(cid) is not None:
                    del self.customers[cid]
                    res.deleted += 1
            else:
                self.customers[cid] = state
                res.written += 1
        return res


_MISSING = object()
DELETED = object()  # a held delete (HeldWrites.held, WriteBehind.stage)


class HeldWrites(MutableMapping[str, Any]):
    """A table seen through writes held back: reads see them; ``held`` is what the step
    wrote (:data:`DELETED` for a delete), for the caller to write later.

    The worker runs a step against held writes, sends the step's outputs, and writes the
    table only once the broker has them (:class:`..kafka.tables.WriteBehind`: the table's
    changelog is what survives a crash). So a crash either loses the state of the batch, which is then replayed and sends
    the same outputs again (same change ids), or finds it stored after its outputs were
    delivered. Written the other way round, a crash between the two would leave the state
    stored and its segment changes and merge requests lost: the replayed events are then
    duplicates and send nothing.
    """

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.held: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        value = self.held.get(key, _MISSING)
        if value is _MISSING:
            return self.table[key]
        if value is DELETED:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self.held.get(key, _MISSING)
        if value is _MISSING:
            return self.table.get(key, default)
        return default if value is DELETED else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.held[key] = value

    def __delitem__(self, key: str) -> None:
        if self.get(key, _MISSING) is _MISSING:
            raise KeyError(key)
        self.held[key] = DELETED

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self.table if k not in self.held)
        yield from (k for k, v in self.held.items() if v is not DELETED)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def dead_letter_headers(msg: Record, rej: Rejection, rejected_at: float
                        ) -> list[tuple[str, bytes]]:
    """Kafka Connect-style DLQ headers: the value stays the original bytes."""
    headers = [
        ("segmenter.dlq.reason", rej.reason.encode()),
        ("segmenter.dlq.detail", rej.detail.encode()[:2000]),
        ("segmenter.dlq.topic", msg.topic.encode()),
        ("segmenter.dlq.partition", str(msg.partition).encode()),
        ("segmenter.dlq.offset", str(msg.offset).encode()),
        ("segmenter.dlq.rejected_at", _iso(rejected_at).encode()),
    ]
    if rej.batch_index is not None:
        headers.append(("segmenter.dlq.batch_index", str(rej.batch_index).encode()))
    return headers


def change_bytes(change: Change) -> bytes:
    return orjson.dumps(change.record)
