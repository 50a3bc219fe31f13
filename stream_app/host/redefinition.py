"""Live rule definitions on every worker: the definitions topic, the file watcher, the backfill.

- The definitions in force for the whole application are the newest record of the compacted
  one-partition definitions topic (``<app id>-segment-definitions``). Two things write it:
  ``PUT /admin/segmentations`` (:mod:`.web.definitions`) and each worker's watcher of
  ``SEGMENTER_SEGMENTS_FILE`` (checked every ``SEGMENTER_SEGMENTS_POLL_S`` and on SIGHUP),
  each only after checking the definitions in full. Invalid ones change nothing: the error
  is logged, answered (400) and counted (``segmenter_definitions_rejected_total``).
- Every worker follows the topic with its own group-less consumer (as the model topic is
  followed, :mod:`.modeling`), so all of them switch, the one that took the PUT included,
  through the same path: under the state lock (no batch is between reading and writing the
  tables), the step evaluates under the new definitions from the next batch on.
- Then the worker backfills: every stored customer of its partitions is brought over at once
  (:meth:`.processing.Step.backfill`), partition by partition, in chunks under the state
  lock, each chunk's changes sent before its state is written, as a time tick's are. A
  customer brought over is not stale any more, so a pass repeated after a crash or a
  rebalance (one runs after every rebalance) sends only what was not stored, with the same
  change ids.
- At start-up the worker reads the topic's newest record before it consumes anything: it is
  in force unless the file was edited since that record was written (the record carries the
  text hash of the file its publisher had); then the file is, and the worker publishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from mode import Service

from ..config import Settings
from ..core.segmentation.rules import DefinitionsError
from ..core.segmentation.rules.definitions import DEFAULTS
from ..core.segmentation.rules.live import (
    MAX_DEFINITIONS_BYTES,
    RECORD_KEY,
    DefinitionSet,
    Published,
    decode_record,
    encode_record,
    format_of,
    parse_set,
    text_hash,
)

if TYPE_CHECKING:
    from .worker_view import WorkerHost

log = logging.getLogger(__name__)


# --- the file ---------------------------------------------------------------------------------

def read_file(settings: Settings) -> tuple[bytes, str]:
    """The definitions file's bytes (at most one byte over the limit) and its name; the
    shipped defaults when no file is set. ``DefinitionsError`` when unreadable."""
    path = settings.segments_file
    if path is None:
        return (resources.files("stream_app.core.segmentation.rules").joinpath(DEFAULTS)
                .read_bytes(), DEFAULTS)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_DEFINITIONS_BYTES + 1), str(path)
    except OSError as exc:
        raise DefinitionsError(f"{path}: cannot read the definitions: {exc}") from None


def file_set(settings: Settings) -> tuple[DefinitionSet, int]:
    """The file's definitions (checked in full) and the hash of its text."""
    raw, name = read_file(settings)
    source = "file" if settings.segments_file is not None else "defaults"
    return parse_set(raw, format=format_of(name), source=source, name=name), text_hash_of(raw)


def text_hash_of(raw: bytes) -> int:
    return text_hash(raw.decode("utf-8", errors="replace"))


# --- start-up ---------------------------------------------------------------------------------

@dataclass
class Startup:
    """What a worker starts with: the definitions, the hash of its file, where to follow the
    topic from, and whether the file must be published (edited since the topic's record)."""

    definitions: DefinitionSet
    file_version: int
    follow_from: int
    publish_file: bool
    published: Published | None = None


def startup_definitions(settings: Settings, timeout_s: float = 30.0) -> Startup:
    """Read the topic's newest record (kafka-python, before the worker starts) and decide.

    Raises ``DefinitionsError`` for an unusable file: the worker refuses to start."""
    from kafka import KafkaConsumer, TopicPartition

    from .clients import kafka_python_config

    defs, fv = file_set(settings)
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=500,
                             **kafka_python_config(settings))
    try:
        tp = TopicPartition(settings.definitions_topic, 0)
        if consumer.partitions_for_topic(settings.definitions_topic) is None:
            return Startup(defs, fv, 0, publish_file=False)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        last: bytes | None = None
        deadline = time.monotonic() + timeout_s
        # Read past the reported end until a fetch comes back empty: the embedded broker
        # reports the end of a multi-record batch too early (docs: FIELD-NOTES).
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            records = batch.get(tp, [])
            for record in records:
                if record.key == RECORD_KEY and record.value is not None:
                    last = record.value
            if not records and consumer.position(tp) >= end:
                break
        position = consumer.position(tp)
    finally:
        consumer.close()
    if last is None:
        return Startup(defs, fv, position, publish_file=False)
    try:
        published = decode_record(last)
    except DefinitionsError as exc:
        log.error("the newest definitions on %s are unusable, the file's are in force: %s",
                  settings.definitions_topic, str(exc)[:500])
        return Startup(defs, fv, position, publish_file=True)
    if published.file_version == fv:
        return Startup(published.defs, fv, position, publish_file=False, published=published)
    # the file was edited since that record was written (or another file wrote it)
    return Startup(defs, fv, position, publish_file=published.defs.version != defs.version)


# --- the worker's side ------------------------------------------------------------------------

class Definitions(Service):
    """The definitions in force on this worker, and how they change: a component the host
    starts and stops with the app (it follows the definitions topic, watches the file, and
    runs the backfill after a switch or a rebalance)."""

    def __init__(self, rt: WorkerHost, startup: Startup, topic: Any = None) -> None:
        super().__init__()
        self.rt = rt
        self.topic = topic  # the definitions topic (Faust's), where publish() writes
        self.current = startup.definitions
        self.file_version = startup.file_version
        self.follow_from = startup.follow_from
        self.publish_file = startup.publish_file
        self.published_at = startup.published.published_at if startup.published else None
        self.applied_at = time.time()
        self.applied = asyncio.Event()  # set each time a new version is in force
        self.backfill = Backfill(rt, spawn=self.add_future)
        self.host = socket.gethostname()
        self._check_now = asyncio.Event()
        rt.step.definitions_version = self.current.version
        rt.metrics.definitions_version.set(self.current.version)

    @property
    def version(self) -> int:
        return self.current.version

    def describe(self) -> dict[str, Any]:
        return {**self.current.describe(), "published_at": self.published_at,
                "applied_at": self.applied_at, "backfill": self.backfill.report()}

    # --- writing the topic ------------------------------------------------------------------
    async def publish(self, defs: DefinitionSet) -> None:
        """Send checked definitions to the topic (acknowledged by the broker)."""
        value = encode_record(defs, file_version=self.file_version, published_at=time.time(),
                              published_by=self.host)
        sent = await self.topic.send(key=RECORD_KEY, value=value, partition=0, force=True)
        await sent
        log.info("published definitions %08x (%s) to %s", defs.version, defs.source,
                 self.rt.settings.definitions_topic)

    def rejected(self, source: str, exc: DefinitionsError) -> None:
        self.rt.metrics.definitions_rejected.labels(source).inc()
        log.error("new definitions refused (%s), those in force (%08x) stay: %s", source,
                  self.version, str(exc)[:2000])

    async def wait_applied(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.version != version:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.applied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.applied.wait(), min(left, 0.5))
        return True

    # --- switching ---------------------------------------------------------------------------
    async def switch(self, published: Published) -> None:
        defs = published.defs
        if defs.version == self.version:
            return
        rt = self.rt
        async with rt.state_lock:  # between batches: none sees half of each
            rt.step.redefine(defs.segmentations, defs.version)
            rt.segmentations = rt.step.segmentations
            old, self.current = self.current, defs
            self.published_at = published.published_at
            self.applied_at = time.time()
        rt.metrics.definitions_version.set(defs.version)
        log.info("definitions %08x -> %08x (%s, published by %s): backfilling", old.version,
                 defs.version, defs.source, published.published_by or "?")
        self.applied.set()
        self.backfill.request()

    # --- the component's tasks ----------------------------------------------------------------
    @Service.task
    async def _follow_topic(self) -> None:
        while not self.should_stop:
            try:
                await self.follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("definitions follower failed; retrying", exc_info=True)
                await self.sleep(2.0)

    @Service.task
    async def _watch_the_file(self) -> None:
        while not self.should_stop:
            try:
                await self.watch_file()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("definitions file watcher failed; retrying", exc_info=True)
                await self.sleep(2.0)

    @Service.timer(2.0)
    async def _backfill_after_rebalance(self) -> None:
        self.backfill.after_rebalance()

    # --- following the topic -----------------------------------------------------------------
    async def follow(self) -> None:
        import aiokafka

        from .clients import aiokafka_config

        s = self.rt.settings
        consumer = aiokafka.AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                             **aiokafka_config(s))
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition(s.definitions_topic, 0)
            while s.definitions_topic not in await consumer.topics():
                await asyncio.sleep(2.0)
            consumer.assign([tp])
            consumer.seek(tp, self.follow_from)
            while not self.rt.app.should_stop:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=100)
                records = [r for r in batch.get(tp, []) if r.key == RECORD_KEY and r.value]
                if records:
                    self.follow_from = records[-1].offset + 1
                    await self._take(records[-1].value)  # the newest of them wins
        finally:
            await consumer.stop()

    async def _take(self, value: bytes) -> None:
        try:
            published = decode_record(value)
        except DefinitionsError as exc:
            self.rejected("topic", exc)
            return
        await self.switch(published)

    # --- watching the file -------------------------------------------------------------------
    async def watch_file(self) -> None:
        if self.publish_file:
            await self.publish(self.current)
        if self.rt.settings.segments_file is None:
            return
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._check_now.set)
        while not self.rt.app.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self.rt.settings.segments_poll_s)
            self._check_now.clear()
            await self.check_file()

    async def check_file(self) -> None:
        """Publish the file when its text changed since this worker last saw it, and checks."""
        s = self.rt.settings
        try:
            raw, name = read_file(s)
        except DefinitionsError as exc:
            if self.file_version != -1:  # said once, not every few seconds
                self.file_version = -1
                self.rejected("file", exc)
            return
        fv = text_hash_of(raw)
        if fv == self.file_version:
            return
        self.file_version = fv  # decided once per edit
        try:
            defs = parse_set(raw, format=format_of(name), source="file", name=name)
        except DefinitionsError as exc:
            self.rejected("file", exc)
            return
        log.info("%s changed: definitions %08x", name, defs.version)
        if defs.version != self.version:
            await self.publish(defs)


class Backfill:
    """Re-evaluates every local customer under the definitions in force: one pass at a time;
    a switch during a pass asks for one more pass after it. A pass also runs after each
    rebalance, for partitions whose previous owner stopped halfway."""

    def __init__(self, rt: WorkerHost,
                 spawn: Callable[[Coroutine[Any, Any, None]], Any] = asyncio.ensure_future
                 ) -> None:
        self.rt = rt
        self.spawn = spawn  # starts a pass (the component's add_future: stopped with it)
        self.wanted = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running = False
        self.generation: Any = None  # consumer generation of the last completed pass
        self.last: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        return {"running": self.running, "last": self.last}

    def request(self) -> None:
        self.wanted.set()
        if self.task is None or self.task.done():
            self.task = self.spawn(self._run())

    def after_rebalance(self) -> None:
        rt = self.rt
        if rt.ready() and rt.app.consumer_generation_id != self.generation:
            self.request()

    async def _run(self) -> None:
        while self.wanted.is_set() and not self.rt.app.should_stop:
            while not self.rt.ready() and not self.rt.app.should_stop:
                await asyncio.sleep(0.5)
            self.wanted.clear()
            generation = self.rt.app.consumer_generation_id
            self.running = True
            try:
                self.last = await backfill_all(self.rt)
                self.generation = generation
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("backfill under new definitions failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                self.wanted.set()
            finally:
                self.running = False


async def backfill_all(rt: WorkerHost) -> dict[str, Any]:
    """One pass over the customers of this worker's partitions (see :class:`Backfill`)."""
    started = time.monotonic()
    version = rt.step.definitions_version
    states, pipeline = rt.customer_states, rt.pipeline
    done = await rt.sweep(lambda p, keys, wall: pipeline.backfill(p, states, keys, wall))
    customers = sum(chunk.result.written for chunk in done)
    changes = sum(len(chunk.result.changes) for chunk in done)
    seconds = time.monotonic() - started
    rt.metrics.backfill_customers.inc(customers)
    rt.metrics.backfill_seconds.set(seconds)
    if customers:
        log.info("backfill under definitions %08x: %d customers re-evaluated, %d changes, "
                 "in %.1fs", version or 0, customers, changes, seconds)
    return {"version": version, "customers": customers, "changes": changes,
            "seconds": round(seconds, 3), "finished_at": time.time()}


def install(rt: WorkerHost, startup: Startup | None = None) -> Definitions:
    """Declare the definitions topic, the follower, the file watcher and the backfill on
    ``rt.app``; ``startup`` from :func:`startup_definitions` (None: the file's, for tools
    and tests that build a worker without a broker)."""
    from ..web.definitions import register_definitions

    s = rt.settings
    app = rt.app
    if startup is None:
        defs, fv = file_set(s)
        startup = Startup(defs, fv, 0, publish_file=False)
    topic = app.topic(s.definitions_topic, partitions=1, internal=True, compacting=True,
                      key_serializer="raw", value_serializer="raw")
    live = Definitions(rt, startup, topic)

    register_definitions(app, s, live)
    return live

