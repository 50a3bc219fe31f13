"""One clustering model for the whole application, however many workers.

- Every worker sends feature samples (at most one per customer per day of event time) to the
  one-partition training topic. Exactly one worker owns that partition, so exactly one
  :class:`~stream_app.core.segmentation.clustering.Trainer` learns, wherever it runs.
- The trainer publishes versioned snapshots (plain JSON) to the compacted model topic and a
  checkpoint of itself to the trainer topic, so a trainer that moves to another worker after a
  rebalance resumes from the last checkpoint.
- Every worker follows the model topic with its own group-less consumer and scores with the
  latest snapshot: the same features get the same segment on every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiokafka
import orjson
from mode import Service

from ..core.segmentation.clustering import BehaviorSegmentation, Trainer, TrainerSettings
from .clients import aiokafka_config

if TYPE_CHECKING:
    from .worker_view import WorkerHost

log = logging.getLogger(__name__)
MODEL_KEY = b"behavior"


def trainer_settings(rt: WorkerHost) -> TrainerSettings:
    from ..evaluation import trainer_settings as from_settings

    return from_settings(rt.settings)


async def read_last(rt: WorkerHost, topic: str, timeout: float = 60.0) -> bytes | None:
    """The newest value of a one-partition topic (None when empty or missing).

    Reads to the partition's end offset as the broker reports it when the read starts, not
    to the first empty fetch: a slow fetch must not make an older value look newest (the
    trainer would resume from a stale checkpoint and reissue versions and segment ids).
    ``TimeoutError`` if the end is not reached in ``timeout`` seconds."""
    consumer = aiokafka.AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                         **aiokafka_config(rt.settings))
    await consumer.start()
    try:
        tp = aiokafka.TopicPartition(topic, 0)
        if topic not in await consumer.topics():
            return None
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        last: bytes | None = None
        deadline = time.monotonic() + timeout
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: end offset {end} not reached in {timeout:.0f}s")
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
            for record in batch.get(tp, []):
                if record.offset < end and record.value is not None:
                    last = record.value
        return last
    finally:
        await consumer.stop()


SET_CHANGE_PREFIX = b"behavior-change:"


def set_change_records(snapshot: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The model topic's set-change events of a snapshot: one record per segment that
    appeared, returned, split, merged or retired, keyed ``behavior-change:<version>:<n>``
    (distinct keys, so compaction keeps every one beside the latest snapshot)."""
    names = {seg["id"]: seg["name"] for seg in snapshot.get("segments", ())}
    version = snapshot.get("version")
    out = []
    for i, change in enumerate(snapshot.get("set_changes", ())):
        doc = {"type": "segment_set_change", "segmentation": snapshot.get("segmentation"),
               "version": version, "generation": snapshot.get("generation"),
               "created_at": snapshot.get("created_at"), **change}
        for field in ("segment", "from", "into"):
            if change.get(field) in names:
                doc[f"{field}_name"] = names[change[field]]
        out.append((SET_CHANGE_PREFIX + f"{version}:{i}".encode(), orjson.dumps(doc)))
    return out


def learn_batch(trainer: Trainer, values: list[bytes], now: float
                ) -> tuple[bytes | None, bytes | None]:
    """Learn encoded samples; the snapshot due (JSON) and the checkpoint to go with it."""
    for value in values:
        trainer.learn(orjson.loads(value))
    snapshot = trainer.maybe_snapshot(now)
    if snapshot is None:
        return None, None
    return orjson.dumps(snapshot), trainer.to_json()


@dataclass(frozen=True, slots=True)
class Modeling:
    """The clustering on a worker, as :func:`install` declared it: its topics (Faust's
    topic objects; the trainer is the agent of the training topic) and the model follower
    (a component the host starts and stops with the app)."""

    training_topic: Any
    model_topic: Any
    trainer_checkpoints: Any
    follower: ModelFollower


class ModelFollower(Service):
    """Loads every snapshot published to the model topic (newest wins), then re-scores the
    local customers (:class:`Rescorer`)."""

    def __init__(self, rt: WorkerHost, behavior: BehaviorSegmentation) -> None:
        super().__init__()
        self.rt = rt
        self.behavior = behavior

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            try:
                await _follow(self.rt, self.behavior, Rescorer(self.rt, self.behavior,
                                                               spawn=self.add_future))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("model follower failed; retrying", exc_info=True)
                await self.sleep(2.0)


def install(rt: WorkerHost, behavior: BehaviorSegmentation) -> Modeling:
    """Declare the training topic, the trainer agent and the model follower on ``rt.app``."""
    s = rt.settings
    app = rt.app
    training = app.topic(s.training_topic, partitions=1, internal=True,
                         key_serializer="raw", value_serializer="raw")
    model_topic = app.topic(s.model_topic, partitions=1, internal=True, compacting=True,
                            key_serializer="raw", value_serializer="raw")
    trainer_checkpoints = app.topic(s.trainer_topic, partitions=1, internal=True,
                                    compacting=True, key_serializer="raw",
                                    value_serializer="raw")
    state: dict[str, Any] = {"trainer": None, "generation": None}

    async def current_trainer() -> Trainer:
        generation = app.consumer_generation_id
        if state["trainer"] is None or state["generation"] != generation:
            # The partition may just have moved here: resume from the last checkpoint.
            saved = await read_last(rt, s.trainer_topic)
            trainer = Trainer.from_json(saved) if saved else Trainer(trainer_settings(rt))
            published = await read_last(rt, s.model_topic)
            if published is not None:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    trainer.catch_up(orjson.loads(published))
            state["trainer"] = trainer
            state["generation"] = generation
            log.info("trainer %s (%d samples learned)",
                     "resumed from checkpoint" if saved else "started fresh",
                     state["trainer"].n_learned if hasattr(state["trainer"], "n_learned") else 0)
        return state["trainer"]  # type: ignore[no-any-return]

    @app.agent(training, name="train")
    async def train(stream: Any) -> None:
        async for batch in stream.take(1000, within=0.5):
            trainer = await current_trainer()
            # In a thread: ~50 µs a sample, and every 2000 samples a batch k-means check of
            # 20-50 ms, held the event loop (batches waited). The trainer is this agent's
            # alone, and the agent waits for the thread; the GIL hands the loop back every
            # switch interval (5 ms) meanwhile.
            snapshot, checkpoint = await asyncio.to_thread(learn_batch, trainer, batch,
                                                           time.time())
            if snapshot is not None:
                await model_topic.send(key=MODEL_KEY, value=snapshot, partition=0)
                await trainer_checkpoints.send(key=MODEL_KEY, value=checkpoint,
                                                  partition=0)
                for key, value in set_change_records(trainer.last or {}):
                    await model_topic.send(key=key, value=value, partition=0)
                log.info("published model version %s", trainer.version)
                part = (trainer.last or {}).get("predictive") or {}
                if part.get("bgnbd"):
                    log.info("predictive fits in it: BG/NBD on %s customers, Gamma-Gamma on "
                             "%s (sample %s; latest attempt %.2fs: %s)",
                             part["bgnbd"]["customers"],
                             (part.get("gamma_gamma") or {}).get("customers"),
                             part.get("sample"), part.get("fit_s", 0.0),
                             {k: v["status"] for k, v in part.get("last_attempt", {}).items()})

    return Modeling(training, model_topic, trainer_checkpoints, ModelFollower(rt, behavior))


async def _follow(rt: WorkerHost, behavior: BehaviorSegmentation, rescorer: Rescorer) -> None:
    consumer = aiokafka.AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                         **aiokafka_config(rt.settings))
    await consumer.start()
    try:
        tp = aiokafka.TopicPartition(rt.settings.model_topic, 0)
        while rt.settings.model_topic not in await consumer.topics():
            await asyncio.sleep(2.0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        log.info("following model snapshots on %s", rt.settings.model_topic)
        while not rt.app.should_stop:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=100)
            for record in batch.get(tp, []):
                if record.key != MODEL_KEY:
                    continue  # a set-change event (set_change_records), not a snapshot
                # A snapshot that cannot be loaded is skipped, never retried from the start:
                # the follower would never reach the newer ones behind it.
                try:
                    snapshot = orjson.loads(record.value or b"")
                    loaded = behavior.load(snapshot)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.warning("skipping a model snapshot that cannot be loaded (offset %d): "
                                "%s", record.offset, str(exc)[:200])
                    continue
                if loaded:
                    rt.metrics.set_model(int(snapshot.get("version", 0)),
                                         float(snapshot.get("created_at", time.time())))
                    log.info("scoring with model version %s", snapshot.get("version"))
                    if load_predictions(rt, snapshot):
                        rescorer.request(predictions=True)
                    elif behavior.ready:
                        rescorer.request()
    finally:
        await consumer.stop()


def load_predictions(rt: WorkerHost, snapshot: dict[str, Any]) -> bool:
    """Load a snapshot's predictive parameters (True when those in force changed). A part
    that cannot be read is logged and skipped: the parameters loaded before stay."""
    if rt.predictions is None:
        return False
    try:
        changed = rt.predictions.load(snapshot.get("predictive"), int(snapshot["version"]))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("skipping the predictive parameters of model version %s: %s",
                    snapshot.get("version"), str(exc)[:200])
        return False
    if changed:
        bg = rt.predictions.fits["bgnbd"]
        log.info("predicting with BG/NBD %s fitted on %s customers (model version %s)",
                 rt.predictions.predictor.bgnbd if rt.predictions.predictor else None,
                 bg.customers if bg else None, snapshot.get("version"))
    return changed


def prediction_readers(segmentations: Any) -> list[Any]:
    """The rule segmentations whose conditions read a prediction (p_alive, ...)."""
    from ..core.segmentation.rules.segmentation import RuleSegmentation

    return [seg for seg in segmentations
            if isinstance(seg, RuleSegmentation) and seg.reads_predictions]


class Rescorer:
    """Re-scores every local customer after a new model version is loaded (see
    :meth:`stream_app.core.processing.Step.rescore`): one pass at a time; versions loaded during a pass ask for
    one more pass after it, not one each. With new predictive parameters the pass also
    re-scores the rule segmentations that read predictions."""

    def __init__(self, rt: WorkerHost, behavior: BehaviorSegmentation,
                 spawn: Callable[[Coroutine[Any, Any, None]], Any] = asyncio.ensure_future
                 ) -> None:
        self.rt = rt
        self.behavior = behavior
        self.spawn = spawn  # starts the pass (the follower's add_future: stopped with it)
        self.wanted = asyncio.Event()
        self.with_predictions = False
        self.task: asyncio.Task[None] | None = None

    def request(self, predictions: bool = False) -> None:
        self.with_predictions = self.with_predictions or predictions
        self.wanted.set()
        if self.task is None or self.task.done():
            self.task = self.spawn(self._run())

    async def _run(self) -> None:
        while self.wanted.is_set() and not self.rt.app.should_stop:
            # a worker still joining or recovering has no settled partitions to re-score
            while not self.rt.ready() and not self.rt.app.should_stop:
                await asyncio.sleep(0.5)
            self.wanted.clear()
            segmentations: list[Any] = [self.behavior] if self.behavior.ready else []
            if self.with_predictions:
                self.with_predictions = False
                segmentations += prediction_readers(self.rt.step.segmentations)
            if not segmentations:
                continue
            try:
                await rescore_all(self.rt, self.behavior, segmentations)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("re-scoring after a model update failed", exc_info=True)


async def rescore_all(rt: WorkerHost, behavior: BehaviorSegmentation,
                      segmentations: list[Any] | None = None) -> int:
    """Re-score the behaviour segment (or ``segmentations``) of every customer of this
    worker's partitions, in chunks under the state lock, written and published as a time
    tick's are. Returns the customers whose state changed."""
    chosen = segmentations if segmentations is not None else [behavior]
    started = time.monotonic()
    states, pipeline = rt.customer_states, rt.pipeline
    done = await rt.sweep(lambda p, keys, wall: pipeline.rescore(p, states, keys, chosen, wall))
    written = sum(chunk.result.written for chunk in done)
    log.info("re-scored customers (%s) for model version %s: %d changed in %.1fs",
             ", ".join(seg.name for seg in chosen), behavior.version, written,
             time.monotonic() - started)
    return written
