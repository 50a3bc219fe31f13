"""The Faust application: topics, tables, the processing agent and the worker's web views.

Agents are thin: they group a batch of events by partition, hand each group to the pure
:class:`~stream_app.processing.Step` together with that partition's table view, and send what
comes back (routed records, dead letters, segment changes).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from typing import Any

import faust
from faust.streams import _current_event

from .config import Settings
from .events.parse import Limits
from .kafka.clients import faust_credentials
from .processing import Message, Step, StepResult, change_bytes, dead_letter_headers
from .segmentation.base import Segmentation
from .state import codec
from .state.customer import StateConfig

log = logging.getLogger(__name__)


class _Msg:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _PartitionContext:
    """Stands in for Faust's current event so table writes go to ``partition``.

    Faust picks a table write's changelog partition (and rocksdb shard) from the current
    event. A batch spans partitions, so each partition's writes run under its own context.
    """

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Msg(topic, partition)


class Runtime:
    """Everything a worker holds: settings, the app, tables, topics and live statistics."""

    def __init__(self, settings: Settings, segmentations: list[Segmentation] | None = None
                 ) -> None:
        codec.register()
        self.settings = s = settings
        self.segmentations: list[Segmentation] = list(segmentations or [])
        self.started_at = time.time()
        self.watermark = 0.0  # max event time applied by this worker
        self.last_event_wall = 0.0
        self.stats: dict[str, int] = defaultdict(int)
        self.app = app = faust.App(
            s.app_id,
            broker=s.broker_url.replace("kafka://", "segmenter-kafka://", 1).replace(
                "aiokafka://", "segmenter-kafka://", 1),
            broker_credentials=faust_credentials(s),
            store="rocksdb://" if s.store == "rocksdb" else "memory://",
            datadir=str(s.data_dir),
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            broker_rebalance_timeout=s.rebalance_timeout,
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=True,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host="127.0.0.1" if s.web_host in ("0.0.0.0", "::") else s.web_host,
            stream_buffer_maxsize=max(4096, s.batch_size * 2),
            producer_linger=0.005,
            table_standby_replicas=0,
            logging_config=None,
        )
        self.input_topic = app.topic(s.input_topic, partitions=s.partitions,
                                     key_serializer="raw", value_serializer="raw")
        self.routed_topic = app.topic(s.routed_topic, partitions=s.partitions, internal=True,
                                      key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.changes_topic = app.topic(s.changes_topic, partitions=s.partitions,
                                       key_serializer="raw", value_serializer="raw")
        self.customers = self._table("customers", "customer-state")
        self.aliases = self._table("aliases", "utf8")
        self.step = Step(
            input_topic=s.input_topic, routed_topic=s.routed_topic, partitions=s.partitions,
            segmentations=self.segmentations,
            limits=Limits(s.max_message_bytes, s.max_batch_events, s.max_future_skew_s),
            state_config=StateConfig(session_gap_s=s.session_gap_s,
                                     half_life_days=s.recent_half_life_days,
                                     cart_abandon_after_s=s.cart_abandon_after_s,
                                     dedupe_window=s.dedupe_window),
        )
        self._declare_agents()
        from .web.views import register_views

        register_views(self)

    def _table(self, name: str, value_serializer: str) -> Any:
        table = self.app.Table(name, default=None, partitions=self.settings.partitions)
        # Set before first use: the store and changelog topic read them lazily.
        table.key_serializer = "utf8"
        table.value_serializer = value_serializer
        return table

    # --- processing ----------------------------------------------------------------------------
    def _declare_agents(self) -> None:
        s = self.settings
        source = self.app.topic(s.input_topic, s.routed_topic, key_serializer="raw",
                                value_serializer="raw")

        @self.app.agent(source, name="process")
        async def process(stream: faust.StreamT) -> None:
            async for events in stream.take_events(s.batch_size, within=s.batch_within):
                await self.handle(events)

    async def handle(self, events: list[Any]) -> None:
        """Process one batch of Faust events (any mix of partitions and topics)."""
        groups: dict[int, list[Message]] = defaultdict(list)
        for ev in events:
            m = ev.message
            groups[m.partition].append(
                Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp))
        wall = time.time()
        for partition, messages in groups.items():
            ctx = _PartitionContext(self.settings.routed_topic, partition)
            token = _current_event.set(weakref.ref(ctx))  # type: ignore[arg-type]
            try:
                result = self.step.run(partition, messages, self.customers, self.aliases, wall)
            finally:
                _current_event.reset(token)
            await self._send(result, wall)
            self.stats["messages"] += len(messages)

    async def _send(self, result: StepResult, wall: float) -> None:
        routed, dlq, changes = self.routed_topic, self.dlq_topic, self.changes_topic
        for key, partition, value in result.routed:
            await routed.send(key=key.encode(), value=value, partition=partition)
        for msg, rej in result.dead_letters:
            await dlq.send(key=msg.key, value=rej.payload,
                           headers=dead_letter_headers(msg, rej, wall))
        for change in result.changes:
            await changes.send(key=change.customer_id.encode(), value=change_bytes(change))
        st = self.stats
        st["applied"] += result.applied
        st["duplicates"] += result.duplicates
        st["dead_letters"] += len(result.dead_letters)
        st["changes"] += len(result.changes)
        st["routed"] += len(result.routed)
        if result.applied:
            self.last_event_wall = wall
            self.watermark = max(self.watermark, result.max_event_ts)

    # --- helpers for web views -------------------------------------------------------------------
    def customer(self, customer_id: str) -> Any:
        """Read a customer's state from this worker's table (None if absent here)."""
        return self.customers.get(customer_id)

    def ready(self) -> bool:
        """Joined the group, partitions assigned and tables recovered."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return False
        try:
            assigned = app.consumer.assignment()
        except Exception:
            return False
        return bool(assigned) and app.tables.recovery.completed.is_set()
