"""Shared record batches: concurrent requests' records go out as one batch per partition."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_app.collector.batches import SharedBatches
from stream_app.core.routing import partition_for


class Builder:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.capacity = capacity

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class FakeProducer:
    """Records what is submitted; acknowledges (or fails) when told."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.sent: list[tuple[int, Builder, asyncio.Future[Any]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> Builder:
        return Builder(self.capacity)

    async def send_batch(self, builder: Builder, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((partition, builder, fut))
        return fut


def records(user: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(user.encode(), f"{user}-{i}".encode()) for i in range(n)]


async def test_concurrent_requests_share_one_batch_per_partition() -> None:
    producer = FakeProducer()
    batches = SharedBatches(producer, "t", linger_s=0.01)
    users = [f"u{i}" for i in range(12)]
    waits = await asyncio.gather(*(batches.add(records(u, 5)) for u in users))
    await asyncio.sleep(0.05)
    parts = sorted(p for p, _, _ in producer.sent)
    assert parts == sorted({partition_for(u, 4) for u in users})  # one batch each
    for part, builder, _ in producer.sent:
        for key, _ in builder.records:
            assert partition_for(key.decode(), 4) == part
    # a customer's records stay in order, in its partition's batch
    by_value = [v for _, b, _ in producer.sent for _, v in b.records]
    assert [v for v in by_value if v.startswith(b"u3-")] == [f"u3-{i}".encode() for i in range(5)]
    assert not any(f.done() for w in waits for f in w)
    for _, _, fut in producer.sent:
        fut.set_result(None)
    await asyncio.sleep(0)
    assert all(f.done() and f.exception() is None for w in waits for f in w)
    await batches.close(1.0)


async def test_full_batches_go_out_and_errors_reach_the_requests() -> None:
    producer = FakeProducer(capacity=3)
    batches = SharedBatches(producer, "t", linger_s=0)
    wait = await batches.add(records("solo", 7))
    await asyncio.sleep(0.01)
    assert [len(b.records) for _, b, _ in producer.sent] == [3, 3, 1]
    assert len(wait) == 3
    producer.sent[1][2].set_exception(TimeoutError("no ack"))
    for _, _, fut in (producer.sent[0], producer.sent[2]):
        fut.set_result(None)
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.gather(*wait)
    await batches.close(1.0)


async def test_close_submits_what_is_open() -> None:
    producer = FakeProducer()
    batches = SharedBatches(producer, "t", linger_s=10.0)  # would linger for long
    await batches.add(records("late", 2))
    await batches.close(0.5)
    assert [len(b.records) for _, b, _ in producer.sent] == [2]
