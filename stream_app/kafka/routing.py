"""Which partition owns a customer, and the internal routed-topic messages.

A customer's state lives in the partition Kafka's default partitioner (murmur2) picks for the
customer id, on every co-partitioned topic (input, routed, table changelogs). A producer that
keys messages by customer id with a default partitioner lands events there directly; anything
else (unkeyed, keyed otherwise, anonymous ids later linked to a user) is re-keyed through the
internal routed topic, one hop.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from ..events.interaction import Interaction

# Routed-topic operations: [op, ...]
OP_EVENT = "ev"  # [ev, interaction wire row]
OP_MERGE = "merge"  # [merge, anonymous id, user id]: at the anonymous id's partition
OP_ABSORB = "absorb"  # [absorb, user id, anonymous id, state bytes as str]: at the user's
OP_ERASE = "erase"  # [erase, customer id, message id]


@lru_cache(maxsize=1 << 16)
def partition_for(customer_id: str, partitions: int) -> int:
    """Kafka's default partitioner for a string key (Java client and kafka-python agree).

    Cached: aiokafka's murmur2 is pure Python (~6 µs a key) and the hot path asks for every
    event; busy customers come back often."""
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


def event_op(rec: Interaction) -> bytes:
    return orjson.dumps([OP_EVENT, rec.to_wire()])


def merge_op(anonymous_id: str, user_id: str) -> bytes:
    return orjson.dumps([OP_MERGE, anonymous_id, user_id])


def absorb_op(user_id: str, anonymous_id: str, state: bytes) -> bytes:
    return orjson.dumps([OP_ABSORB, user_id, anonymous_id, state.decode()])


def erase_op(customer_id: str, message_id: str) -> bytes:
    return orjson.dumps([OP_ERASE, customer_id, message_id])


_ARITY = {OP_EVENT: 2, OP_MERGE: 3, OP_ABSORB: 4, OP_ERASE: 3}


def parse_op(value: bytes) -> list[Any]:
    """A routed operation, checked for shape; ValueError if it is not one."""
    op = orjson.loads(value)
    if not isinstance(op, list) or not op or not isinstance(op[0], str) or op[0] not in _ARITY:
        raise ValueError(f"unknown routed operation {str(op)[:60]}")
    if len(op) != _ARITY[op[0]] or (
        not isinstance(op[1], list) if op[0] == OP_EVENT
        else not all(isinstance(arg, str) for arg in op[1:])
    ):
        raise ValueError(f"malformed routed operation {str(op)[:60]}")
    return op
