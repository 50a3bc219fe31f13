"""WriteBehind: staged writes are read first; writing moves them to the store and the
changelog (one record batch), and the persisted offset follows the acknowledged batch.

The table, its store and the producer are stand-ins (what leaves the process); the worker's
use of it against the real broker is covered by the integration tests (kill -9, rebalance,
erasure).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import current_event

from stream_app.core.processing import DELETED, HeldWrites
from stream_app.host.tables import WriteBehind


class Store(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[Any, int] = {}
        self.partitions_written: list[int] = []

    def __setitem__(self, key: str, value: Any) -> None:
        # a rocksdb store picks the partition's database from the current event
        event = current_event()
        self.partitions_written.append(None if event is None else event.message.partition)
        super().__setitem__(key, value)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[(tp.topic, tp.partition)] = offset


class Batch:
    def __init__(self, limit: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.limit = limit

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any) -> Any:
        if len(self.records) >= self.limit:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]], asyncio.Future[Any]]] = []
        self.next_offset = 40

    def create_batch(self) -> Batch:
        return Batch(self.limit)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch.records, fut))
        return fut

    def ack_all(self) -> None:
        for _, _, records, fut in self.sent:
            if not fut.done():
                fut.set_result(SimpleNamespace(offset=self.next_offset))
                self.next_offset += len(records)


def table() -> Any:
    return SimpleNamespace(data=Store(), changelog_topic=SimpleNamespace(
        get_topic_name=lambda: "app-customers-changelog"))


def behind(limit_store: Any = None) -> WriteBehind:
    return WriteBehind(limit_store or table(), lambda v: f"<{v}>".encode(), "routed")


async def test_staged_writes_are_read_before_the_store() -> None:
    wb = behind()
    wb.table.data.update(a="old-a", b="old-b")
    wb.stage({"a": "new-a", "c": "new-c", "b": DELETED})
    assert (wb.get("a"), wb.get("b"), wb.get("c"), wb.get("z", 0)) == ("new-a", None, "new-c", 0)
    assert wb["a"] == "new-a" and "b" not in wb and sorted(wb) == ["a", "c"]
    with pytest.raises(KeyError):
        wb["b"]
    held = HeldWrites(wb)  # the step's view: its own writes, then the staged ones
    held["c"] = "newest-c"
    assert held.get("c") == "newest-c" and held.get("a") == "new-a" and held.get("b") is None


async def test_write_moves_a_batch_to_the_store_and_one_changelog_batch() -> None:
    wb = behind()
    wb.table.data["gone"] = "x"
    wb.table.data.partitions_written.clear()
    writes = {"a": "A", "gone": DELETED, "b": "B"}
    wb.stage(writes)
    producer = Producer()
    done = await wb.write(3, writes, producer)
    assert dict(wb.table.data) == {"a": "A", "b": "B"} and wb.staged == {}
    assert wb.table.data.partitions_written == [3, 3]  # under the partition's context
    [(topic, partition, records, _)] = producer.sent
    assert (topic, partition) == ("app-customers-changelog", 3)
    assert records == [(b"a", b"<A>"), (b"gone", None), (b"b", b"<B>")]  # tombstone for a delete
    assert done is not None and not done.done() and wb.table.data.persisted == {}
    producer.ack_all()
    await done
    await asyncio.sleep(0)
    # the last record's offset, as Faust persists it record by record
    assert wb.table.data.persisted == {("app-customers-changelog", 3): 42}


async def test_a_key_staged_again_by_a_later_batch_stays_staged() -> None:
    wb = behind()
    first, second = {"k": "v1", "j": "j1"}, {"k": "v2"}
    wb.stage(first)
    wb.stage(second)
    await wb.write(0, first, Producer())
    assert wb.table.data["k"] == "v1" and wb.get("k") == "v2" and wb.staged == {"k": "v2"}
    await wb.write(0, second, Producer())
    assert wb.get("k") == "v2" and wb.staged == {}


async def test_a_full_record_batch_continues_in_another_and_nothing_to_write_sends_nothing() -> None:
    wb = behind()
    writes = {f"k{i}": i for i in range(5)}
    producer = Producer(limit=2)
    done = await wb.write(1, writes, producer)
    assert [len(r) for _, _, r, _ in producer.sent] == [2, 2, 1]
    producer.ack_all()
    await done  # type: ignore[misc]
    await asyncio.sleep(0)
    assert wb.table.data.persisted == {("app-customers-changelog", 1): 40 + 4}
    assert await wb.write(1, {}, producer) is None and len(producer.sent) == 3


async def test_a_failed_changelog_write_moves_no_persisted_offset() -> None:
    wb = behind()
    producer = Producer()
    done = await wb.write(0, {"a": 1}, producer)
    producer.sent[0][3].set_exception(OSError("broker gone"))
    with pytest.raises(OSError):
        await done  # type: ignore[misc]
    await asyncio.sleep(0)
    assert wb.table.data.persisted == {}


async def test_entries_read_the_staged_writes_in_one_pass_over_the_store() -> None:
    wb = behind()
    wb.table.data.update(a="old-a", b="old-b", c="old-c")
    wb.stage({"a": "new-a", "b": DELETED, "d": "new-d"})
    assert sorted(wb.entries()) == [("a", "new-a"), ("c", "old-c"), ("d", "new-d")]
    assert sorted(wb.entries()) == sorted(wb.items())


def test_a_recount_while_a_batch_is_in_flight_keeps_its_changes() -> None:
    # A rebalance's recount (Runtime.refresh_gauges) can run between a batch's delivery
    # (its changes counted, its states staged) and its write to the table: the recount
    # must see the staged states. From the table alone, a re-scoring pass in flight at
    # the first recount left its customers out of /segments until the next rebalance.
    from stream_app.core.state.customer import CustomerState
    from stream_app.core.state.sizes import SegmentSizes
    from stream_app.host.app import Runtime

    wb = behind()
    before = CustomerState(customer_id="u1")
    wb.table.data["u1"] = before
    after = CustomerState(customer_id="u1", segments={"behavior": "b1"})
    wb.stage({"u1": after, "u2": CustomerState(customer_id="u2",
                                               segments={"behavior": "b2"})})
    host = SimpleNamespace(settings=SimpleNamespace(partitions=1), sizes=SegmentSizes(),
                           customers=SimpleNamespace(items=wb.table.data.items),
                           customer_states=wb)
    Runtime._recount(host, [0])  # type: ignore[arg-type]
    assert host.sizes.totals([0]) == {"behavior": {"b1": 1, "b2": 1}}
