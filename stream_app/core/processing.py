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
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from . import routing
from .events import interaction as ix
from .events.interaction import ANON_PREFIX, Interaction, anonymous_key
from .events.models import SegmentChange, SegmentMembership
from .events.parse import Limits, Rejection, decode
from .predictive.live import LivePredictions
from .predictive.training import sample_fields
from .segmentation.base import Segmentation, change_id
from .segmentation.clustering.trainer import learn_due
from .segmentation.rules.definitions import RESERVED_NAMES
from .segmentation.rules.segmentation import REDEFINED
from .state import codec
from .state.customer import (
    Clock,
    CustomerState,
    Erased,
    Link,
    StateConfig,
    apply_in_place,
    clock_key,
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
    """A segment change: the record for ``segment-changes`` (the typed model its JSON Schema
    is generated from, validated as it is built) and when it happened."""

    customer_id: str
    record: SegmentChange
    event_ts: float
    ingest_ts: float

    def document(self) -> dict[str, Any]:
        """The record as the JSON document consumers read (``occurred_at`` as a string)."""
        return self.record.model_dump(mode="json")


@dataclass(slots=True)
class MembershipUpdate:
    """A customer's record on the memberships topic, after its changes of one step."""

    customer_id: str
    record: SegmentMembership | None  # None: a tombstone (erased, or merged into another)


@dataclass(slots=True)
class StepResult:
    routed: list[tuple[str, int, bytes]] = field(default_factory=list)  # key, partition, value
    dead_letters: list[tuple[Record, Rejection]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    # one per customer with changes (or gone: erased, merged), sent after the changes
    memberships: list[MembershipUpdate] = field(default_factory=list)
    written: int = 0  # customer states written (what a sweep reports)
    applied: int = 0
    duplicates: int = 0
    events_by_kind: dict[str, int] = field(default_factory=dict)
    max_event_ts: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)  # features for the trainer


def _change_id(state: CustomerState, segmentation: str, previous: str | None,
               segment: str | None) -> str:
    """The next change of ``state``: named by where the state was created (its epoch) and
    its own count of the segmentation's changes, which only grows. The same change
    re-emitted after a crash (the same records replayed over the same stored state) keeps
    its id; a later change, even the same move again (out and back), never reuses one."""
    n = state.change_seq[segmentation] = state.change_seq.get(segmentation, 0) + 1
    return change_id(state.customer_id, segmentation, previous, segment,
                     f"{state.epoch}#{n}")


SAMPLED_AT = "_sampled_at"  # segment_aux key: event time of the last training sample


@functools.lru_cache(maxsize=64)
def _iso(ts: float) -> str:
    # cached: an event that moves a customer in several segmentations has one time (~1.5 µs)
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@functools.lru_cache(maxsize=64)
def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _change(state: CustomerState, segmentation: str, previous: str | None,
            segment: str | None, segment_name: str | None, version: int | None, ts: float,
            reason: str, ingest_ts: float) -> Change:
    """The next change of ``state`` in ``segmentation`` (its id from :func:`_change_id`)."""
    return Change(state.customer_id, SegmentChange(
        change_id=_change_id(state, segmentation, previous, segment),
        customer_id=state.customer_id, segmentation=segmentation,
        previous_segment=previous, segment=segment, segment_name=segment_name,
        model_version=version, occurred_at=_at(ts), reason=reason), ts, ingest_ts)


class Step:
    """Holds configuration and segmentations; :meth:`run` processes one partition's batch."""

    def __init__(self, *, input_topic: str, routed_topic: str, partitions: int,
                 segmentations: Sequence[Segmentation], limits: Limits = Limits(),
                 state_config: StateConfig = StateConfig(),
                 sample_every_s: float | None = None,
                 predictions: LivePredictions | None = None) -> None:
        self.input_topic = input_topic
        self.routed_topic = routed_topic
        self.partitions = partitions
        self.segmentations = list(segmentations)
        self.limits = limits
        self.cfg = state_config
        # Training samples for the clustering: at most one per customer per this much event
        # time, so busy customers do not dominate the model (None: no clustering).
        self.sample_every_s = sample_every_s
        # Per-customer predictions (p_alive, ...) added to the features at every evaluation,
        # from the parameters the worker loaded; never stored (None: predictions off).
        self.predictions = predictions
        self.timed = [seg for seg in self.segmentations if seg.time_sensitive]
        # the segmentations that definitions replace (all but the learned one), and the
        # version of the definitions they came from (None: as built, see :meth:`redefine`)
        self.redefinable = [seg for seg in self.segmentations if seg.name not in RESERVED_NAMES]
        self.definitions_version: int | None = None
        self._known = frozenset(seg.name for seg in self.segmentations) | RESERVED_NAMES

    # --- time ------------------------------------------------------------------------------
    def start_tick(self, partition: int, customers: MutableMapping[str, Any], now: float
                   ) -> bool:
        """Begin a time tick of ``partition`` at event time ``now``: the partition's clock
        moves to it first, so every event from here on is evaluated no earlier than the tick
        evaluates the customers. False when there is nothing to do (no time-driven
        segmentation, or the clock is already there)."""
        clock = customers.get(clock_key(partition))
        if not self.timed or not now or (type(clock) is Clock and clock.tick_at >= now):
            return False
        customers[clock_key(partition)] = Clock(now)
        return True

    def tick(self, customers: MutableMapping[str, Any], keys: Iterable[str], now: float,
             wall_now: float, erased_keep_s: float) -> StepResult:
        """Re-evaluate the time-driven segmentations of ``keys`` (customers of one partition)
        at event time ``now``; erasure markers older than ``erased_keep_s`` (wall clock) go.
        A customer is written only when a segment or its bookkeeping changed (the clock
        stands for the rest)."""
        res = StepResult()
        for key in keys:
            stored = customers.get(key)
            if type(stored) is Erased:
                if wall_now - stored.erased_at > erased_keep_s:
                    del customers[key]
                continue
            if type(stored) is not CustomerState or now <= max(stored.last_seen,
                                                               stored.evaluated_at):
                continue
            state = stored.copy()
            state.evaluated_at = now
            out: list[Change] = []
            # quiet customers are sampled for the clustering too, or the model would only
            # ever see customers on the days they act (in an order history: at recency 0)
            self.evaluate(state, now, wall_now, out, segmentations=self.timed,
                          samples=res.samples)
            _keep_if_moved(customers, key, stored, state, out, res)
        res.memberships = self.memberships(res.changes, customers.get)
        return res

    # --- model versions --------------------------------------------------------------------
    def rescore(self, customers: MutableMapping[str, Any], keys: Iterable[str],
                segmentations: Sequence[Segmentation], wall_now: float) -> StepResult:
        """Re-score ``segmentations`` of the customer states among ``keys`` after a new model
        version (or new predictive parameters) was loaded.

        Without it a customer is scored by a new model only at its next event or time tick:
        after a replay, customers sat without a segment, or in ids of an older version, until
        the ticks caught up. Each customer is evaluated at its own last evaluation time (its
        last event or tick), not at a new time: only the model moved, so no time-driven
        segment moves with it. Hysteresis holds as for any evaluation: a customer without a
        segment, or whose segment was retired, gets one at once; one whose segment lives on
        moves only on confirmed evidence. A state is written back only when a segment or its
        bookkeeping changed."""
        res = StepResult()
        for key in keys:
            stored = customers.get(key)
            if type(stored) is not CustomerState:
                continue
            state = stored.copy()
            out: list[Change] = []
            self.evaluate(state, max(state.last_seen, state.evaluated_at), wall_now, out,
                          segmentations=segmentations)
            _keep_if_moved(customers, key, stored, state, out, res)
        res.memberships = self.memberships(res.changes, customers.get)
        return res

    # --- definitions -----------------------------------------------------------------------
    def redefine(self, segmentations: Sequence[Segmentation], version: int) -> None:
        """Evaluate under these rule segmentations from now on (the learned one stays).

        The caller runs no batch meanwhile (the worker holds its state lock), then brings
        the stored customers over with :meth:`backfill`; events that come first evaluate
        their customer under the new definitions themselves."""
        kept = [seg for seg in self.segmentations if seg.name in RESERVED_NAMES]
        self.segmentations = [*kept, *segmentations]
        self.timed = [seg for seg in self.segmentations if seg.time_sensitive]
        self.redefinable = list(segmentations)
        self.definitions_version = version
        self._known = frozenset(seg.name for seg in self.segmentations) | RESERVED_NAMES

    def _stale(self, state: CustomerState) -> list[Segmentation]:
        """The rule segmentations ``state`` was last evaluated under another version of
        (its ``segment_aux`` holds that version: see :mod:`.segmentation.rules`)."""
        aux = state.segment_aux
        return [seg for seg in self.redefinable if aux.get(seg.name) != seg.version]

    def _removed(self, state: CustomerState) -> list[str]:
        """Segmentations the customer holds a segment or a version of that are defined no
        more (a rule's aux is its version, an int; other bookkeeping is left alone)."""
        known = self._known
        gone = {name for name in state.segments if name not in known}
        gone.update(name for name, value in state.segment_aux.items()
                    if name not in known and type(value) is int)
        return sorted(gone)

    def backfill(self, partition: int, customers: MutableMapping[str, Any],
                 keys: Iterable[str], wall_now: float) -> StepResult:
        """Bring ``keys`` (customers of ``partition``) over to the definitions in force.

        Only customers evaluated under other definitions are touched, and only the
        segmentations that differ: each is evaluated at the time the customer was last
        evaluated (its last event or tick; only the definitions moved, not time); a
        segmentation that is gone is left (a change to null). Every change's reason starts
        with ``definition changed``. A customer brought over is not stale any more, so a
        pass repeated after a crash or a rebalance sends only what the first did not store,
        with the same change ids (:func:`_change_id`), as a tick does.
        """
        clock = customers.get(clock_key(partition))
        tick_at = clock.tick_at if type(clock) is Clock else 0.0
        res = StepResult()
        for key in keys:
            stored = customers.get(key)
            if type(stored) is not CustomerState:
                continue
            stale, removed = self._stale(stored), self._removed(stored)
            if not stale and not removed:
                continue
            state = stored.copy()
            t = max(state.last_seen, state.evaluated_at, tick_at)
            state.evaluated_at = t
            out: list[Change] = []
            for name in removed:
                old = state.segment_aux.pop(name, None)
                previous = state.segments.pop(name, None)
                if previous is None:
                    continue
                was = f"{old:08x}" if type(old) is int else "?"
                out.append(_change(state, name, previous, None, None,
                                   self.definitions_version, t,
                                   f"{REDEFINED} ({was} -> removed): the segmentation is no "
                                   f"longer defined", wall_now))
            if stale:
                first = len(out)
                self.evaluate(state, t, wall_now, out, segmentations=stale)
                for change in out[first:]:
                    reason = change.record.reason
                    version = change.record.model_version
                    if not reason.startswith(REDEFINED):  # a segmentation new to it
                        now_v = f"{version:08x}" if type(version) is int else "?"
                        change.record.reason = f"{REDEFINED} (new -> {now_v}): {reason}"
            customers[key] = state
            res.written += 1
            res.changes.extend(out)
        res.memberships = self.memberships(res.changes, customers.get)
        return res

    # --- entry point -----------------------------------------------------------------------
    def run(self, partition: int, messages: Iterable[Record],
            customers: MutableMapping[str, Any], wall_now: float) -> StepResult:
        """Process one partition's records (in offset order per topic) against that
        partition's view of the customers table (states, links, erasure markers)."""
        batch = _Batch(self, partition, customers, wall_now)
        for msg in messages:
            if msg.topic == self.routed_topic:
                batch.on_routed(msg)
            else:
                batch.on_input(msg)
        return batch.finish()

    # --- memberships ------------------------------------------------------------------------
    def memberships(self, changes: Sequence[Change], entry_of: Callable[[str], Any],
                    gone: Iterable[str] = ()) -> list[MembershipUpdate]:
        """The memberships record of each customer with ``changes`` (in order of its first
        change) and of each id in ``gone`` (no longer a customer: erased, or merged into
        another), from its entry after the step (``entry_of``): its segment in every
        segmentation in force, at the event time of its last change; a tombstone when the
        entry is no customer state any more. Deterministic: a step replayed after a crash
        over the same stored state writes the same records again."""
        last: dict[str, float] = {}
        for change in changes:
            last[change.customer_id] = change.event_ts
        for key in gone:
            last.setdefault(key, 0.0)
        names = [seg.name for seg in self.segmentations]
        out = []
        for cid, ts in last.items():
            state = entry_of(cid)
            if type(state) is not CustomerState:
                out.append(MembershipUpdate(cid, None))
                continue
            segments: dict[str, str | None] = dict.fromkeys(names)
            segments.update(state.segments)
            out.append(MembershipUpdate(cid, SegmentMembership(
                customer_id=cid, segments=segments,
                updated_at=datetime.fromtimestamp(ts, UTC))))
        return out

    # --- segmentation -----------------------------------------------------------------------
    def evaluate(self, state: CustomerState, now: float, ingest_ts: float, out: list[Change],
                 segmentations: Sequence[Segmentation] | None = None,
                 samples: list[dict[str, Any]] | None = None,
                 traits_changed: bool = True) -> None:
        """Evaluate segmentations (default: all) for ``state`` at event time ``now``.

        When ``samples`` is given and the customer is due, its features are added to it for
        the clustering trainer. ``traits_changed=False`` promises that the traits are those of
        the last evaluation (see :meth:`.Segmentation.decide`).
        """
        feats = features(state, now, self.cfg)
        live = self.predictions
        if live is not None:
            feats.update(live.of(state.purchases, now))
        if (samples is not None and self.sample_every_s is not None
                and learn_due(state.segment_aux.get(SAMPLED_AT), now, self.sample_every_s)):
            state.segment_aux[SAMPLED_AT] = now
            if live is not None and state.purchases is not None:
                # the predictive models learn from the same samples (training.py)
                samples.append({**feats, **sample_fields(state.customer_id,
                                                         state.purchases, now)})
            else:
                samples.append(feats)
        aux_of = state.segment_aux
        for seg in self.segmentations if segmentations is None else segmentations:
            name = seg.name
            # None: evaluating would change nothing (the common case): no Decision built
            decision = seg.decide(state, feats, now, aux_of.get(name), traits_changed)
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
            out.append(_change(state, name, previous, decision.segment,
                               decision.segment_name, decision.version, now, decision.reason,
                               ingest_ts))

    def exit_all(self, state: CustomerState, event_ts: float, ingest_ts: float,
                 reason: str, out: list[Change]) -> None:
        """The customer leaves every segment (erasure, merged into another customer)."""
        for name, previous in sorted(state.segments.items()):
            out.append(_change(state, name, previous, None, None, None, event_ts, reason,
                               ingest_ts))
        state.segments.clear()


# In a path: the id at which an operation was sent on (caused by the one that arrived there),
# as opposed to a link it was relayed through; ids never hold control characters.
SENT_AT = "\x01"
SUB = 1024  # sub-indices per event of a record: [offset, event index * SUB + op number]
# Customers re-evaluated at once by a host (a time tick, a re-scoring, a backfill) between
# turns of its event loop: ~40 µs each, and batches wait meanwhile (chunks of 2000 held them
# up for ~80 ms each, a p99 spike of 300 ms at 1,000 ev/s, segmenter bench --phases latency)
TICK_CHUNK = 200


def _keep_if_moved(customers: MutableMapping[str, Any], key: str, stored: CustomerState,
                   state: CustomerState, out: list[Change], res: StepResult) -> None:
    """Store ``state``, a re-evaluated copy of ``stored``, only when a segment or its
    bookkeeping changed (a tick or a re-scoring that moves no one writes nothing)."""
    if out or state.segment_aux != stored.segment_aux:
        customers[key] = state
        res.written += 1
        res.changes.extend(out)


def _fresh(stamps: dict[str, list[int]], channel: str, pos: list[int]) -> bool:
    last = stamps.get(channel)
    return last is None or pos > last


class _Batch:
    """Working set of one step: entries loaded once, written once.

    Channels (exactly-once effect). Every record a partition's step reads arrives on a
    *channel*, a FIFO: an input partition read directly (``"0:<p>"``), the routed records
    a partition's step sent while reading one of its inputs (``"r0:<q>"`` or ``"r1:<q>"``:
    the operation's ``via``), or a request from outside (``"2:<p>"``, at the record's own
    position). Along a channel positions ``[offset, sub-index]`` only grow,
    and a replay after a crash repeats what was sent before, in the same order, with the
    same positions (the step is deterministic). Every table entry stores, per channel, the
    last position applied to it (its *stamps*), in the same record as the state, so a
    restarted worker skips exactly what its state has already seen, however long the
    replay; the message-id window only catches a producer that sent one event twice.
    """

    def __init__(self, step: Step, partition: int, customers: MutableMapping[str, Any],
                 wall_now: float) -> None:
        self.step = step
        self.partition = partition
        self.customers = customers
        self.wall_now = wall_now
        self.work: dict[str, Any] = {}
        # entries whose working value differs from the table, in the order first touched: a
        # dict, not a set, so the writes and tombstones come out in the same order in every
        # process (a set's order of strings moves with PYTHONHASHSEED: a replay after a
        # restart would send the same records in another order)
        self.dirty: dict[str, None] = {}
        self.merges: set[tuple[str, str]] = set()  # merge requests sent by this batch
        self.result = StepResult()
        clock = customers.get(clock_key(partition))
        # every customer of the partition has been evaluated at this event time (ticks)
        self.tick_at = clock.tick_at if type(clock) is Clock else 0.0
        self.msg: Record | None = None
        self.cause = ""  # what the operation being processed is (for a dissolved link's epoch)
        self.here: list[int] = [0, 0, 0, 0]  # position of the operation being processed
        self.ops = 0  # operations sent while processing it
        # the via of the routed operation being processed (None: an input record, or a
        # request from outside): what it causes is sent on with the same via and a longer
        # path, so a repeat of it is recognised downstream, however often it is relayed
        self.in_via: list[int] | None = None

    # --- state access ------------------------------------------------------------------------
    def _load(self, key: str) -> Any:
        if key in self.work:
            return self.work[key]
        stored = self.customers.get(key)
        entry = stored.copy() if stored is not None else None
        self.work[key] = entry
        return entry

    def _put(self, key: str, entry: Any) -> None:
        self.work[key] = entry
        self.dirty[key] = None

    def _owned(self, key: str) -> bool:
        return routing.partition_of(key, self.step.partitions) == self.partition

    def _out_via(self) -> list[int]:
        if self.in_via is not None:
            return self.in_via
        return self._via()

    def _new_via(self) -> list[int]:
        """The via of a new operation this one causes (a merge request, a hand-over, an
        unlink): the incoming via with a sub-index of its own, so two operations it causes
        towards one customer are not taken for one."""
        if self.in_via is None:
            return self._via()
        self.ops += 1
        t, p, offset, k = self.in_via
        return [t, p, offset, k * 64 + self.ops]

    def _via(self) -> list[int]:
        self.ops += 1
        t, p, offset, base = self.here
        return [t, p, offset, base + self.ops]

    def _route(self, key: str, value: bytes) -> None:
        self.result.routed.append((key, routing.partition_of(key, self.step.partitions), value))

    def _dead(self, reason: str, detail: str) -> None:
        assert self.msg is not None
        self.result.dead_letters.append((self.msg, Rejection(reason, detail[:1000],
                                                             self.msg.value or b"")))

    def _resolve(self, key: str, channel: str, pos: list[int], path: list[str]
                 ) -> tuple[str, str, Any, list[str]]:
        """Follow links from ``key`` while they stay on this partition.

        Returns (what, key, entry, path): ``("here", key, entry)`` for the customer to act
        on (None, a state, or an erasure marker), ``("route", key)`` for a customer on
        another partition, ``("dup", ...)`` when a link's stamps show the record was
        applied to the state the link replaced, ``("loop", ...)`` past MAX_PATH links.

        A cycle of links (two crossing aliases handled at the same time: A->B at A's
        partition, B->A at B's) is broken at its smallest id: that id's link is dissolved
        into an empty customer, which takes what arrives, so every history ends there
        whatever the order (every member's state is on its way along the cycle).
        """
        path = list(path)
        stamped: dict[str, list[int] | None] = {}  # links stamped here: their stamp before
        while True:
            entry = self._load(key)
            if type(entry) is not Link:
                return "here", key, entry, path
            # a cycle's smallest id is met twice within one step: checked at the first visit.
            # Met again on a later hop (the path came from another partition), it is checked
            # as any link: a replay that reaches it through the cycle's links is a repeat
            if key not in stamped:
                if not _fresh(entry.stamps, channel, pos):
                    return "dup", key, None, path
                # what a link relays is recorded in it too: erased, its marker still knows
                # the record (a replay must not bring the customer back through it)
                stamped[key] = entry.stamps.get(channel)
                entry.stamps[channel] = pos
                self.dirty[key] = None
            target = entry.target
            cycle = path[path.index(target):] + [key] if target in path else (
                [key] if target == key else None)
            if cycle is not None:
                root = min(cycle)
                if root == key:
                    stamps = dict(entry.stamps)  # as before this record: it applies here
                    if stamped.get(key) is None:
                        stamps.pop(channel, None)
                    else:
                        stamps[channel] = stamped[key]
                    state = CustomerState(customer_id=key, anonymous=key.startswith(ANON_PREFIX),
                                          stamps=stamps,
                                          epoch=f"{_generation(entry)}:root:{channel}@{pos}")
                    self._put(key, state)
                    return "here", key, state, path
                target = root
            path.append(key)
            if len(path) > routing.MAX_PATH:
                return "loop", key, None, path
            if not self._owned(target):
                return "route", target, None, path
            key = target

    @staticmethod
    def _epoch(previous: Any, cause: str) -> str:
        """A new state's epoch: what created it (a message id, an absorbed id), after the
        generation of the erasure marker it replaces, so a customer erased and created again
        never reuses a change id (the same epoch and change count)."""
        generation = previous.generation if type(previous) is Erased else 0
        return f"{generation}:{cause}"

    # --- input ------------------------------------------------------------------------------
    def on_input(self, msg: Record) -> None:
        self.msg = msg
        recs, rejects = decode(msg.value, now=self.wall_now, fallback_ts=msg.timestamp,
                               limits=self.step.limits)
        for rej in rejects:
            self.result.dead_letters.append((msg, rej))
        channel = f"{routing.TOPIC_INPUT}:{msg.partition}"
        self.in_via = None
        for i, rec in enumerate(recs):
            self.here = [routing.TOPIC_INPUT, msg.partition, msg.offset, i * SUB]
            self.ops = 0
            self.on_interaction(rec, msg.timestamp, channel, [msg.offset, i * SUB], [])

    def on_interaction(self, rec: Interaction, ingest_ts: float, channel: str, pos: list[int],
                       path: list[str]) -> None:
        self.cause = rec.message_id
        cid = rec.customer_id
        if not self._owned(cid):
            self._route(cid, routing.event_op(rec, self._out_via(), path))
            return
        what, key, entry, path = self._resolve(cid, channel, pos, path)
        if what == "dup":
            self.result.duplicates += 1
        elif what == "route":
            rec.customer_id = key
            self._route(key, routing.event_op(rec, self._out_via(), path))
        elif what == "loop":
            self._dead("routing_loop", f"more than {routing.MAX_PATH} links followed")
        else:
            rec.customer_id = key
            self._apply(rec, key, entry, channel, pos, ingest_ts, path)

    def _merge_sources(self, rec: Interaction, key: str) -> list[str]:
        """The customers this event asks to merge into ``key``: its anonymous id's (an
        event with both ids), and for an alias both customers its previousId may name
        (the user, and the anonymous customer, of that id)."""
        out = []
        if rec.user_id is not None and rec.anonymous_id is not None:
            out.append(anonymous_key(rec.anonymous_id))
        if rec.kind == ix.ALIAS and rec.previous_id:
            out += [rec.previous_id, anonymous_key(rec.previous_id)]
        return [src for src in out if src != key]

    def _apply(self, rec: Interaction, key: str, entry: Any, channel: str, pos: list[int],
               ingest_ts: float, path: list[str]) -> None:
        res = self.result
        if type(entry) is CustomerState:
            state: CustomerState | None = entry
            if not _fresh(entry.stamps, channel, pos):
                res.duplicates += 1  # applied before a crash: its effects are in the state
                return
        else:
            if type(entry) is Erased and not _fresh(entry.stamps, channel, pos):
                res.duplicates += 1  # applied before the erasure: must not bring it back
                return
            state = None
        # A user event naming another customer's id asks for that history once the record is
        # new here; the other partition ignores a repeated request (a merge is recorded in
        # the link it leaves there).
        wanted = [src for src in self._merge_sources(rec, key)
                  if state is None or src not in state.merged_ids]
        if state is None:
            state = new_state(rec)
            state.customer_id = key
            state.anonymous = key.startswith(ANON_PREFIX)
            state.epoch = self._epoch(entry, rec.message_id)
            if type(entry) is Erased:
                state.stamps = entry.stamps
            self.work[key] = state
        state.stamps[channel] = pos
        self.dirty[key] = None
        cap = self.step.cfg.max_merged_ids
        for src in wanted:
            if len(state.merged_ids) >= cap:
                self._dead("merge_limit", f"the event was applied; another customer was not "
                           f"merged into it: it has {len(state.merged_ids)} merged ids "
                           f"(SEGMENTER_MAX_MERGED_IDS={cap})")
                break
            if (src, key) not in self.merges:  # once per batch is enough
                self.merges.add((src, key))
                self._route(src, routing.merge_op(src, key, self._new_via(), [*path, SENT_AT + key]))
        traits = state.traits.copy()
        if not apply_in_place(state, rec, self.step.cfg):
            res.duplicates += 1
            return
        res.applied += 1
        res.events_by_kind[rec.kind] = res.events_by_kind.get(rec.kind, 0) + 1
        res.max_event_ts = max(res.max_event_ts, rec.ts)
        self.step.evaluate(state, self._eval_time(state), ingest_ts, res.changes,
                           samples=res.samples, traits_changed=state.traits != traits)

    def _eval_time(self, state: CustomerState) -> float:
        """The later of the customer's own time and the time it was last evaluated at (by
        an event or a tick): time-driven segments never go back, so a late event cannot flap
        a customer out of a segment and back in."""
        t = max(state.last_seen, state.evaluated_at, self.tick_at)
        state.evaluated_at = t
        return t

    # --- routed operations ------------------------------------------------------------------
    def on_routed(self, msg: Record) -> None:
        # Decode everything before touching state: an unreadable operation (a tombstone, a
        # foreign producer, a state layout from another version) is dead-lettered rather
        # than crashing the worker on every restart.
        self.msg = msg
        try:
            op = routing.parse_op(msg.value or b"")
            kind = op[0]
            rec = Interaction.from_wire(op[3]) if kind == routing.OP_EVENT else None
            other = codec.loads(op[5].encode()) if kind == routing.OP_ABSORB else None
            if other is not None and type(other) is not CustomerState:
                raise ValueError("an absorbed history must be a customer state")
        except (ValueError, TypeError) as exc:
            self.result.dead_letters.append((msg, Rejection(
                "invalid_field", f"unreadable routed operation: {exc}"[:1000], msg.value or b"")))
            return
        via, path = op[1], op[2]
        self.here = [routing.TOPIC_ROUTED, msg.partition, msg.offset, 0]
        self.ops = 0
        if via is None:  # from outside the pipeline: its own position
            channel, pos = f"{routing.TOPIC_OUTSIDE}:{msg.partition}", [msg.offset, 0]
        else:
            # "r": what that step sent through the routed topic is a FIFO of its own, apart
            # from what it applied directly (a merge request sent by record 0 arrives after
            # record 1 was applied)
            # and each path of links a FIFO of its own (records relayed through a link on
            # another partition arrive after later ones sent straight)
            n = self.step.partitions
            channel = f"r{via[0]}:{via[1]}" + "".join(
                f">{routing.partition_of(x.removeprefix(SENT_AT), n)}" for x in path)
            pos = [via[2], via[3]]
        self.in_via = via
        if rec is not None:
            self.on_interaction(rec, msg.timestamp, channel, pos, path)
        elif kind == routing.OP_MERGE:
            self._merge_out(op[3], op[4], channel, pos, path, msg.timestamp)
        elif other is not None:
            self._absorb(op[3], op[4], other, channel, pos, path, msg.timestamp)
        elif kind == routing.OP_ERASE:
            self._erase(op[3], op[4], channel, pos, path, msg.timestamp)
        elif kind == routing.OP_UNLINK:
            self._unlink(op[3], set(op[4]), channel, pos)

    def _merge_out(self, source: str, target: str, channel: str, pos: list[int],
                   path: list[str], ingest_ts: float) -> None:
        """At the source's partition: hand its history to ``target``, leave a link.

        An id merged once stays with that customer: a request to merge it into another one
        is ignored (the first user an anonymous id is identified with keeps it, as CDPs do).
        """
        entry = self._load(source)
        if type(entry) is Link:
            # merged already (a repeated request, or into someone else first); recorded, so
            # that once the link is erased a replay of this request is still known
            if _fresh(entry.stamps, channel, pos):
                entry.stamps[channel] = pos
                self.dirty[source] = None
            return
        stamps = entry.stamps if entry is not None else {}
        if entry is not None and not _fresh(stamps, channel, pos):
            return  # a replayed request
        stamps = {k: v[:] for k, v in stamps.items()}
        stamps[channel] = pos
        if type(entry) is CustomerState:
            state = entry
            self.step.exit_all(state, state.last_seen, ingest_ts, "merged into another customer",
                               self.result.changes)
        else:  # nothing to hand over; the target still records the id as merged
            state = CustomerState(customer_id=source, anonymous=source.startswith(ANON_PREFIX))
        self._put(source, Link(target, stamps))
        self._route(target, routing.absorb_op(target, source, codec.dumps_json(state),
                                              self._new_via(), [*path, SENT_AT + source]))

    def _absorb(self, target: str, source: str, other: CustomerState, channel: str,
                pos: list[int], path: list[str], ingest_ts: float) -> None:
        """At the target's partition: fold another customer's history in, once."""
        self.cause = f"absorb:{source}"
        what, key, entry, path = self._resolve(target, channel, pos, path)
        if what == "route":
            self._route(key, routing.absorb_op(key, source, codec.dumps_json(other),
                                               self._out_via(), path))
            return
        if what == "loop":
            self._dead("routing_loop", f"more than {routing.MAX_PATH} links followed")
            return
        if what == "dup" or (entry is not None and not _fresh(entry.stamps, channel, pos)):
            return  # redelivered
        state = entry if type(entry) is CustomerState else None
        if state is None:
            state = CustomerState(customer_id=key, anonymous=key.startswith(ANON_PREFIX),
                                  first_seen=other.first_seen, last_seen=other.last_seen,
                                  decay_ref=other.decay_ref,
                                  epoch=self._epoch(entry, f"absorb:{source}"),
                                  stamps=entry.stamps if type(entry) is Erased else {})
        other.segments.clear()
        other.segment_aux.clear()
        merged = merge(state, other, self.step.cfg)
        merged.stamps[channel] = pos
        self._put(key, merged)
        if other.events:
            self.step.evaluate(merged, self._eval_time(merged), ingest_ts, self.result.changes)

    def _erase(self, cid: str, request_id: str, channel: str, pos: list[int], path: list[str],
               ingest_ts: float) -> None:
        """Erasure of a customer and of every id merged into it, wherever they live.

        An erased id that was merged into another customer (a renamed user id, an anonymous
        id) erases that customer: its data is there. The customer leaves its segments
        (changes to null), its state becomes an erasure marker (no data), and each id merged
        into it loses its link (here directly, elsewhere through an unlink operation).
        Later events start a new customer.
        """
        entry = self._load(cid)
        if type(entry) is Link:
            if not _fresh(entry.stamps, channel, pos):
                return
            target = entry.target
            self._put(cid, Erased(_stamped(entry.stamps, channel, pos), self.wall_now, 1))
            if target in path or len(path) >= routing.MAX_PATH:
                return
            path = [*path, cid]
            if self._owned(target):
                self._erase(target, request_id, channel, pos, path, ingest_ts)
            else:
                self._route(target, routing.erase_op(target, request_id, self._out_via(), path))
            return
        if entry is not None and not _fresh(entry.stamps, channel, pos):
            return
        stamps = _stamped(entry.stamps if entry is not None else {}, channel, pos)
        if type(entry) is CustomerState:
            self.step.exit_all(entry, entry.last_seen, ingest_ts, "erased on request",
                               self.result.changes)
            owners = [cid, *entry.merged_ids, *path]
            for key in entry.merged_ids:
                if self._owned(key):
                    self._unlink(key, set(owners), channel, pos)
                else:
                    self._route(key, routing.unlink_op(key, owners, request_id,
                                                       self._new_via(), [*path, SENT_AT + cid]))
        self._put(cid, Erased(stamps, self.wall_now, _generation(entry) + 1))

    def _unlink(self, key: str, owners: set[str], channel: str, pos: list[int]) -> None:
        """An id merged into an erased customer: its link goes (if it points into it)."""
        entry = self._load(key)
        if entry is None or not _fresh(entry.stamps, channel, pos):
            return
        if type(entry) is Link and entry.target in owners:
            self._put(key, Erased(_stamped(entry.stamps, channel, pos), self.wall_now, 1))
        else:
            # nothing to unlink (erased already, or linked elsewhere): the position is still
            # recorded, so that a replay of this request cannot unlink a link made after it
            entry.stamps[channel] = pos
            self.dirty[key] = None

    def finish(self) -> StepResult:
        """Write the working set back: one table write per touched entry."""
        res = self.result
        # customers that stopped being one (erased, merged) lose their memberships record
        # even without a change (they held no segment)
        gone = [key for key in self.dirty if type(self.work[key]) is not CustomerState
                and type(self.customers.get(key)) is CustomerState]
        res.memberships = self.step.memberships(res.changes, self._load, gone)
        for key in self.dirty:
            entry = self.work[key]
            if entry is None:
                if self.customers.get(key) is not None:
                    del self.customers[key]
            else:
                self.customers[key] = entry
                res.written += 1
        return res


def _generation(entry: Any) -> int:
    if type(entry) is Erased:
        return entry.generation
    if type(entry) is CustomerState:
        head = entry.epoch.partition(":")[0]
        return int(head) if head.isdigit() else 0
    return 0


def _stamped(stamps: dict[str, list[int]], channel: str, pos: list[int]) -> dict[str, list[int]]:
    out = {k: v[:] for k, v in stamps.items()}
    if _fresh(out, channel, pos):
        out[channel] = pos
    return out


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


def event_clock(partition_time: Mapping[int, float], partition_wall: Mapping[int, float],
                wall: float, idle_after_s: float) -> float:
    """A worker's clock for time ticks, from each partition's largest event time applied
    (``partition_time``) and when its last event came (``partition_wall``, wall clock).

    The smallest figure over the partitions active within ``idle_after_s``: one producer's
    far-future event moves only its partition's figure, never the clock, while others are
    active; and never later than the wall clock. With no partition active, time moves on
    with the wall clock from the latest event time (never past it): a quiet live stream
    still lapses customers, while a replay of history keeps its own time. 0.0 before any
    event."""
    if not partition_time:
        return 0.0
    active = [t for p, t in partition_time.items()
              if wall - partition_wall.get(p, 0.0) <= idle_after_s]
    if active:
        return min(wall, min(active))
    last_wall = max(partition_wall.values(), default=wall)
    base = min(wall, max(partition_time.values()))
    return min(wall, base + max(0.0, wall - last_wall - idle_after_s))


class EventClock:
    """A worker's event-time bookkeeping: for each partition, the largest event time applied
    on it and when (wall clock) its last event was applied; :meth:`now` is
    :func:`event_clock` over them. The host observes every step's result; the model-based
    test (tests/unit/test_model.py) feeds one the same way and checks it against its
    reference after every step."""

    __slots__ = ("partition_time", "partition_wall")

    def __init__(self) -> None:
        self.partition_time: dict[int, float] = {}
        self.partition_wall: dict[int, float] = {}

    def observe(self, partition: int, result: StepResult, wall: float) -> None:
        """Account one step's result on ``partition``: only applied events move time."""
        if result.applied:
            self.partition_wall[partition] = wall
            self.partition_time[partition] = max(self.partition_time.get(partition, 0.0),
                                                 result.max_event_ts)

    @property
    def watermark(self) -> float:
        """The largest event time applied on any partition (shown in /health)."""
        return max(self.partition_time.values(), default=0.0)

    def now(self, wall: float, idle_after_s: float) -> float:
        return event_clock(self.partition_time, self.partition_wall, wall, idle_after_s)


_CHANGE_JSON = SegmentChange.__pydantic_serializer__


def change_bytes(change: Change) -> bytes:
    """The ``segment-changes`` value: the record's JSON, by the model's own serializer."""
    return _CHANGE_JSON.to_json(change.record)  # type: ignore[no-any-return]


def membership_bytes(update: MembershipUpdate) -> bytes | None:
    """The memberships topic's value: the JSON document, or None (a tombstone)."""
    return None if update.record is None else update.record.model_dump_json().encode()
