"""Is the broker answering? A cheap round trip every second, on /health and as a metric.

A stalled broker (paused, overloaded, partitioned away) does not make Kafka clients fail: they
wait and retry, so the worker just goes quiet. The watch makes that visible: every
``PROBE_INTERVAL_S`` it asks the broker for cluster metadata on a connection of its own, with
a short timeout. After ``STALL_AFTER`` failed probes in a row the broker counts as stalled
(since the first of them): ``/health`` says so under ``broker`` and
``segmenter_broker_stalled`` is 1. The first probe that succeeds ends the stall; the worker's
own clients resume by themselves, nothing is re-done by the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..metrics import Metrics
from .clients import aiokafka_config

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
STALL_AFTER = 2  # consecutive failed probes


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class BrokerWatch:
    """Stall detection for one worker. :meth:`observe` is the pure part (tests drive it)."""

    def __init__(self, settings: Settings, metrics: Metrics, *,
                 timeout_s: float = PROBE_TIMEOUT_S, stall_after: int = STALL_AFTER,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.stall_after = stall_after
        self.clock = clock
        self.failures = 0  # consecutive
        self.failing_since: float | None = None
        self.stalled_since: float | None = None
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.stalls = 0
        self._client: Any = None

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    # --- the round trip -------------------------------------------------------------------------
    async def check(self) -> bool:
        """Probe once and record the outcome; True if the broker answered in time."""
        started = self.clock()
        try:
            await asyncio.wait_for(self._round_trip(), self.timeout_s)
        except Exception as exc:  # timeout, connection refused, ...: all mean "no answer"
            await self._drop_client()
            self.observe(False, started, _describe(exc, self.timeout_s))
            return False
        self.observe(True, started)
        return True

    async def _round_trip(self) -> None:
        from aiokafka import AIOKafkaClient

        if self._client is None:
            conf = aiokafka_config(self.settings)
            self._client = AIOKafkaClient(
                client_id=f"{self.settings.app_id}-broker-watch",
                request_timeout_ms=int(self.timeout_s * 1000) + 1000,
                metadata_max_age_ms=3_600_000, **conf)
            await self._client.bootstrap()
        # fetch_all_metadata asks one broker and raises if none answers.
        await self._client.fetch_all_metadata()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # closing sockets to a dead broker can fail: nothing is left to do then
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    async def close(self) -> None:
        await self._drop_client()

    # --- bookkeeping ----------------------------------------------------------------------------
    def observe(self, ok: bool, at: float, error: str | None = None) -> None:
        """Record a probe started at ``at``: the stall state, the metric and the log."""
        if ok:
            if self.stalled_since is not None:
                log.warning("broker answering again after %.1fs stalled",
                            self.clock() - self.stalled_since)
            self.failures = 0
            self.failing_since = self.stalled_since = None
            self.last_ok = self.clock()
            self.last_error = None
        else:
            self.failures += 1
            self.last_error = error
            if self.failing_since is None:
                self.failing_since = at
            if self.stalled_since is None and self.failures >= self.stall_after:
                self.stalled_since = self.failing_since
                self.stalls += 1
                log.warning("broker stalled: no answer since %s (%s)",
                            _iso(self.stalled_since), error)
        self.metrics.set_broker_stalled(self.stalled)

    def report(self) -> dict[str, Any]:
        """The ``broker`` section of /health."""
        return {
            "stalled": self.stalled,
            "since": _iso(self.stalled_since),
            "stalled_for_s": (round(self.clock() - self.stalled_since, 1)
                              if self.stalled_since is not None else None),
            "last_ok": _iso(self.last_ok),
            "last_error": self.last_error,
            "stalls": self.stalls,
        }


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout_s:g}s"
    # Exception text only, never the client's configuration (it holds credentials).
    return f"{type(exc).__name__}: {str(exc)[:200]}"
