"""The collector's Kafka side: one producer (``acks=all``), broker availability, dead letters.

Availability decides between 200 and 503. Kafka is *unavailable* from the moment a request's
records are not acknowledged in time (or the broker stops answering the probe, as the
worker's :class:`~stream_app.host.health.BrokerWatch` sees it) until a probe started after that
moment succeeds. While unavailable, requests get 503 at once instead of each waiting out the
acknowledgement timeout: the SDKs back off and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

from ..host.clients import BrokerUnreachable, aiokafka_config, connection_summary
from ..host.health import PROBE_INTERVAL_S, BrokerWatch
from .batches import SharedBatches
from .intake import Intake
from .metrics import CollectorMetrics
from .settings import CollectorSettings

log = logging.getLogger(__name__)
DLQ_ORIGIN = b"collector"
BATCH_BYTES = 512 * 1024  # a record batch; under Kafka's default message.max.bytes (1 MiB)


class KafkaUnavailable(Exception):
    """Records were not (or would not be) acknowledged: answer 503."""


class Sink:
    def __init__(self, settings: CollectorSettings, metrics: CollectorMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.watch = BrokerWatch(settings, cast(Any, metrics))
        self.idempotent = False
        self.failed_at: float | None = None
        self.last_error: str | None = None
        self._producer: Any = None
        self._batches: SharedBatches | None = None
        self._probe: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self, timeout_s: float = 20.0) -> None:
        """Connect, or raise :class:`BrokerUnreachable` (naming the settings) after
        ``timeout_s``. Idempotence is used where the broker grants a producer id."""
        from aiokafka.errors import KafkaConnectionError, KafkaError

        deadline = time.monotonic() + timeout_s
        idempotent = True
        while True:
            producer = self._new_producer(idempotent)
            try:
                await producer.start()
            except KafkaConnectionError as exc:
                await _quietly_stop(producer)
                if time.monotonic() > deadline:
                    raise BrokerUnreachable(
                        f"cannot connect to the Kafka cluster ({connection_summary(self.settings)})"
                        f": {type(exc).__name__}") from exc
                await asyncio.sleep(0.5)
                continue
            except KafkaError as exc:
                await _quietly_stop(producer)
                if not idempotent:
                    raise BrokerUnreachable(
                        f"the Kafka cluster refused the producer "
                        f"({connection_summary(self.settings)}): {type(exc).__name__}") from exc
                # e.g. the embedded broker answers InitProducerId with UNKNOWN_SERVER_ERROR
                log.warning("the broker grants no producer id (%s): producing without "
                            "idempotence (a retried send can then duplicate a record; the "
                            "worker applies each messageId once)", type(exc).__name__)
                idempotent = False
                continue
            break
        self._producer, self.idempotent = producer, idempotent
        self._batches = SharedBatches(producer, self.settings.input_topic,
                                      self.settings.collector_linger_ms / 1000)
        self._probe = asyncio.create_task(self._probe_loop(), name="collector-broker-probe")

    def _new_producer(self, idempotent: bool) -> Any:
        from aiokafka import AIOKafkaProducer

        timeout_ms = int(self.settings.collector_ack_timeout_s * 1000)
        return AIOKafkaProducer(
            client_id=f"{self.settings.app_id}-collector", acks="all",
            enable_idempotence=idempotent, linger_ms=self.settings.collector_linger_ms,
            request_timeout_ms=timeout_ms, max_batch_size=BATCH_BYTES,
            max_request_size=max(4 * BATCH_BYTES, 2 * self.settings.max_message_bytes),
            retry_backoff_ms=100, **aiokafka_config(self.settings))

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.watch.close()
        if self._batches is not None:
            with contextlib.suppress(Exception):
                await self._batches.close(self.settings.collector_ack_timeout_s)
        if self._producer is not None:
            # flushes what is buffered; bounded, the broker may be gone
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(),
                                       self.settings.collector_ack_timeout_s)

    # --- availability -----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.failed_at is None and not self.watch.stalled

    def _failed(self, error: str) -> None:
        if self.failed_at is None:
            log.warning("Kafka unavailable: %s; answering 503 until the broker answers", error)
        self.failed_at = time.monotonic()
        self.last_error = error
        self.metrics.available.set(0)

    async def _probe_loop(self) -> None:
        while True:
            started = time.monotonic()
            ok = await self.watch.check()
            if ok and self.failed_at is not None and started > self.failed_at:
                log.warning("Kafka available again")
                self.failed_at = None
            self.metrics.available.set(1 if self.available else 0)
            await asyncio.sleep(PROBE_INTERVAL_S if self.available else 0.5)

    def health(self) -> dict[str, Any]:
        return {"available": self.available, "idempotent": self.idempotent,
                "unavailable_since": (None if self.failed_at is None else _iso(
                    time.time() - (time.monotonic() - self.failed_at))),
                "last_error": self.last_error, "broker": self.watch.report()}

    # --- delivery ---------------------------------------------------------------------------
    async def deliver(self, intake: Intake, rejected_at: float) -> None:
        """Produce the request's records (and dead letters) and wait for every ack, or raise
        :class:`KafkaUnavailable` within the acknowledgement timeout."""
        if not self.available:
            raise KafkaUnavailable(self.last_error or "broker not answering")
        if not intake.records and not intake.rejected:
            return
        timeout = self.settings.collector_ack_timeout_s
        deadline = time.monotonic() + timeout
        futures: list[asyncio.Future[Any]] = []
        try:
            await asyncio.wait_for(self._enqueue(intake, rejected_at, futures), timeout)
            done, pending = await asyncio.wait(
                futures, timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # timeout waiting for metadata / buffer space, client error
            for fut in futures:
                fut.add_done_callback(_retrieve)
            self._failed(_describe(exc))
            raise KafkaUnavailable(_describe(exc)) from None
        if pending:
            # they may still be delivered (then the SDK's retry is a duplicate, applied once
            # by messageId) or fail: either way nobody waits for them any more
            for fut in pending:
                fut.add_done_callback(_retrieve)
            self._failed(f"no acknowledgement within {timeout:g}s")
            raise KafkaUnavailable(f"no acknowledgement within {timeout:g}s")
        errors = [exc for fut in done if (exc := fut.exception()) is not None]
        if errors:
            self._failed(_describe(errors[0]))
            raise KafkaUnavailable(_describe(errors[0]))

    async def _enqueue(self, intake: Intake, rejected_at: float,
                       futures: list[asyncio.Future[Any]]) -> None:
        assert self._batches is not None
        futures += await self._batches.add(intake.records)
        send = self._producer.send
        if intake.rejected:
            when = _iso(rejected_at).encode()
            for rej, key in zip(intake.rejected, intake.rejected_keys, strict=True):
                headers = [("segmenter.dlq.reason", rej.reason.encode()),
                           ("segmenter.dlq.detail", rej.detail.encode()[:2000]),
                           ("segmenter.dlq.origin", DLQ_ORIGIN),
                           ("segmenter.dlq.rejected_at", when)]
                if rej.batch_index is not None:
                    headers.append(("segmenter.dlq.batch_index", str(rej.batch_index).encode()))
                futures.append(await send(self.settings.dlq_topic, rej.payload, key=key,
                                          headers=headers))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _quietly_stop(producer: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 2.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out waiting for the broker"
    return f"{type(exc).__name__}: {str(exc)[:200]}"  # never the client's configuration


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
