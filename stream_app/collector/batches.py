"""Records of concurrent requests, gathered into one record batch per partition.

aiokafka's ``send()`` costs ~20 µs of CPU a record here (a pure-Python murmur2, a future and
an accumulator call each: measured 22 µs, 19 µs with the partition given); building record
batches and submitting them with ``send_batch()`` costs ~10 µs. Built per request, though, a
batch holds ~100 / partitions records, and aiokafka queues one batch per partition at a time
(``send_batch`` waits until the previous one is drained). So the batches are shared: a
request appends its records to the open batch of each partition and waits for those
batches; one sender task submits all open batches together, ``linger`` after the first
record, while the next requests fill new ones.

Partitions are chosen as Kafka's default partitioner does for a keyed record (murmur2 of the
key), so a customer's events land where a producer keyed by customer id puts them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from ..core.routing import partition_for

Batch = tuple[int, Any, "asyncio.Future[None]"]  # partition, builder, acknowledged


class SharedBatches:
    def __init__(self, producer: Any, topic: str, linger_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.linger_s = linger_s
        self._open: dict[int, Batch] = {}
        self._full: list[Batch] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._sender(), name="collector-batches")

    async def add(self, records: Sequence[tuple[bytes, bytes]]) -> list[asyncio.Future[None]]:
        """Append ``(key, value)`` records; the futures of the batches that hold them (each
        resolves when its batch is acknowledged, or fails with the producer's error)."""
        if self._task.done():
            raise RuntimeError("the batch sender has stopped")
        partitions = len(await self.producer.partitions_for(self.topic))
        waits: dict[int, asyncio.Future[None]] = {}
        for key, value in records:
            part = partition_for(key.decode(), partitions)
            batch = self._open.get(part) or self._new(part)
            if batch[1].append(key=key, value=value, timestamp=None) is None:  # full
                self._full.append(batch)
                batch = self._new(part)
                if batch[1].append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
            waits[id(batch[2])] = batch[2]
        self._wake.set()
        return list(waits.values())

    def _new(self, part: int) -> Batch:
        batch = (part, self.producer.create_batch(), asyncio.get_running_loop().create_future())
        self._open[part] = batch
        return batch

    async def _sender(self) -> None:
        while not (self._closing.is_set() and not self._open and not self._full):
            await self._wake.wait()
            if self.linger_s and not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.linger_s)
            self._wake.clear()
            batches = self._full + list(self._open.values())
            self._full, self._open = [], {}
            for part, builder, done in batches:
                try:
                    sent = await self.producer.send_batch(builder, self.topic, partition=part)
                except Exception as exc:  # no metadata or no room in time, producer closed
                    _settle(done, exc)
                    continue
                sent.add_done_callback(lambda f, done=done: _settle(
                    done, asyncio.CancelledError() if f.cancelled() else f.exception()))

    async def close(self, timeout_s: float) -> None:
        """Submit what is open (within ``timeout_s``), then stop the sender."""
        self._closing.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)
        done.add_done_callback(lambda f: f.exception())  # read even if no request waits
