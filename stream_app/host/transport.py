"""Faust's aiokafka transport, with end offsets verified by reading.

Some Kafka-protocol brokers (Tansu, the embedded broker) answer ListOffsets(latest) with the
base offset of the last record batch + 1 instead of the last offset + 1. Faust's table
recovery reads changelogs up to that figure, so it would stop short and lose the tail, and a
rocksdb-backed worker refuses to start ("persisted offset ... higher than highwater").

Fetch is right on those brokers, so the true end is found by reading: from (reported end - 1)
read each partition until the fetch comes back empty, and take last offset seen + 1. On a
correct broker this finds nothing beyond the reported end and changes nothing. The probe runs
only when Faust asks for highwaters (recovery, start-up), never on the per-message path.

The consumer also delivers the worker's input topics in batches (:mod:`.batching`): Faust's
own per-message delivery costs more than the whole processing of an event.

Registered as the ``segmenter-kafka`` transport (entry point ``faust.transports``).

**The one module that touches private members of faust, mode and aiokafka.** Each use says
which upstream behaviour it relies on and why the public API does not serve. The versions are
pinned exactly (pyproject.toml), and ``tests/unit/test_privates.py`` checks that every member
used here still exists with the signature relied on, and that no other module uses one: an
upgrade that moves one fails in CI, naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import aiokafka
import faust
from aiokafka.structs import TopicPartition
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from .batching import BatchSink

log = logging.getLogger(__name__)

PROBE_IDLE_S = 0.3
PROBE_DEADLINE_S = 30.0
PROBE_ANSWER_S = 5.0


async def probe_true_ends(consumer: aiokafka.AIOKafkaConsumer, reported: Mapping[TP, int],
                          idle_s: float = PROBE_IDLE_S) -> dict[TP, int]:
    """Read each partition from (reported end - 1) until idle; return corrected end offsets.

    ``consumer`` must be started, group-less and assigned nothing; the caller stops it
    afterwards (aiokafka's stop() can hang on a consumer whose assignment was emptied).
    """
    ends = {tp: int(off) for tp, off in reported.items()}
    todo = {TopicPartition(tp.topic, tp.partition): tp for tp, off in ends.items() if off > 0}
    if not todo:
        return ends
    consumer.assign(list(todo))
    for ktp, tp in todo.items():
        consumer.seek(ktp, ends[tp] - 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_DEADLINE_S
    # (reported end - 1) is a record (the last batch's first), so every partition answers
    # with at least one: an empty fetch before that is a slow answer (a busy machine), not
    # the end. Waited for up to PROBE_ANSWER_S (a control record there would never answer).
    unanswered = set(todo)
    patience = loop.time() + PROBE_ANSWER_S
    while loop.time() < deadline:
        batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=10_000)
        if not batch and (not unanswered or loop.time() > patience):
            break
        for ktp, records in batch.items():
            if records:
                unanswered.discard(ktp)
                tp = todo[ktp]
                ends[tp] = max(ends[tp], records[-1].offset + 1)
    changed = {f"{tp.topic}[{tp.partition}]": (reported[tp], ends[tp])
               for tp in ends if ends[tp] != reported[tp]}
    if changed:
        log.info("corrected end offsets reported by the broker: %s", changed)
    return ends


# How long the broker may hold a fetch. aiokafka has one fetch in flight per broker, and it
# leaves out the partitions whose records are still buffered; records that reach those
# partitions meanwhile wait until the fetch in flight returns: on data for its own partitions,
# or after this wait. Faust's 1.5 s put the median input -> segment change latency at ~1 s.
# A plain aiokafka consumer of bursty traffic on 8 partitions waited (hand-over to receipt,
# embedded broker): p50 8 / 13 / 18 / 19 / 134 ms with 5 / 10 / 20 / 50 / 500 ms. But every
# empty fetch costs the broker too (an idle worker: 0.09 cores of the embedded broker at 50 ms,
# 0.22 at 10 ms). So the wait is short (``SEGMENTER_FETCH_WAIT_MS``) while records come, and
# IDLE_FETCH_WAIT_MS once a fetch comes back empty; the first record after a quiet spell ends
# the long wait at once (its partition is in the fetch in flight, nothing being buffered).
FETCH_MAX_WAIT_MS = 10
IDLE_FETCH_WAIT_MS = 250


class SegmenterApp(faust.App):
    """Faust's app with what this transport reads of the worker declared on it (nothing is
    set on Faust's own objects): the fetch wait while records come, and the batch sink the
    consumer delivers the input topics to (None: Faust's own delivery)."""

    def __init__(self, *args: Any, fetch_wait_ms: int = FETCH_MAX_WAIT_MS,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_wait_ms = fetch_wait_ms
        self.batch_sink: BatchSink | None = None


def _fetch_wait_ms(app: Any) -> int:
    return app.fetch_wait_ms if isinstance(app, SegmenterApp) else FETCH_MAX_WAIT_MS


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read when the consumer starts (and creates its fetcher)
        consumer._fetch_max_wait_ms = _fetch_wait_ms(self.app)
        return consumer

    def set_fetch_wait(self, busy: bool) -> None:
        """Short fetch waits while records come, long ones when idle (see above). Called
        from the app's thread; the fetcher reads the figure for each fetch it sends."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = (_fetch_wait_ms(self.app) if busy
                                          else IDLE_FETCH_WAIT_MS)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction or not any(reported.values()):
            return reported
        conf = self.app.conf
        auth = faust_aiokafka.credentials_to_aiokafka_auth(
            conf.broker_credentials, conf.ssl_context)
        transport = cast(Any, self.transport)
        # Short-lived and group-less: it must not prefetch or join anything afterwards.
        probe = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
            **auth,
        )
        await probe.start()
        try:
            return await probe_true_ends(probe, reported)
        finally:
            await probe.stop()


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with batch delivery and a seek that never moves back over
    messages already handed to the sink.

    At the end of a rebalance Faust resumes the stream partitions, then seeks them to their
    committed offsets (``Recovery.on_recovery_completed``), then resumes the flow. Meanwhile
    the fetcher already delivers from the position the assignment started at, so a fresh
    worker hands on messages past the committed offset while the seek moves the partition
    back. Faust's own bookkeeping then resets the read offsets to the committed ones: the
    messages come again (applied twice), or, when they came again before the reset, the ones
    after them are taken for stale and the partition stalls (found by the restart tests).
    For the sink's topics the consumer remembers, per partition of the current assignment,
    the last offset handed to the sink, which keeps what it holds when the flow resumes
    (:meth:`.batching.BatchSink.clear`): a message at or below it is a re-delivery and is
    skipped, and the seek never sets the read offset below it, so delivery goes on in order
    whatever the seek and the in-flight fetches do. A partition's record is forgotten when it
    is revoked (the sink is cleared then, and the messages are fetched again from the
    committed offset). Other topics keep Faust's own path and bookkeeping.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition of the current assignment: the last offset handed on.
        self._handed: dict[TP, int] = {}

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._handed.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        await super().perform_seek()  # read offsets := committed offsets
        read = self._read_offset
        for tp, last in self._handed.items():
            current = read.get(tp)
            if current is None or current < last:
                read[tp] = last

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        """Faust's drain loop, with the messages of a :class:`.batching.BatchSink` handed
        over synchronously.

        Faust awaits ``wait_first(callback(message), suspend_flow.wait())`` for every
        message: two tasks and several event-loop turns each. For the sink's topics this
        appends the message to the sink instead (read offsets and gaps recorded as Faust
        does); other topics (the clustering's) take Faust's own path. While the flow is
        suspended (rebalance) nothing is delivered to the sink and the sink is cleared.

        Fetched records are walked as Faust's ``getmany`` does (the same flow, generation and
        active-partition checks, the same messages), but partition by partition in a plain
        loop: its async generator, round-robin iterator and per-message high-water update
        cost ~5 % of the worker (segmenter bench; py-spy). Order within a partition is
        kept; across partitions the sink takes them all into one batch anyway.
        """
        sink = self.app.batch_sink if isinstance(self.app, SegmenterApp) else None
        if sink is None:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        busy = True  # the fetcher starts with the short wait
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is not None and not self.should_stop:
                    got = await self._deliver(records, active, sink)
                    if got != busy:
                        busy = got
                        self._thread.set_fetch_wait(busy)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if sink.full:
                        await self.wait_first(sink.wait_room(), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, records: Mapping[TP, Any], active: set[TP] | None,
                       sink: BatchSink) -> bool:
        """Hand fetched ``records`` on; True if there were any."""
        if not self.flow_active:
            # as Faust's getmany: records fetched during a rebalance are dropped, and the
            # partitions are sought back to their committed offsets
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("seek to committed offsets after a rebalance failed: %r", exc)
            return bool(records)
        app = self.app
        generation = app.consumer_generation_id
        sink_topics, put = sink.topics, sink.put
        read_offset, handed = self._read_offset, self._handed
        suspend_flow = self.suspend_flow
        to_message = self._to_message
        track_end = app.monitor.track_tp_end_offset
        buffered = self._buffered_partitions
        got = False
        for tp, tp_records in records.items():
            if not tp_records:
                continue
            if not self.flow_active or app.consumer_generation_id != generation:
                break  # a rebalance began: what is left is fetched again
            if active is not None and tp not in active and tp not in buffered:
                continue
            got = True
            track_end(tp, self.highwater(tp))
            to_sink = tp.topic in sink_topics
            gaps = app.topics.acks_enabled_for(tp.topic)
            last = handed.get(tp)  # sink topics only
            for record in tp_records:
                offset = record.offset
                if last is not None and offset <= last:
                    continue  # handed on already: fetched again after a seek back
                r_offset = read_offset[tp]
                if r_offset is not None and offset < r_offset:
                    continue  # Faust drops these too ("DROPPED MESSAGE")
                message = to_message(tp, record)
                if r_offset and offset - r_offset > 1 and gaps:
                    await self._add_gap(tp, r_offset + 1, offset)
                    if not self.flow_active or app.consumer_generation_id != generation:
                        return got
                if to_sink:
                    if suspend_flow.is_set() or not put(message):
                        return got  # rebalancing: Faust's getmany would stop too
                    handed[tp] = last = offset
                else:
                    # Faust's own path, and its own bookkeeping: its queues are cleared
                    # when the flow resumes, so what they held must come again after the
                    # seek.
                    await self.wait_first(self.callback(message), suspend_flow.wait())
                    if not self.flow_active or app.consumer_generation_id != generation:
                        read_offset[tp] = offset
                        return got
                read_offset[tp] = offset
        return got


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


# --- the other private members the host relies on ------------------------------------------

def send_now(producer: Any) -> None:
    """Have ``producer`` (an ``AIOKafkaProducer``) send what it holds now, not after
    ``linger_ms``: the worker calls this at the end of a batch, when nothing more is coming.
    It closes the open batches and wakes the sender, as aiokafka does before a transaction
    commit (``MessageAccumulator.flush_for_commit``). Appends after this go to new batches.
    Does nothing on an aiokafka without these internals (the batches go after the linger)."""
    acc = getattr(producer, "_message_accumulator", None)
    batches = getattr(acc, "_batches", None)
    waiter = getattr(acc, "_waiter_future", None)
    if batches is None or waiter is None:
        return
    for queued in batches.values():
        for batch in queued:
            batch._builder.close()
    if not waiter.done():
        waiter.set_result(None)


def aiokafka_producer(app: faust.App) -> aiokafka.AIOKafkaProducer:
    """The started ``AIOKafkaProducer`` under Faust's producer. The worker sends its outputs
    as record batches (``create_batch`` / ``send_batch``, a fraction of the cost of one
    ``send`` per record), which Faust's ``Producer`` does not expose; its
    ``_ensure_producer`` returns the aiokafka producer it started."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset Faust last committed for ``tp`` (for the lag gauge): Faust keeps it in
    ``Consumer._committed_offset``; the public ``committed()`` asks the broker (a round
    trip per partition, every few seconds). None when unknown."""
    offsets = getattr(consumer, "_committed_offset", None)
    return None if offsets is None else offsets.get(tp)


class _Msg:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _PartitionContext:
    """Stands in for Faust's current event so that store writes go to ``partition``.

    A rocksdb store keeps one database per partition and picks it from the current event's
    message; a batch spans partitions, so each partition's writes run under their own."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Msg(topic, partition)


@contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Table writes in here go to ``partition``'s store. Faust's stores find the partition
    of a write from the current event (the private contextvar ``faust.streams._current_event``,
    a weak reference to the event); there is no public way to write to a given partition."""
    ctx = _PartitionContext(topic, partition)
    token = _current_event.set(weakref.ref(ctx))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class BoundedWorker(faust.Worker):
    """A Faust worker whose shutdown on SIGINT/SIGTERM cannot hang.

    Faust/mode stop gracefully (offsets committed, tables flushed); if that has not finished
    within ``shutdown_timeout`` seconds the process exits anyway, so orchestrators and
    ``timeout`` never have to escalate to SIGKILL. mode's ``Worker`` installs its signal
    handlers as ``_on_sigint`` / ``_on_sigterm`` (no public hook runs at the signal itself).
    """

    def __init__(self, *args: object, shutdown_timeout: float = 8.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._deadline_s = shutdown_timeout
        self._watchdog: threading.Timer | None = None

    def _arm(self, signame: str) -> None:
        if self._watchdog is None:
            log.info("%s received: stopping (at most %.0fs)", signame, self._deadline_s)
            self._watchdog = threading.Timer(self._deadline_s, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _expire(self) -> None:
        log.error("graceful shutdown exceeded %.0fs; exiting", self._deadline_s)
        logging.shutdown()
        os._exit(1)

    def _on_sigint(self) -> None:
        self._arm("SIGINT")
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self._arm("SIGTERM")
        super()._on_sigterm()
