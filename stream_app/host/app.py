"""The Faust application: topics, tables, the processing agent and the worker's web views.

Agents are thin: they group a batch of events by partition, hand each group to the pure
:class:`~stream_app.core.processing.Step` together with that partition's table view, and send what
comes back (routed records, dead letters, segment changes).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mode import Service

from ..config import Settings
from ..core.pipeline import Pipeline, Processed
from ..core.processing import TICK_CHUNK
from ..core.routing import partition_of
from ..core.segmentation.base import Segmentation
from ..core.state import codec
from ..core.state.sizes import SegmentSizes
from ..metrics import Metrics
from ..web.timeseries import Sampler
from .batching import BatchSink, OutputBatcher
from .clients import faust_credentials
from .codecs import register as register_codecs
from .health import PROBE_INTERVAL_S, BrokerWatch
from .tables import WriteBehind
from .transport import SegmenterApp, aiokafka_producer, committed_offset, send_now

log = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold: young, middle, old generations

# per partition database of each table
ROCKSDB_OPTIONS = {"write_buffer_size": 4 * 1024**2, "max_write_buffer_number": 2,
                   "block_cache_size": 8 * 1024**2}


class Runtime:
    """The host of one worker: the Faust app, its topics and tables, delivery of records to
    the pipeline (the core) and of its outputs to the broker, in order (outputs, then state,
    then acks), and the live statistics. Implements :class:`.worker_view.WorkerHost`."""

    def __init__(self, settings: Settings, segmentations: list[Segmentation] | None = None,
                 definitions: Any = None) -> None:
        register_codecs()
        self.settings = s = settings
        # the core: every decision about a record (stream_app/core/pipeline.py); this class only
        # delivers records to it, sends what it returns, writes the state and acks
        self.pipeline = Pipeline(s, list(segmentations or []))
        self.segmentations = self.pipeline.segmentations
        self.behavior = self.pipeline.behavior
        self.step = self.pipeline.step
        self.predictions = self.pipeline.predictions
        self.clock = self.pipeline.clock
        self.started_at = time.time()
        self.metrics = Metrics()
        self.stats = self.metrics.totals  # /health "stats": counted with the metrics, once
        self.sampler = Sampler(self.metrics.registry)
        # customers per segment on this worker: {partition: {segmentation: {segment: n}}}
        self.sizes = SegmentSizes()
        self._sizes_generation = -1
        # Held while a batch (or a time tick) is between reading and writing the tables.
        self.state_lock = asyncio.Lock()
        self.broker_watch = BrokerWatch(s, self.metrics)  # /health "broker", stall metric
        self.app = app = SegmenterApp(
            s.app_id,
            fetch_wait_ms=s.fetch_wait_ms,
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
            broker_commit_interval=s.commit_interval_s,
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
        # one table: customer states, the links of ids merged into others, erasure markers
        # and the partition clocks (state/customer.py), so each change is one record
        self.customers = self._table("customers", "customer-state")
        # what the worker reads and writes: the table with the writes of batches whose
        # outputs are not on the broker yet (host/tables.py)
        self.customer_states = WriteBehind(self.customers, codec.dumps, s.routed_topic)
        self._last_written: asyncio.Future[None] | None = None  # the newest batch's writes
        self._declare_agents()
        self.timekeeper = Timekeeper(self)
        from . import modeling

        # the clustering's trainer agent and model follower (None: no clustering)
        self.modeling = (modeling.install(self, self.behavior)  # type: ignore[arg-type]
                         if self.behavior is not None else None)
        from . import redefinition

        # live rule definitions: the topic, the file watcher, the backfill, their views
        # (``definitions``: redefinition.Startup; None: the file's)
        self.definitions = redefinition.install(self, definitions)
        from ..web.admin import register_admin
        from ..web.views import register_views

        register_views(self)  # read-only views (worker_view.WorkerView)
        register_admin(self)  # DELETE /admin/customers/{id}: erasure requests
        # The worker's components, each a mode Service with its own lifecycle, started with
        # the app once its tables are recovered (when Faust starts the app's own tasks) and
        # stopped with it. Faust's own: the consumer and producer, the tables, the trainer
        # agent (modeling.py) and the web server.
        self.components: list[Service] = [self.ingest, self.timekeeper]
        if self.modeling is not None:
            self.components.append(self.modeling.follower)
        self.components.append(self.definitions)

        @app.task
        async def start_components() -> None:
            for component in self.components:
                await app.add_runtime_dependency(component)

    def _table(self, name: str, value_serializer: str) -> Any:
        # RocksDB: Faust's defaults (64 MiB x 3 write buffers and a 2 GiB block cache, for
        # each partition's database) let RSS grow with the data; bounded here, so memory
        # stays flat as customers accumulate (segmenter bench, rss phase).
        options = ROCKSDB_OPTIONS if self.settings.store == "rocksdb" else None
        table = self.app.Table(name, default=None, partitions=self.settings.partitions,
                               options=options)
        # Faust derives serializers from model types; ours are codecs, so set them on the
        # table and on its changelog topic (created in the constructor), before first use.
        table.key_serializer = "utf8"
        table.value_serializer = value_serializer
        topic = table.changelog_topic
        topic.key_serializer = "utf8"
        topic.value_serializer = value_serializer
        return table

    # --- processing ----------------------------------------------------------------------------
    def _declare_agents(self) -> None:
        """The input and routed topics are consumed in batches (:mod:`.kafka.batching`):
        the consumer appends fetched messages to the sink, one task hands each batch (what
        arrived while the previous one was processed, at most ``batch_size``) to
        :meth:`handle_messages`, then acks it; Faust commits acked offsets. A batch waits
        at most ``batch_within`` seconds to fill."""
        s = self.settings
        # Registered with Faust's conductor like an agent's channel: subscribed, co-partitioned
        # with the tables by the assignor, acks enabled.
        self.source = self.app.topic(s.input_topic, s.routed_topic, key_serializer="raw",
                                     value_serializer="raw")
        self.app.topics.add(self.source)
        sink = self.app.batch_sink = BatchSink(  # read by the transport
            self.app, (s.input_topic, s.routed_topic), self.handle_messages,
            max_batch=s.batch_size, max_buffered=max(4096, s.batch_size * 2),
            within=s.batch_within)

        self.ingest = Ingest(sink)

    async def handle_messages(self, batch: list[Any]) -> Awaitable[Any]:
        """Process one batch of Kafka messages (any mix of partitions and topics).

        Returns when the batch's outputs are handed to the producer and its state writes
        are staged (readable by the next batch). The returned awaitable completes when the
        state is on the broker too, after the outputs (:mod:`.kafka.tables`); then the
        batch may be acked. :class:`.kafka.batching.BatchSink` handles the next batches
        meanwhile."""
        started = time.perf_counter()
        groups: dict[int, list[Any]] = defaultdict(list)
        for m in batch:  # Faust's messages: what the step reads of a record, as they are
            groups[m.partition].append(m)
        wall = time.time()
        staged: list[tuple[int, dict[str, Any]]] = []
        async with self.state_lock:
            out = OutputBatcher()
            for partition, messages in groups.items():
                done = self.pipeline.run(partition, messages, self.customer_states, wall)
                out.extend(done.outputs)
                self._account(done)
                self.customer_states.stage(done.writes)
                staged.append((partition, done.writes))
            settlement = await self._write_behind(out, staged)
        self.metrics.observe_batch(len(batch), time.perf_counter() - started)
        return settlement

    async def _write_behind(self, out: OutputBatcher,
                            staged: Sequence[tuple[int, dict[str, Any]]]
                            ) -> asyncio.Future[None]:
        """Send ``out``, and write the ``staged`` state once it is on the broker (in batch
        order, after the previous batch's state). Returns what completes when the state is
        on the broker too. A failure fails this and every later batch: none of them is
        acked, and the worker stops (the batch sink crashes the app)."""
        producer = self._aiokafka_producer()
        sent = await out.send(producer)
        send_now(producer)  # no linger: nothing more is coming for this batch
        previous, written = self._last_written, asyncio.get_running_loop().create_future()
        self._last_written = written
        return asyncio.ensure_future(self._settle(sent, previous, written, staged))

    async def _settle(self, sent: list[asyncio.Future[Any]],
                      previous: asyncio.Future[None] | None, written: asyncio.Future[None],
                      staged: Sequence[tuple[int, dict[str, Any]]]) -> None:
        producer = self._aiokafka_producer()
        try:
            await asyncio.gather(*sent)  # outputs first, state second (see HeldWrites)
            if previous is not None:
                await previous  # the tables are written in batch order
            confirms = []
            for partition, writes in staged:
                confirm = await self.customer_states.write(partition, writes, producer)
                if confirm is not None:
                    confirms.append(confirm)
            # No send_now: the changelog records linger (producer_linger) and go out with
            # the next batch's outputs, one produce request for both, unless that takes
            # longer than the linger. Each request costs the embedded broker ~1 ms of CPU.
        except BaseException as exc:
            written.set_exception(exc)
            written.exception()  # retrieved: the next batch may not be there to see it
            raise
        written.set_result(None)
        await asyncio.gather(*confirms)

    def _aiokafka_producer(self) -> Any:
        return aiokafka_producer(self.app)

    async def deliver(self, done: Processed) -> asyncio.Future[None]:
        """Send one pipeline call's outputs, then write its state (as a batch's: after the
        batches handled before). Called under the state lock; returns the settlement."""
        out = OutputBatcher()
        out.extend(done.outputs)
        self._account(done)
        self.customer_states.stage(done.writes)
        return await self._write_behind(out, [(done.partition, done.writes)])

    def _account(self, done: Processed) -> None:
        """Count one pipeline call's result (metrics and /health's totals), segment sizes."""
        result = done.result
        self.metrics.account(result, now=time.time())
        if result.changes:
            self.sizes.account(done.partition, result.changes)

    async def sweep(self, work: Callable[[int, list[str], float], Processed],
                    start: Callable[[int], Processed | None] | None = None) -> list[Processed]:
        """Run ``work(partition, keys, wall)`` over every customer of this worker's
        partitions, :data:`~.processing.TICK_CHUNK` keys at a time, each chunk under the
        state lock and delivered as a batch is (outputs, then state, in batch order); the
        time tick, the re-scoring after a model version and the backfill after a definitions
        change are sweeps. ``start(partition)`` runs first for each partition (the tick
        moves the partition's clock); a partition whose start returns None is skipped.
        Returns what each chunk that wrote something produced (its counts), once each
        partition's last chunk is on the broker."""
        n = self.settings.partitions
        owned = set(self.assigned())
        # Keys only, the staged writes' too (a customer whose state is not in the table yet
        # is a customer all the same): the states are read a chunk at a time. Reading them
        # all up front decoded every customer at once, and that peak stayed in the worker's
        # RSS (~3 KB per customer with the rocksdb store; segmenter bench, rss phase).
        by_partition: dict[int, list[str]] = defaultdict(list)
        for cid in list(self.customer_states):
            p = partition_of(cid, n)
            if p in owned:
                by_partition[p].append(cid)
        done: list[Processed] = []
        for p in sorted(owned):
            settlement = None
            if start is not None:
                async with self.state_lock:
                    first = start(p)
                    if first is None:
                        continue
                    settlement = await self.deliver(first)
            keys = by_partition.get(p, [])
            for i in range(0, len(keys), TICK_CHUNK):
                async with self.state_lock:
                    chunk = work(p, keys[i:i + TICK_CHUNK], time.time())
                    if not chunk.writes:
                        continue
                    done.append(chunk)
                    settlement = await self.deliver(chunk)
            if settlement is not None:
                await settlement
        return done

    # --- time -------------------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """The largest event time applied on any partition here (shown in /health)."""
        return self.clock.watermark

    def event_time_now(self, wall: float | None = None) -> float:
        """The worker's clock for time ticks: event time, robust to one skewed producer.

        Each partition keeps the largest event time applied on it. The clock is the
        smallest of them over the partitions that received events within
        ``idle_advance_after_s`` (one partition's far-future event moves only that
        partition's figure, never the clock, while others are active), and never later
        than the wall clock. When no partition is active, time moves on with the wall clock
        from the last event time seen (never past it), so a quiet live stream still lapses
        customers, while a replay of history keeps its own time.
        """
        return self.pipeline.event_time_now(time.time() if wall is None else wall)

    def assigned(self) -> list[int]:
        """The partitions this worker owns (none while it is not in the group)."""
        try:
            tps = self.app.consumer.assignment()
        except Exception:
            return []
        return sorted(tp.partition for tp in tps if tp.topic == self.settings.routed_topic)

    def refresh_gauges(self) -> None:
        if not self.ready():
            return
        assigned = self.assigned()
        generation = self.app.consumer_generation_id
        if generation != self._sizes_generation:
            self._recount(assigned)
            self._sizes_generation = generation
        self.metrics.set_segment_sizes(self.sizes.totals(assigned))
        lags: dict[tuple[str, int], int] = {}
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic in (self.settings.input_topic, self.settings.routed_topic):
                hw = consumer.highwater(tp)
                pos = committed_offset(consumer, tp)
                if hw is not None:
                    lags[(tp.topic, tp.partition)] = max(0, hw - (pos or 0))
        self.metrics.set_consumer_lag(lags)

    def _recount(self, assigned: list[int]) -> None:
        """Count segment members of the assigned partitions from the stored states (after
        rebalances), the staged writes of batches in flight included: their changes are
        already counted, and a recount from the table alone dropped them for good (a
        re-scoring pass in flight at the first recount left its customers uncounted in
        /segments until the next rebalance). No await in the loop, so nothing changes
        under it."""
        n = self.settings.partitions
        self.sizes.recount(assigned, self.customer_states.entries(),
                           lambda cid: partition_of(cid, n))

    async def tick(self) -> None:
        """Re-evaluate time-driven segmentations of every local customer at the worker's
        clock (:meth:`event_time_now`), partition by partition, through the pipeline."""
        now = self.event_time_now()
        if not self.step.timed or not now or not self.ready():
            return
        states, pipeline = self.customer_states, self.pipeline
        await self.sweep(lambda p, keys, wall: pipeline.tick(p, states, keys, now, wall),
                         start=lambda p: pipeline.start_tick(p, states, now))

    # --- what the views see (worker_view.WorkerView) ---------------------------------------------
    @property
    def table_name(self) -> str:
        return str(self.customers.name)

    def customer_ids(self) -> list[str]:
        """The keys of the customer table on this worker (states, links, markers)."""
        return list(self.customer_states)

    def customer(self, customer_id: str) -> Any:
        """A customer's state on this worker, as of the last batch handled (None if absent
        here)."""
        return self.customer_states.get(customer_id)

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


class Ingest(Service):
    """Hands each batch of the input and routed topics to the worker (``BatchSink.run``)."""

    def __init__(self, sink: BatchSink) -> None:
        super().__init__()
        self.sink = sink

    @Service.task
    async def _run(self) -> None:
        # What start-up made (modules, Faust, River, pydantic schemas: most of the heap)
        # lives for good: out of the cyclic collector's reach, a full collection no longer
        # walks it. Those walks paused a batch for ~100 ms every few seconds under load
        # (segmenter bench --phases latency).
        gc.freeze()
        # Nearly everything a batch allocates dies with it, freed by reference counts; the
        # young-generation collections (every 700 allocations by default: ~100 a second)
        # took ~5 % of the worker's time, and their promotions triggered the full ones.
        # Fewer of both; the cycles they exist for are rare here.
        gc.set_threshold(*GC_THRESHOLDS)
        await self.sink.run()  # a failed batch crashes the app (batching.py)


class Timekeeper(Service):
    """The worker's timers: the time tick, the metrics sampler and gauges, the broker watch."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__()
        self.rt = rt

    @Service.task
    async def _tick(self) -> None:
        async for _ in self.itertimer(self.rt.settings.tick_interval_s, name="time-tick"):
            await self.rt.tick()

    @Service.task
    async def _sample(self) -> None:
        rt = self.rt
        async for _ in self.itertimer(rt.sampler.interval_s, name="sample-metrics"):
            rt.refresh_gauges()
            rt.sampler.sample()

    @Service.task
    async def _watch_broker(self) -> None:
        async for _ in self.itertimer(PROBE_INTERVAL_S, name="broker-watch"):
            await self.rt.broker_watch.check()

    async def on_stop(self) -> None:
        await self.rt.broker_watch.close()
