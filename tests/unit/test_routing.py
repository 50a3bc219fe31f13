"""Partition ownership and routed-topic operations (stream_app.core.routing)."""

from __future__ import annotations

import random
import string

import orjson
import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from stream_app.core import routing
from stream_app.core.events import interaction as ix
from stream_app.core.events.interaction import Interaction
from stream_app.core.routing import partition_for


class _Cluster:
    """The slice of kafka-python's ClusterMetadata its DefaultPartitioner reads."""

    def __init__(self, partitions: int) -> None:
        self._partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


def _keys() -> list[str]:
    rng = random.Random(20240601)
    alphabet = string.ascii_letters + string.digits + "-_:@.éüß∂漢字😀\x00 "
    keys = ["", "a", "u1", "user-1", "anon-0f3a", "ü", "😀", "x" * 300]
    keys += ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(1500)]
    return keys


KEYS = _keys()
PARTITION_COUNTS = [*range(1, 33), 48, 64, 100, 128, 1000, 1024]


def test_partition_for_matches_kafka_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for n in PARTITION_COUNTS:
        cluster = _Cluster(n)
        for key in KEYS:
            raw = key.encode()
            expected = partitioner.partition("t", key, raw, None, None, cluster)
            assert partition_for(key, n) == expected, (key, n)


@pytest.mark.parametrize(("key", "java_hash"), [
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_the_java_client(key: bytes, java_hash: int) -> None:
    assert kafka_python_murmur2(key) == java_hash & 0xFFFFFFFF
    n = 12
    assert partition_for(key.decode(), n) == (java_hash & 0x7FFFFFFF) % n


@pytest.mark.parametrize(("key", "partition"), [
    # Java producer's partition for these keys on a 1000-partition topic (kafka-python tests)
    ("", 681), ("a", 524), ("ab", 434), ("abc", 107), ("123456789", 566), ("\x00 ", 742),
])
def test_known_java_partitions(key: str, partition: int) -> None:
    assert partition_for(key, 1000) == partition


def test_keys_spread_over_partitions() -> None:
    counts = [0] * 8
    for key in KEYS:
        counts[partition_for(key, 8)] += 1
    assert min(counts) > len(KEYS) / 8 * 0.7


# --- routed operations ----------------------------------------------------------------------

def test_event_op_round_trip() -> None:
    rec = Interaction(kind=ix.IDENTIFY, customer_id="u1", message_id="m1", ts=1.7e9 + 0.125,
                      user_id="u1", anonymous_id="a1", name=None, amount=12.5,
                      categories=("shoes", "bags"), channel="web",
                      traits={"age": 3, "interests": ["golf"]}, previous_id="p1")
    op = routing.parse_op(routing.event_op(rec, [0, 3, 17, 1], ["x"]))
    assert op[:3] == [routing.OP_EVENT, [0, 3, 17, 1], ["x"]]
    assert Interaction.from_wire(op[3]) == rec


def test_identity_ops_round_trip() -> None:
    via = [1, 2, 40, 3]
    assert routing.parse_op(routing.merge_op("a1", "u1", via)) == [
        routing.OP_MERGE, via, [], "a1", "u1"]
    assert routing.parse_op(routing.absorb_op("u1", "a1", b'[1,"a1"]', via, ["z"])) == [
        routing.OP_ABSORB, via, ["z"], "u1", "a1", '[1,"a1"]']
    assert routing.parse_op(routing.erase_op("u1", "m9")) == [
        routing.OP_ERASE, None, [], "u1", "m9"]
    assert routing.parse_op(routing.unlink_op("a1", ["u1", "u0"], "m9", via)) == [
        routing.OP_UNLINK, via, [], "a1", ["u1", "u0"], "m9"]


def test_an_anonymous_customer_lives_where_its_id_is_keyed() -> None:
    for n in (1, 8, 100):
        for key in KEYS[:200]:
            assert routing.partition_of("anonymous_id:" + key, n) == partition_for(key, n)


@pytest.mark.parametrize("value", [
    b"not json", b"{}", b"[]", b'"ev"', b'["nope", 1]', b"[[1], 2]", b'[{"a": 1}]',
    b'["merge", "a1"]', b'["merge", "a1", 7]', b'["ev", "row"]', b'["ev"]',
    b'["absorb", "u1", "a1"]', b'["erase", "u1", "m", "x"]',
    b'["merge", null, [], "a1"]', b'["merge", [0, 1, 2], [], "a1", "u1"]',
    b'["merge", [5, 1, 2, 3], [], "a1", "u1"]', b'["merge", [0, -1, 2, 3], [], "a1", "u1"]',
    b'["merge", null, "p", "a1", "u1"]', b'["merge", null, [1], "a1", "u1"]',
    b'["unlink", null, [], "a1", "u1", "m"]', b'["ev", null, [], "row"]',
])
def test_parse_op_refuses_what_is_not_an_operation(value: bytes) -> None:
    with pytest.raises(ValueError):
        routing.parse_op(value)


def test_ops_are_compact_json() -> None:
    assert orjson.loads(routing.merge_op("a", "u", None)) == ["merge", None, [], "a", "u"]
