"""Batch delivery (stream_app.host.batching): what replaces Faust's per-message stream.

The sink must keep what a Faust stream guarantees: messages tracked when taken and acked only
after the handler returned, nothing taken while a rebalance suspends the flow, buffered
messages dropped (never acked) when Faust clears its queues, stale generations dropped, and
back pressure on the consumer. End to end it is exercised by every integration test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.types import Message
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent

from stream_app.host.batching import BatchSink, OutputBatcher


class FakeConsumer:
    def __init__(self) -> None:
        self.tracked: list[int] = []
        self.acked: list[int] = []

    def track_message(self, m: Message) -> None:
        self.tracked.append(m.offset)

    def ack(self, m: Message) -> bool:
        self.acked.append(m.offset)
        return True


class FakeMonitor:
    def __init__(self) -> None:
        self.stream_inbound_time: dict[Any, float] = {}


class FakeSensors:
    def __init__(self) -> None:
        self.out: list[int] = []

    def on_message_out(self, tp: Any, offset: int, message: Message) -> None:
        self.out.append(offset)


class FakeApp:
    def __init__(self) -> None:
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.consumer = FakeConsumer()
        self.monitor = FakeMonitor()
        self.sensors = FakeSensors()
        self.consumer_generation_id = 1
        self.should_stop = False
        self.crashed: BaseException | None = None

    async def crash(self, exc: BaseException) -> None:
        self.crashed = exc


def msg(offset: int, partition: int = 0, generation: int = 1) -> Message:
    # what Faust's aiokafka consumer makes of a record (tracking enabled)
    return ConsumerMessage("in", partition, offset, 0.0, 0, None, b"k", b"v", None,
                           generation_id=generation)


def sink_for(app: FakeApp, handler: Any, max_batch: int = 3, max_buffered: int = 5,
             max_settling: int = 4) -> BatchSink:
    return BatchSink(app, ["in"], handler, max_batch=max_batch, max_buffered=max_buffered,
                     max_settling=max_settling)


def test_take_tracks_at_most_a_batch_in_order() -> None:
    app = FakeApp()
    sink = sink_for(app, None)
    for i in range(5):
        sink.put(msg(i))
    assert [m.offset for m in sink.take()] == [0, 1, 2]
    assert app.consumer.tracked == [0, 1, 2] and app.consumer.acked == []
    assert [m.offset for m in sink.take()] == [3, 4]
    assert sink.take() == []


def test_stale_generation_is_dropped_unacked() -> None:
    app = FakeApp()
    sink = sink_for(app, None)
    sink.put(msg(0, generation=1))
    app.consumer_generation_id = 2  # a rebalance happened since it was fetched
    sink.put(msg(1, generation=2))
    assert [m.offset for m in sink.take()] == [1]
    assert sink.dropped_stale == 1 and app.consumer.tracked == [1]


def test_back_pressure_and_clear_by_flow_control() -> None:
    app = FakeApp()
    sink = sink_for(app, None, max_batch=3, max_buffered=4)
    for i in range(4):
        sink.put(msg(i))
    assert sink.full
    sink.take()
    assert not sink.full
    sink.put(msg(4))
    app.flow_control.suspend()
    app.flow_control.clear()  # what Faust does on partitions revoked
    assert sink.buffer == [] and not sink.full
    assert app.consumer.tracked == [0, 1, 2] and app.consumer.acked == []


def recording_sink(app: FakeApp) -> tuple[BatchSink, list[int]]:
    """A sink whose handler records the offsets it was handed."""
    handled: list[int] = []

    async def handler(batch: list[Message]) -> None:
        handled.extend(m.offset for m in batch)

    return sink_for(app, handler), handled


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def stop(app: FakeApp, sink: BatchSink, task: asyncio.Task[None]) -> None:
    app.should_stop = True
    sink.put(msg(99, generation=0))  # wakes the loop; stale, so never handled
    await asyncio.wait_for(task, 1)


async def test_run_acks_after_the_handler_returned() -> None:
    app = FakeApp()
    seen: list[list[int]] = []

    async def handler(batch: list[Message]) -> None:
        # earlier batches acked, this one not yet
        assert app.consumer.acked == [o for b in seen for o in b]
        seen.append([m.offset for m in batch])
        await asyncio.sleep(0)

    sink = sink_for(app, handler, max_batch=2)
    task = asyncio.create_task(sink.run())
    for i in range(5):
        sink.put(msg(i))
    for _ in range(20):
        await asyncio.sleep(0)
    await stop(app, sink, task)
    assert seen == [[0, 1], [2, 3], [4]]
    assert app.consumer.acked == app.sensors.out == [0, 1, 2, 3, 4]
    # Faust's livelock check sees the partition being processed
    assert list(app.monitor.stream_inbound_time) == [msg(0).tp]


async def test_nothing_is_taken_while_the_flow_is_suspended() -> None:
    app = FakeApp()
    sink, handled = recording_sink(app)
    sink.put(msg(0))
    app.flow_control.suspend()  # a rebalance: Faust suspends, then clears
    app.flow_control.clear()
    task = asyncio.create_task(sink.run())
    assert not sink.put(msg(1))  # refused while suspended: fetched again later
    await settle()
    assert handled == [] and sink.buffer == []
    app.flow_control.resume()
    sink.put(msg(2))
    await settle()
    assert handled == [2]
    await stop(app, sink, task)


async def test_resuming_the_flow_keeps_what_the_current_assignment_delivered() -> None:
    # Faust resumes the flow (mode's resume() clears managed queues) after seeking the
    # stream partitions to their committed offsets; what the consumer handed on during the
    # seek is not fetched again, so it must survive the resume.
    app = FakeApp()
    sink, handled = recording_sink(app)
    sink.put(msg(0))
    sink.put(msg(1))
    app.flow_control.resume()
    assert [m.offset for m in sink.buffer] == [0, 1]
    task = asyncio.create_task(sink.run())
    await settle()
    assert handled == [0, 1]
    await stop(app, sink, task)


async def test_a_failing_handler_crashes_the_app_without_acking() -> None:
    app = FakeApp()

    async def handler(batch: list[Message]) -> None:
        raise RuntimeError("bug")

    sink = sink_for(app, handler)
    sink.put(msg(0))
    await asyncio.wait_for(sink.run(), 1)
    assert isinstance(app.crashed, RuntimeError) and app.consumer.acked == []


def settling_handler() -> tuple[Any, list[list[int]], list[asyncio.Future[None]]]:
    """A handler that records each batch's offsets and returns a settlement the test
    resolves: (handler, offsets handled per batch, settlements in batch order)."""
    handled: list[list[int]] = []
    settlements: list[asyncio.Future[None]] = []

    async def handler(batch: list[Message]) -> asyncio.Future[None]:
        handled.append([m.offset for m in batch])
        settlements.append(asyncio.get_running_loop().create_future())
        return settlements[-1]
    return handler, handled, settlements


async def test_a_batch_is_acked_when_it_settles_and_the_next_one_is_handled_meanwhile() -> None:
    # The worker's handler returns when a batch's outputs are on the broker; its state writes
    # settle later. The next batch must not wait for that, and nothing is acked before it.
    app = FakeApp()
    handler, handled, settlements = settling_handler()

    sink = sink_for(app, handler, max_batch=2, max_settling=1)
    task = asyncio.create_task(sink.run())
    for i in range(4):
        sink.put(msg(i))
    await settle()
    # the second batch was handled while the first was settling: nothing acked yet
    assert handled == [[0, 1], [2, 3]] and app.consumer.acked == []
    sink.put(msg(4))
    await settle()
    assert handled == [[0, 1], [2, 3]]  # at most one batch settles while another is handled
    settlements[1].set_result(None)  # out of order: the first is still not settled
    await settle()
    assert app.consumer.acked == []
    settlements[0].set_result(None)
    await settle()
    assert app.consumer.acked == [0, 1, 2, 3] and handled == [[0, 1], [2, 3], [4]]
    settlements[2].set_result(None)  # nothing else arrives: acked without waiting for more
    await settle()
    assert app.consumer.acked == app.sensors.out == [0, 1, 2, 3, 4]
    await stop(app, sink, task)


async def test_up_to_max_settling_batches_settle_while_more_are_handled() -> None:
    app = FakeApp()
    handler, handled, settlements = settling_handler()

    sink = sink_for(app, handler, max_batch=1, max_buffered=10, max_settling=3)
    task = asyncio.create_task(sink.run())
    for i in range(6):
        sink.put(msg(i))
    await settle()
    assert handled == [[0], [1], [2], [3]] and app.consumer.acked == []  # 3 settling + 1
    for i in (3, 2, 1):  # settled out of order: acked in order, once the first is
        settlements[i].set_result(None)
    await settle()
    assert app.consumer.acked == [] and len(handled) == 4
    settlements[0].set_result(None)
    await settle()
    assert app.consumer.acked == [0, 1, 2, 3] and handled == [[i] for i in range(6)]
    for fut in settlements[4:]:
        fut.set_result(None)
    sink.put(msg(6))  # arrivals are handled while earlier batches settle
    await settle()
    assert app.consumer.acked == [0, 1, 2, 3, 4, 5] and handled[-1] == [6]
    settlements[6].set_result(None)
    await settle()
    assert app.consumer.acked == list(range(7))
    await stop(app, sink, task)


async def test_a_failed_settlement_crashes_the_app_and_acks_nothing_of_it_or_later() -> None:
    app = FakeApp()
    handler, _, settlements = settling_handler()

    sink = sink_for(app, handler, max_batch=1, max_buffered=10, max_settling=3)
    task = asyncio.create_task(sink.run())
    for i in range(3):
        sink.put(msg(i))
    await settle()
    settlements[2].set_result(None)
    settlements[0].set_exception(OSError("changelog write refused"))
    await asyncio.wait_for(task, 1)
    assert isinstance(app.crashed, OSError) and app.consumer.acked == []


async def test_a_failed_settlement_crashes_the_app_and_acks_nothing_of_it() -> None:
    app = FakeApp()

    async def handler(batch: list[Message]) -> asyncio.Future[None]:
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError("changelog write refused"))
        return failed

    sink = sink_for(app, handler)
    sink.put(msg(0))
    await asyncio.wait_for(sink.run(), 1)
    assert isinstance(app.crashed, OSError) and app.consumer.acked == []


async def test_a_rebalance_waits_for_the_settling_batch() -> None:
    app = FakeApp()
    settlement: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(batch: list[Message]) -> asyncio.Future[None]:
        return settlement

    sink = sink_for(app, handler)
    task = asyncio.create_task(sink.run())
    sink.put(msg(0))
    await settle()
    sink.put(msg(1))
    app.flow_control.suspend()  # Faust waits for unacked messages before committing
    await settle()
    assert app.consumer.acked == []
    settlement.set_result(None)
    await settle()
    assert app.consumer.acked == [0]
    app.flow_control.resume()
    app.should_stop = True
    sink.put(msg(9, generation=0))
    await asyncio.wait_for(task, 1)


# --- output batches -------------------------------------------------------------------------

class FakeBatch:
    def __init__(self, limit: int) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.limit = limit

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> Any:
        if len(self.records) >= self.limit:
            return None
        self.records.append((key, value, headers))
        return object()


class FakeProducer:
    """The public members of ``AIOKafkaProducer`` the batcher uses, over 8 partitions."""

    def __init__(self, limit: int = 1000) -> None:
        self.sent: list[tuple[str, int, list[tuple[Any, ...]]]] = []
        self.limit = limit

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(8))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.limit)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int
                         ) -> asyncio.Future[None]:
        self.sent.append((topic, partition, batch.records))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_outputs_are_grouped_per_partition_in_order() -> None:
    out = OutputBatcher()
    out.add("routed", b"a", b"1", 3)
    out.add("changes", b"u-1", b"c1")
    out.add("routed", b"b", b"2", 3)
    out.add("changes", b"u-1", b"c2")
    out.add("dlq", None, b"x", 0, headers=[("h", b"v")])
    producer = FakeProducer()
    await out.send(producer)
    by_tp = {(t, p): [r[1] for r in recs] for t, p, recs in producer.sent}
    assert by_tp[("routed", 3)] == [b"1", b"2"]
    part = DefaultPartitioner()(b"u-1", list(range(8)), list(range(8)))
    assert by_tp[("changes", part)] == [b"c1", b"c2"]  # Kafka's default partitioner
    assert ("dlq", 0) in by_tp and out.count == 0


async def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    out = OutputBatcher()
    for i in range(5):
        out.add("routed", b"k", str(i).encode(), 1)
    producer = FakeProducer(limit=2)
    await out.send(producer)
    assert [[r[1] for r in recs] for _, _, recs in producer.sent] == [
        [b"0", b"1"], [b"2", b"3"], [b"4"]]


async def test_records_without_key_or_partition_go_round_robin() -> None:
    out = OutputBatcher()
    for i in range(10):
        out.add("dlq", None, str(i).encode())
    producer = FakeProducer()
    sent = await out.send(producer)
    by_tp = {(t, p): [r[1] for r in recs] for t, p, recs in producer.sent}
    assert by_tp == {("dlq", p): [str(i).encode() for i in range(p, 10, 8)] for p in range(8)}
    assert len(sent) == len(producer.sent)  # a delivery future per record batch


async def test_a_batch_waits_at_most_within_to_fill() -> None:
    app = FakeApp()
    handled: list[list[int]] = []

    async def handler(batch: list[Message]) -> None:
        handled.append([m.offset for m in batch])

    sink = BatchSink(app, ["in"], handler, max_batch=3, max_buffered=6, within=0.05)
    task = asyncio.create_task(sink.run())
    sink.put(msg(0))
    await asyncio.sleep(0.01)
    sink.put(msg(1))
    await asyncio.sleep(0.01)
    assert handled == []  # still filling
    await asyncio.sleep(0.06)
    assert handled == [[0, 1]]  # within expired: what is there
    for i in range(2, 5):
        sink.put(msg(i))
    await asyncio.sleep(0.005)
    assert handled == [[0, 1], [2, 3, 4]]  # full: no waiting
    app.should_stop = True
    sink.put(msg(9, generation=0))
    await asyncio.wait_for(task, 1)
