"""Write-behind for the worker's Faust tables: a batch's state is written once its outputs
are on the broker, and is readable by the next batches meanwhile.

A batch's segment changes, routed operations and dead letters must be on the broker before
its state is in the table's changelog (what survives a crash): written the other way round,
a crash between the two leaves the state stored and its outputs lost, since the replayed
events are duplicates and send nothing (see :class:`..processing.HeldWrites`). Waiting for
the broker after every batch left the worker idle for a round trip per batch (a fifth of its
time against the embedded broker, ``segmenter bench``). So the writes of a batch are
*staged*: later batches read them here, and they go to the table (its store, then its
changelog) from a background task as soon as the batch's outputs are acknowledged, in batch
order. A batch is acked (its offsets committable) once its changelog records are
acknowledged too.

The table's store is written directly and its changelog records are sent as one record batch
per partition, instead of Faust's ``Table.__setitem__`` (a changelog send, a future and a
serializer lookup for every key): what ends up in the store and the changelog is the same,
and so is the persisted changelog offset (``Store.set_persisted_offset``) that a rocksdb
store recovers from. Recovery stays Faust's own. Every state a batch wrote is in its
changelog batch, and Faust's flush before committing offsets is not relied on: it gives up
after 0.1 s without a send (``ProducerBuffer.flush``), which lost state in the kill -9 test
(tests/integration/test_reliability.py) when writes went through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiokafka.structs import TopicPartition

from ..core.processing import DELETED  # a staged delete, as HeldWrites holds it
from .transport import partition_context

_MISSING = object()


class WriteBehind(Mapping[str, Any]):
    """A Faust table seen with the staged writes of batches not yet written to it."""

    def __init__(self, table: Any, encode: Callable[[Any], bytes], source_topic: str) -> None:
        self.table = table
        self.encode = encode  # value -> changelog bytes (the table's value serializer)
        self.source_topic = source_topic  # a topic the table is co-partitioned with
        self.staged: dict[str, Any] = {}  # key -> newest staged value (or DELETED)

    # --- reads: the staged value, else the store --------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        value = self.staged.get(key, _MISSING)
        if value is _MISSING:
            return self.table.data.get(key, default)
        return default if value is DELETED else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        staged = self.staged
        yield from (k for k in self.table.data if k not in staged)
        yield from (k for k, v in staged.items() if v is not DELETED)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def entries(self) -> Iterator[tuple[str, Any]]:
        """Every (key, value), staged values first-hand: one pass over the store (not a
        lookup per key, as ``items()`` makes: a rocksdb store looks a key up in each
        partition's database when no event names the partition)."""
        staged = self.staged
        yield from ((k, v) for k, v in self.table.data.items() if k not in staged)
        yield from ((k, v) for k, v in staged.items() if v is not DELETED)

    # --- writes ----------------------------------------------------------------------------
    def stage(self, writes: Mapping[str, Any]) -> None:
        """Make a batch's writes visible to later reads (DELETED: a delete)."""
        self.staged.update(writes)

    async def write(self, partition: int, writes: Mapping[str, Any], producer: Any
                    ) -> asyncio.Future[Any] | None:
        """Write staged ``writes`` of ``partition`` to the store, and send them to the
        changelog as one record batch (``producer``: an ``AIOKafkaProducer``). Returns the
        batch's delivery future (None: nothing to write); when it is done, the store's
        persisted changelog offset is moved past it. Call in batch order."""
        if not writes:
            return None
        data, encode = self.table.data, self.encode
        topic = self.table.changelog_topic.get_topic_name()
        records = []
        with partition_context(self.source_topic, partition):
            for key, value in writes.items():
                if value is DELETED:
                    if key in data:
                        del data[key]
                    records.append((key.encode(), None))
                else:
                    data[key] = value
                    records.append((key.encode(), encode(value)))
        # visible in the store now: unstage what no later batch has staged again since
        staged = self.staged
        for key, value in writes.items():
            if staged.get(key, _MISSING) is value:
                del staged[key]
        futures = []
        batch = producer.create_batch()
        for key_bytes, value_bytes in records:
            if batch.append(key=key_bytes, value=value_bytes, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key_bytes, value=value_bytes, timestamp=None) is None:
                    raise ValueError(f"a state too large for a record batch on {topic}")
        count = batch.record_count()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
        tp = TopicPartition(topic, partition)
        last = futures[-1]
        done = asyncio.gather(*futures) if len(futures) > 1 else last

        def persisted(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                # as Faust's Table._on_changelog_sent does for each record (rocksdb recovers
                # from here; the memory store ignores it)
                data.set_persisted_offset(tp, last.result().offset + count - 1)
        done.add_done_callback(persisted)
        return done
