"""Batch delivery around Faust's per-message machinery: messages in, and records out.

Faust hands every fetched message to a stream through two or three event-loop turns (a task
pair per message in ``Consumer._drain_messages``, the same again in ``Stream._c_aiter``):
about 80-100 µs a message, measured, however little the agent does. The worker's hot path
works on batches anyway, so for its input topics the consumer (``transport.Consumer``)
appends each fetched message to a :class:`BatchSink` synchronously, and one task hands
whatever has arrived to the batch handler. What a Faust stream guarantees is kept:

- a message is tracked (``Consumer.track_message``) when its batch is taken and acked when
  the batch has settled (below; Faust's sensors see it in and out), so offsets are committed
  only for handled messages, in order, with Faust's own gap tracking and commit task; a
  rebalance waits for the batches in flight;
- flow control: while a rebalance suspends the flow the sink takes nothing, Faust's
  ``flow_control.clear()`` empties it, and messages from an older consumer generation are
  dropped unhandled and unacked (they are fetched again from the committed offset);
- back pressure: the consumer stops delivering while ``max_buffered`` messages wait.

A handler may return an awaitable, the batch's *settlement* (the worker's: its outputs, then
its state writes, confirmed by the broker). The batch is acked when it settles, and the next
batches are handled meanwhile: the waits for the broker overlap with the work instead of
adding to every batch's time. At most ``max_settling`` batches are settling; batches are
acked in order, and a failed settlement stops the worker as a failed handler does.

:class:`OutputBatcher` does the same for output records: one record batch per topic
partition (aiokafka ``create_batch``/``send_batch``) instead of an ``await`` per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import monotonic
from typing import Any

from faust.types import Message

from ..core import routing

log = logging.getLogger(__name__)

Handler = Callable[[list[Message]], Awaitable["Awaitable[Any] | None"]]


class BatchSink:
    """Messages of ``topics``, delivered to ``handler`` in batches of at most ``max_batch``."""

    def __init__(self, app: Any, topics: Sequence[str], handler: Handler, *,
                 max_batch: int, max_buffered: int, within: float = 0.0,
                 max_settling: int = 4) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.handler = handler
        self.max_batch = max_batch
        self.max_buffered = max(max_buffered, max_batch)
        # At most this long a batch waits to fill up once its first message is there (as
        # Faust's take_events(within=...)); under load the buffer is full and nothing waits.
        self.within = within
        self.buffer: list[Message] = []
        self._arrived = asyncio.Event()
        self._filled = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.batches = 0
        self.dropped_stale = 0
        self.max_settling = max(1, max_settling)
        self._settling: deque[asyncio.Future[None]] = deque()  # batches being acked, in order
        # Faust empties the queues it manages when a rebalance suspends the flow.
        app.flow_control.manage_queue(self)
        self._flow_active = app.flow_control.is_active

    # --- the consumer's side ---------------------------------------------------------------
    def put(self, message: Message) -> bool:
        """Append a fetched message (synchronous: no event-loop turn per message); False,
        and nothing kept, while a rebalance suspends the flow."""
        if not self._flow_active():
            return False
        buf = self.buffer
        buf.append(message)
        if not self._arrived.is_set():
            self._arrived.set()
        if len(buf) >= self.max_batch and not self._filled.is_set():
            self._filled.set()
        if len(buf) >= self.max_buffered:
            self._room.clear()
        return True

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def wait_room(self) -> None:
        await self._room.wait()

    def clear(self) -> None:
        """Drop what is buffered when a rebalance suspends the flow: never tracked, so
        fetched again later (the consumer forgets the revoked partitions' positions).

        mode's ``FlowControlEvent.resume()`` clears its queues as well, after the flow is
        active again. Faust resumes the flow after seeking the stream partitions to their
        committed offsets, and the consumer hands on messages during that seek (see
        ``transport.Consumer``): they belong to the current assignment and are not fetched
        again, so a clear on resume keeps them. Dropping them lost them (a restarted worker
        stalled on a partition)."""
        if self._flow_active():
            return  # resume(): the flow is active again, nothing here is stale
        self.buffer.clear()
        self._arrived.clear()
        self._filled.clear()
        self._room.set()

    # --- the handler's side ----------------------------------------------------------------
    def take(self) -> list[Message]:
        """Up to ``max_batch`` buffered messages of the current generation, now tracked."""
        app = self.app
        buf = self.buffer
        n = min(len(buf), self.max_batch)
        batch, self.buffer = buf[:n], buf[n:]
        if not self.buffer:
            self._arrived.clear()
        if len(self.buffer) < self.max_batch:
            self._filled.clear()
        if len(self.buffer) < self.max_buffered:
            self._room.set()
        generation = app.consumer_generation_id
        consumer = app.consumer
        fresh = [m for m in batch if m.generation_id == generation]
        self.dropped_stale += len(batch) - len(fresh)
        for m in fresh:
            if not m.tracked:
                m.tracked = True
                consumer.track_message(m)
        return fresh

    async def run(self) -> None:
        """Hand batches to the handler until the app stops (an app task)."""
        app = self.app
        flow = app.flow_control
        monitor = app.monitor
        settling = self._settling
        try:
            while not app.should_stop:
                if not self._arrived.is_set() and settling:
                    # nothing new yet: ack the batches in flight as they settle, until
                    # something arrives
                    arrival = asyncio.ensure_future(self._arrived.wait())
                    try:
                        await asyncio.wait((arrival, settling[0]),
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        arrival.cancel()
                    if settling[0].done() and not await self._settle_oldest():
                        return
                    continue
                await self._arrived.wait()
                if not flow.is_active():
                    if not await self.settled():
                        return
                    await flow.acquire()  # rebalancing: the buffer is cleared meanwhile
                    continue
                if self.within > 0 and not self._filled.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._filled.wait(), self.within)
                    if not flow.is_active():
                        continue
                batch = self.take()
                if not batch:
                    continue
                # Faust's livelock check reads when a stream last took an event from a
                # partition (Stream._c_aiter sets it); without it, it logs "Stream has not
                # started processing" for every busy partition after stream_processing_timeout.
                inbound = monotonic()
                for tp in {m.tp for m in batch}:
                    monitor.stream_inbound_time[tp] = inbound
                try:
                    settlement = await self.handler(batch)
                except Exception as exc:  # the step never raises on input: this is a bug
                    log.exception("batch handler failed; stopping the worker")
                    await app.crash(exc)
                    return
                previous = settling[-1] if settling else None
                settling.append(asyncio.ensure_future(self._settle(batch, settlement, previous)))
                while settling and (settling[0].done() or len(settling) > self.max_settling):
                    if not await self._settle_oldest():
                        return
                await asyncio.sleep(0)  # let the consumer deliver what it fetched meanwhile
        finally:
            await self.settled()

    async def _settle(self, batch: list[Message], settlement: Awaitable[Any] | None,
                      previous: asyncio.Future[None] | None) -> None:
        if settlement is not None:
            await settlement
        if previous is not None:
            await previous  # acks in batch order (a failed one fails this one too)
        ack, message_out = self.app.consumer.ack, self.app.sensors.on_message_out
        for m in batch:
            if ack(m):
                message_out(m.tp, m.offset, m)
        self.batches += 1

    async def _settle_oldest(self) -> bool:
        """Wait until the oldest batch in flight is acked; False if its settlement failed
        (then the app is crashed; its messages and those of the later batches stay unacked,
        so they are consumed again)."""
        oldest = self._settling[0]
        try:
            await asyncio.shield(oldest)
        except asyncio.CancelledError:
            raise  # still in flight: waited for again by whoever runs next
        except Exception as exc:
            for later in self._settling:  # they fail with it: seen here, not logged again
                later.add_done_callback(_retrieve)
            self._settling.clear()
            log.exception("a batch's outputs or state writes failed; stopping the worker")
            await self.app.crash(exc)
            return False
        self._settling.popleft()
        return True

    async def settled(self) -> bool:
        """Wait until every batch in flight is acked; False if a settlement failed."""
        while self._settling:
            if not await self._settle_oldest():
                return False
        return True


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class OutputBatcher:
    """Output records grouped into one record batch per topic partition, in order.

    ``add`` takes a record with its partition, or ``None`` for the default partitioner's
    choice: by key (murmur2 over the topic's partitions, as Kafka clients do), or round-robin
    for a record without a key. :meth:`send` hands the batches to the producer. Records of
    one partition keep the order they were added in.
    """

    _round_robin = 0  # keyless records spread over partitions across batches, not per batch

    def __init__(self) -> None:
        self.records: dict[tuple[str, int | None], list[tuple[
            bytes | None, bytes | None, list[tuple[str, bytes]]]]] = {}
        self.count = 0

    def add(self, topic: str, key: bytes | None, value: bytes | None,
            partition: int | None = None, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        self.records.setdefault((topic, partition), []).append((key, value, list(headers)))
        self.count += 1

    def extend(self, records: Iterable[Sequence[Any]]) -> None:
        """``add`` each ``(topic, key, value, partition, headers)`` (pipeline outputs)."""
        for record in records:
            self.add(*record)

    def _by_partition(self, counts: dict[str, int]) -> dict[tuple[str, int], list[Any]]:
        out: dict[tuple[str, int], list[Any]] = {}
        for (topic, partition), records in self.records.items():
            n = counts[topic]
            if not n:
                raise RuntimeError(f"no partitions known for topic {topic}")
            if partition is not None:
                if partition >= n:  # checked at start-up (worker.check_topics); never guessed
                    raise RuntimeError(f"topic {topic} has {n} partitions, not {partition + 1}")
                out.setdefault((topic, partition), []).extend(records)
                continue
            for rec in records:
                if rec[0] is not None:
                    part = routing.partition_for(rec[0].decode(), n)
                else:
                    part = OutputBatcher._round_robin % n
                    OutputBatcher._round_robin += 1
                out.setdefault((topic, part), []).append(rec)
        return out

    async def send(self, producer: Any, timestamp: float | None = None
                   ) -> list[asyncio.Future[Any]]:
        """Queue every batch on ``producer`` (an ``AIOKafkaProducer``); returns their
        delivery futures."""
        if not self.count:
            return []
        # the topics' actual partition counts (public API: waits for metadata only when the
        # producer has none for the topic yet)
        counts = {topic: len(await producer.partitions_for(topic) or ())
                  for topic in {t for t, _ in self.records}}
        sent = []
        for (topic, partition), records in self._by_partition(counts).items():
            batch = producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=timestamp,
                                headers=headers) is None:
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=timestamp,
                                    headers=headers) is None:
                        raise ValueError(f"record too large for a batch on {topic}")
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        self.records.clear()
        self.count = 0
        return sent
