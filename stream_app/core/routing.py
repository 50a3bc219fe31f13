"""Which partition owns a customer, and the internal routed-topic messages.

A customer's state lives in the partition Kafka's default partitioner (murmur2) picks for the
customer id, on every co-partitioned topic (input, routed, table changelogs). A producer that
keys messages by customer id with a default partitioner lands events there directly; anything
else (unkeyed, keyed otherwise, anonymous ids later linked to a user) is re-keyed through the
internal routed topic, one hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from .events.interaction import Interaction, raw_id

# Routed-topic operations: [op, via, path, ...args]
#   via: [topic code, partition, offset, sub-index] of the record whose processing sent this
#        one (what the receiver dedupes on: see processing.py, "Channels"), or null for a
#        request from outside (admin erasure: its own position is used);
#   path: the ids this operation was relayed through (links followed), for cycle detection.
OP_EVENT = "ev"  # [ev, via, path, interaction wire row]
OP_MERGE = "merge"  # [merge, via, path, source id, target id]: at the source's partition
OP_ABSORB = "absorb"  # [absorb, via, path, target id, source id, state JSON as str]
OP_ERASE = "erase"  # [erase, via, path, customer id, request id]
OP_UNLINK = "unlink"  # [unlink, via, path, id, [ids of the erased customer], request id]
TOPIC_INPUT, TOPIC_ROUTED, TOPIC_OUTSIDE = 0, 1, 2  # channel codes (TOPIC_OUTSIDE: no via)
MAX_PATH = 32  # links followed by one operation before it is dead-lettered

Via = list[int]  # [topic code, partition, offset, sub-index]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned
    32-bit figure. Here rather than aiokafka's (the same pure-Python code) so that the core
    imports no Kafka client; tests/unit/test_routing.py checks it against the Java client's
    figures and kafka-python's partitioner on 1,500 keys and 38 partition counts."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        base = length - tail
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 16)
def partition_for(customer_id: str, partitions: int) -> int:
    """Kafka's default partitioner for a string key (Java client and kafka-python agree).

    Cached: murmur2 in pure Python costs ~5 µs a key and the hot path asks for every
    event; busy customers come back often."""
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


def partition_of(key: str, partitions: int) -> int:
    """The partition that owns a customer key: its producer-side id's (an anonymous
    customer's ``anonymous_id:<id>`` lives where messages keyed ``<id>`` land)."""
    return partition_for(raw_id(key), partitions)


def event_op(rec: Interaction, via: Via | None, path: Sequence[str] = ()) -> bytes:
    return orjson.dumps([OP_EVENT, via, list(path), rec.to_wire()])


def merge_op(source: str, target: str, via: Via | None, path: Sequence[str] = ()) -> bytes:
    return orjson.dumps([OP_MERGE, via, list(path), source, target])


def absorb_op(target: str, source: str, state: bytes, via: Via | None,
              path: Sequence[str] = ()) -> bytes:
    return orjson.dumps([OP_ABSORB, via, list(path), target, source, state.decode()])


def erase_op(customer_id: str, request_id: str, via: Via | None = None,
             path: Sequence[str] = ()) -> bytes:
    return orjson.dumps([OP_ERASE, via, list(path), customer_id, request_id])


def unlink_op(key: str, owners: list[str], request_id: str, via: Via | None,
              path: Sequence[str] = ()) -> bytes:
    return orjson.dumps([OP_UNLINK, via, list(path), key, owners, request_id])


_ARGS = {OP_EVENT: 1, OP_MERGE: 2, OP_ABSORB: 3, OP_ERASE: 2, OP_UNLINK: 3}


def _is_via(v: Any) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 4 and all(
        type(x) is int and x >= 0 for x in v) and v[0] in (TOPIC_INPUT, TOPIC_ROUTED))


def parse_op(value: bytes) -> list[Any]:
    """A routed operation ``[op, via, path, *args]``, checked for shape and types;
    ValueError if it is not one."""
    op = orjson.loads(value)
    if not isinstance(op, list) or not op or not isinstance(op[0], str) or op[0] not in _ARGS:
        raise ValueError(f"unknown routed operation {str(op)[:60]}")
    kind = op[0]
    if len(op) != 3 + _ARGS[kind] or not _is_via(op[1]) or not isinstance(op[2], list) or not all(
            isinstance(x, str) for x in op[2]) or len(op[2]) > MAX_PATH:
        raise ValueError(f"malformed routed operation {str(op)[:60]}")
    args = op[3:]
    if kind == OP_EVENT:
        ok = isinstance(args[0], list)
    elif kind == OP_UNLINK:
        ok = (isinstance(args[0], str) and isinstance(args[2], str) and isinstance(args[1], list)
              and all(isinstance(x, str) for x in args[1]))
    else:
        ok = all(isinstance(a, str) and a for a in args[:2]) and all(isinstance(a, str) for a in args)
    if not ok:
        raise ValueError(f"malformed routed operation {str(op)[:60]}")
    return op
