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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from aiokafka.structs import TopicPartition
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


# Faust lets the broker hold a fetch up to 1.5 s (``fetch_max_wait_ms=1500``). Against the
# embedded broker that put the median input -> segment change latency at ~1 s (p99 ~2.7 s)
# at 1.4k ev/s; with 50 ms it is ~60 ms (``segmenter bench --phases latency``). A broker
# that answers as soon as data is there (Kafka, with fetch.min.bytes=1) is unaffected, except
# for a few more empty fetches a second when idle.
FETCH_MAX_WAIT_MS = 50


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer

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
    # Per partition moved back by the last seek to committed offsets: the last offset
    # delivered before it. Replaced by an instance dict at each seek; empty until then.
    _stale_above: dict[TP, int] = {}  # noqa: RUF012

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets (end of a rebalance's recovery), and remember, for
        each partition moved back, the last offset delivered before: messages beyond it that
        still arrive come from a fetch made at the old position (see _drain_messages)."""
        committed = await super().seek_to_committed()
        read = self._read_offset
        stale = self._stale_above = {}
        for tp, offset in committed.items():
            last = read.get(tp)
            if offset is not None and last is not None and offset <= last:
                stale[tp] = last
        return committed

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        """Faust's drain loop, with the messages of a :class:`.batching.BatchSink` handed
        over synchronously.

        Faust awaits ``wait_first(callback(message), suspend_flow.wait())`` for every
        message: two tasks and several event-loop turns each. For the sink's topics this
        appends the message to the sink instead (read offsets and gaps recorded as Faust
        does); other topics (the clustering's) take Faust's own path. While the flow is
        suspended (rebalance) nothing is delivered to the sink: Faust's ``getmany`` stops
        yielding and the sink is cleared.
        """
        sink: BatchSink | None = getattr(self.app, "batch_sink", None)
        if sink is None:
            await super()._drain_messages(fetcher)
            return
        sink_topics = sink.topics
        put = sink.put
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        suspend_flow = self.suspend_flow
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        stale_above = self._stale_above.get(tp)
                        if stale_above is not None:
                            if offset > stale_above:
                                # Fetched at the old position, before the partition was
                                # moved back to its committed offset: fetched again from
                                # there. Delivered now, it would be handled ahead of the
                                # messages before it, which Faust would count as a gap,
                                # commit over, and drop when they came again (found by
                                # the kill -9 test).
                                continue
                            del self._stale_above[tp]  # the messages from the new position
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue  # Faust drops these too ("DROPPED MESSAGE")
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(
                                message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if tp.topic in sink_topics:
                            if suspend_flow.is_set():
                                break  # rebalancing: Faust's getmany would stop too
                            put(message)
                        else:
                            await self.wait_first(callback(message), suspend_flow.wait())
                        read_offset[tp] = offset
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if sink.full:
                        await self.wait_first(sink.wait_room(), suspend_flow.wait())
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


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
