"""Publishing spec events to the input topic, as fast as possible or at a rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from kafka import KafkaProducer

from ..config import Settings
from ..host.clients import kafka_python_config


def producer_for(settings: Settings, **extra: Any) -> KafkaProducer:
    conf: dict[str, Any] = {"linger_ms": 20, "batch_size": 256 * 1024, "acks": 1,
                            "compression_type": None, "max_request_size": 4 * 1024 * 1024,
                            **kafka_python_config(settings)}
    conf.update(extra)
    return KafkaProducer(**conf)


def event_key(event: dict[str, Any]) -> bytes | None:
    """Key by customer (userId, else anonymousId): events land on the owning partition."""
    cid = event.get("userId") or event.get("anonymousId")
    return str(cid).encode() if cid else None


def paced(items: Iterable[Any], rate: float | None, clock: Callable[[], float] = time.monotonic
          ) -> Iterator[Any]:
    """Yield items no faster than ``rate`` per second (None: as fast as possible)."""
    if not rate:
        yield from items
        return
    started = clock()
    for n, item in enumerate(items):
        due = started + n / rate
        delay = due - clock()
        if delay > 0:
            time.sleep(delay)
        yield item


def publish(producer: KafkaProducer, topic: str, events: Iterable[dict[str, Any]], *,
            rate: float | None = None, on_sent: Callable[[int], None] | None = None,
            stop: Callable[[], bool] | None = None) -> int:
    """Send events keyed by customer; returns how many were sent. Flushes at the end."""
    sent = 0
    for event in paced(events, rate):
        if stop is not None and stop():
            break
        producer.send(topic, value=orjson.dumps(event), key=event_key(event))
        sent += 1
        if on_sent is not None and sent % 100 == 0:
            on_sent(100)
    producer.flush()
    if on_sent is not None and sent % 100:
        on_sent(sent % 100)
    return sent
