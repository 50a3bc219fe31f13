"""The core as one object: a worker's records in, output records and state writes out.

:class:`Pipeline` is built from settings and holds everything that decides what a record
means: the step (:mod:`.processing`), the topic names, the event clock, the predictive
parameters loaded from models. Every entry point takes one partition's records (or keys)
and the tables' view of that partition, and returns a :class:`Processed`: the records to
send, as ``(topic, key, value, partition, headers)``, and the state writes to make once they
are on the broker. A host delivers records, sends the outputs, writes the state and acks,
in that order; it decides nothing. The worker (``stream_app.host.app``) and the benchmark's
baseline loop (``bench/throughput.py``) are two hosts of this object; nothing here knows
Kafka or Faust.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from ..config import Settings
from .events.parse import Limits
from .predictive.live import LivePredictions
from .processing import (
    EventClock,
    HeldWrites,
    Record,
    Step,
    StepResult,
    change_bytes,
    dead_letter_headers,
    membership_bytes,
)
from .segmentation.base import Segmentation
from .state.customer import StateConfig


class Output(NamedTuple):
    """One record to send. ``partition`` None: the default partitioner's choice over the
    topic's actual partitions (by key, murmur2 as Kafka clients do; round-robin without a
    key)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(slots=True)
class Processed:
    """What one call of the pipeline produced for one partition."""

    partition: int
    outputs: list[Output] = field(default_factory=list)
    # key -> entry to store (processing.DELETED: remove), written after the outputs
    writes: dict[str, Any] = field(default_factory=dict)
    result: StepResult = field(default_factory=StepResult)  # counts, for the host's metrics


class Pipeline:
    """The worker's decisions, from settings (see the module's docstring)."""

    def __init__(self, settings: Settings, segmentations: Sequence[Segmentation]) -> None:
        s = self.settings = settings
        self.segmentations = list(segmentations)
        self.behavior = next((seg for seg in self.segmentations if seg.name == "behavior"),
                             None)
        # BG/NBD + Gamma-Gamma parameters loaded from model snapshots; the step adds each
        # customer's predictions to the features it evaluates rules on
        self.predictions = (LivePredictions() if s.predictions and self.behavior is not None
                            else None)
        self.step = Step(
            input_topic=s.input_topic, routed_topic=s.routed_topic, partitions=s.partitions,
            segmentations=self.segmentations,
            limits=Limits(s.max_message_bytes, s.max_batch_events, s.max_future_skew_s),
            state_config=StateConfig(session_gap_s=s.session_gap_s,
                                     half_life_days=s.recent_half_life_days,
                                     cart_abandon_after_s=s.cart_abandon_after_s,
                                     dedupe_window=s.dedupe_window,
                                     max_merged_ids=s.max_merged_ids),
            sample_every_s=86400.0 if self.behavior is not None else None,
            predictions=self.predictions,
        )
        self.clock = EventClock()

    # --- entry points ----------------------------------------------------------------------
    def run(self, partition: int, records: Iterable[Record],
            table: MutableMapping[str, Any], wall: float) -> Processed:
        """One partition's records (input and routed topics, in offset order per topic)."""
        view = HeldWrites(table)
        return self._done(partition, self.step.run(partition, records, view, wall), view,
                          wall)

    def start_tick(self, partition: int, table: MutableMapping[str, Any], now: float
                   ) -> Processed | None:
        """Move ``partition``'s clock to event time ``now`` before its customers are ticked
        (:meth:`.Step.start_tick`); None when there is nothing to tick."""
        view = HeldWrites(table)
        if not self.step.start_tick(partition, view, now):
            return None
        return Processed(partition, writes=view.held)

    def tick(self, partition: int, table: MutableMapping[str, Any], keys: Iterable[str],
             now: float, wall: float) -> Processed:
        """Re-evaluate the time-driven segmentations of ``keys`` at event time ``now``."""
        view = HeldWrites(table)
        result = self.step.tick(view, keys, now, wall, self.settings.erased_keep_s)
        return self._done(partition, result, view, wall)

    def rescore(self, partition: int, table: MutableMapping[str, Any], keys: Iterable[str],
                segmentations: Sequence[Segmentation], wall: float) -> Processed:
        """Re-score ``segmentations`` of ``keys`` after a model version was loaded."""
        view = HeldWrites(table)
        return self._done(partition, self.step.rescore(view, keys, segmentations, wall), view,
                          wall)

    def backfill(self, partition: int, table: MutableMapping[str, Any], keys: Iterable[str],
                 wall: float) -> Processed:
        """Bring ``keys`` over to the definitions in force (:meth:`.Step.backfill`)."""
        view = HeldWrites(table)
        return self._done(partition, self.step.backfill(partition, view, keys, wall), view,
                          wall)

    def event_time_now(self, wall: float) -> float:
        """The worker's clock for time ticks (:func:`.processing.event_clock`)."""
        return self.clock.now(wall, self.settings.idle_advance_after_s)

    # --- outputs ---------------------------------------------------------------------------
    def outputs(self, result: StepResult, wall: float) -> list[Output]:
        """The records of one step's result, in the order they must be sent: routed
        operations, segment changes, then memberships (after the changes, in the same
        delivery, before the state: README "Subscribing to segments"), dead letters and
        training samples."""
        s = self.settings
        out = [Output(s.routed_topic, key.encode(), value, part)
               for key, part, value in result.routed]
        out += [Output(s.changes_topic, c.customer_id.encode(), change_bytes(c))
                for c in result.changes]
        out += [Output(s.memberships_topic, u.customer_id.encode(), membership_bytes(u))
                for u in result.memberships]
        # keyed as the message was; the default partitioner over the topic's actual
        # partitions (round-robin without a key): the DLQ may have any partition count
        out += [Output(s.dlq_topic, msg.key, rej.payload,
                       headers=dead_letter_headers(msg, rej, wall))
                for msg, rej in result.dead_letters]
        if self.behavior is not None:
            out += [Output(s.training_topic, None, orjson.dumps(feats), 0)
                    for feats in result.samples]
        return out

    def _done(self, partition: int, result: StepResult, view: HeldWrites, wall: float
              ) -> Processed:
        self.clock.observe(partition, result, wall)
        return Processed(partition, self.outputs(result, wall), view.held, result)
