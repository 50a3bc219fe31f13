"""Throughput, latency, memory and scale-out of the worker, end to end on the embedded broker.

    .venv/bin/python bench/throughput.py [--events N] [--customers C] ...    (or: segmenter bench)

Every phase starts its own embedded broker (Tansu, in memory, on this machine) and real
processes; nothing is mocked. The workload is simulated persona traffic
(:mod:`stream_app.simulate`), serialized once, one event per Kafka message, keyed by customer.

0. **step**: the pure :class:`~stream_app.core.processing.Step` alone, in the driver process, on
   the same workload, in per-partition batches: no Kafka. Its rate (per CPU second) is the
   ceiling for any Kafka loop doing this work on one core.
1. **baseline**: a plain aiokafka loop doing the worker's work (``bench/throughput.py --role
   baseline``, its own process): ``getmany`` on the input and routed topics -> the same pure
   step with the same segmentations, state in a dict -> what the worker sends (changes,
   routed records, dead letters, training samples, and a changelog record per written
   customer per batch, as a Faust table does), one record batch per partition as the worker
   does -> offsets committed every second (the worker's commit interval), after the
   producer has flushed. (It does not wait for the broker after every batch, as the worker
   must before it writes its tables.)
2. **worker x1**: ``python -m stream_app worker``, the events preloaded before it starts.
3. **worker x2**: two workers (one consumer group) on the same preloaded partitions.
4. **latency**: a worker on empty topics; events produced at half the worker's measured
   throughput; latency = arrival of a segment change at a consumer here minus the time its
   input record was produced (its Kafka timestamp), for every input event that caused one.
5. **rss**: a worker with ``SEGMENTER_STORE=rocksdb`` fed many customers (a few events
   each); its resident memory is sampled as customers accumulate and extrapolated to 1M.

Throughput ("drain") = events / (last effect - first progress): progress is the worker's
``/health`` counter (the baseline prints the same counter), sampled every 0.1 s; "last
effect" is when every input and routed message has been processed. "to commit" ends when the
group's committed offsets reach the end of the input topic instead. "steady" is the rate
between 10 % and 90 % of the messages processed (group joins and the tail left out);
scale-out compares two workers' steady rate with one worker's. CPU seconds of each process are read from /proc (psutil), so a run
on a shared, noisy machine can be told apart from a slow one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_app.host.broker import EmbeddedBroker, free_port  # noqa: E402

TARGETS = {
    "throughput_ev_s": 50_000,  # per worker, single-event messages
    "baseline_ratio": 0.5,  # worker / plain aiokafka loop, same run
    "p99_latency_ms": 100.0,  # at half the max throughput
    "store_bytes_per_customer": 1024,
    "rss_1m_customers_bytes": 1024**3,  # rocksdb store
    "scale_efficiency": 0.8,  # N workers >= 0.8 * N * one worker
}
POLL_S = 0.1


# --- machine ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import aiokafka
    import faust

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "faust": faust.__version__,
        "aiokafka": aiokafka.__version__,
    }


# --- workload -----------------------------------------------------------------------------------

@dataclass
class Workload:
    records: list[tuple[bytes, bytes]]  # (key, value): one spec event per Kafka message
    marks: list[tuple[str, int]]  # (customer id, event time in ms) of each record
    customers: int


def _event_ms(iso: str) -> int:
    return round(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def make_workload(events: int, customers: int, days: float, seed: int,
                  buyers: int = 0) -> Workload:
    """Persona traffic ending now (so no event is in the future), serialized once; with
    ``buyers``, that many more customers' orders drawn from BG/NBD and Gamma-Gamma
    (:func:`stream_app.core.predictive.simulate.order_events`) over the same days, in time order
    among the personas' events (the personas barely ever stop buying within a year, so a
    BG/NBD fit on them alone runs to the edge of the plausible range and is refused)."""
    from stream_app.cli.publish import event_key
    from stream_app.simulate import simulate

    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    records: list[tuple[bytes, bytes]] = []
    marks: list[tuple[str, int]] = []
    seen: set[str] = set()
    for event in simulate(customers=customers, days=days, seed=seed, start=start):
        key = event_key(event)
        assert key is not None
        records.append((key, orjson.dumps(event)))
        marks.append((key.decode(), _event_ms(event["timestamp"])))
        seen.add(key.decode())
        if len(records) >= events:
            break
    if len(records) < events:
        raise SystemExit(f"the simulation gave only {len(records)} events: raise --customers "
                         "or --days")
    if buyers:
        import numpy as np

        from stream_app.core.predictive import BgNbdParams, GammaGammaParams
        from stream_app.core.predictive.simulate import order_events

        orders = order_events(buyers, start.timestamp(), days, BgNbdParams(0.8, 20.0, 0.8, 4.0),
                              GammaGammaParams(6.0, 4.0, 15.0), np.random.default_rng(seed))
        merged = sorted([*zip(marks, records, strict=True),
                         *(((str(e["userId"]), _event_ms(str(e["timestamp"]))),
                            (str(e["userId"]).encode(), orjson.dumps(e))) for e in orders)],
                        key=lambda pair: pair[0][1])
        marks = [m for m, _ in merged]
        records = [r for _, r in merged]
        seen.update(str(e["userId"]) for e in orders)
    return Workload(records, marks, len(seen))


def many_customers(base: Workload, customers: int, per_customer: int) -> Workload:
    """``customers`` distinct customers, each with the first events of a simulated one."""
    histories: dict[str, list[dict[str, Any]]] = {}
    for key, value in base.records:
        h = histories.setdefault(key.decode(), [])
        if len(h) < per_customer:
            h.append(orjson.loads(value))
    templates = [h for h in histories.values() if len(h) == per_customer] or list(
        histories.values())
    records: list[tuple[bytes, bytes]] = []
    for i in range(customers):
        cid = f"rss-{i:07d}"
        for j, event in enumerate(templates[i % len(templates)]):
            e = {**event, "messageId": f"{cid}:{j}", "userId": cid}
            if "anonymousId" in e:
                e["anonymousId"] = f"{cid}-d"
            records.append((cid.encode(), orjson.dumps(e)))
    return Workload(records, [], customers)


# --- broker helpers -----------------------------------------------------------------------------

def settings_env(bootstrap: str, app_id: str, partitions: int, data_dir: Path,
                 **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env.update({
        "SEGMENTER_BROKER_URL": f"kafka://{bootstrap}",
        "SEGMENTER_APP_ID": app_id,
        "SEGMENTER_PARTITIONS": str(partitions),
        "SEGMENTER_DATA_DIR": str(data_dir),
        "SEGMENTER_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"SEGMENTER_{k.upper()}": v for k, v in extra.items()})
    return env


def load_settings_from(env: dict[str, str]) -> Any:
    from stream_app.config import load_settings

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def preload(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]],
                  timestamps: bool = False) -> dict[int, int]:
    """Produce ``records``; return each partition's end offset (from the acks, not the broker's
    ListOffsets answer, which the embedded broker gets wrong)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                for meta in await asyncio.gather(*pending):
                    ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                pending = []
        for meta in await asyncio.gather(*pending):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


def _create_internal_topics(settings: Any) -> None:
    """What Faust would create for the worker: the tables' changelogs and the training topic."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        compact = {"cleanup.policy": "compact"}
        wanted = [
            NewTopic(f"{settings.app_id}-customers-changelog", settings.partitions, 1,
                     topic_configs=compact),
            NewTopic(getattr(settings, "training_topic", f"{settings.app_id}-training"), 1, 1)]
        existing = set(admin.list_topics())
        admin.create_topics([t for t in wanted if t.name not in existing])
    finally:
        admin.close()


async def committed(admin: Any, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (0 while the group is not there).

    kafka-python's admin client, in a thread: aiokafka's cannot read the embedded broker's
    OffsetFetch answer (it fails to decode and retries forever).
    """
    def fetch() -> int:
        try:
            if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
                offsets = admin.list_group_offsets(group).get(group, {})
            else:  # kafka-python 2.x
                offsets = admin.list_consumer_group_offsets(group)
        except Exception:  # rebalancing, coordinator busy: not yet
            return 0
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)

    return await asyncio.get_running_loop().run_in_executor(None, fetch)


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[Any]:
    from kafka.admin import KafkaAdminClient

    loop = asyncio.get_running_loop()
    admin = await loop.run_in_executor(None, lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap))
    try:
        yield admin
    finally:
        await loop.run_in_executor(None, admin.close)


# --- processes ----------------------------------------------------------------------------------

@dataclass
class Proc:
    """A worker or the baseline loop, as a child process, with its progress counters."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None  # worker web port (None: the baseline, which prints progress)
    proc: subprocess.Popen[bytes] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    ps: psutil.Process | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        stdout = subprocess.PIPE if self.port is None else out
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=stdout, stderr=out,
                                     start_new_session=True, cwd=ROOT)
        out.close()
        self.ps = psutil.Process(self.proc.pid)
        return self

    def cpu(self) -> float:
        try:
            assert self.ps is not None
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def rss(self) -> int:
        try:
            assert self.ps is not None
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def worker_proc(name: str, env: dict[str, str], logdir: Path) -> Proc:
    port = free_port()
    env = {**env, "SEGMENTER_WEB_PORT": str(port)}
    return Proc(name, [sys.executable, "-m", "stream_app", "worker"], env,
                logdir / f"{name}.log", port)


async def poll_worker(session: aiohttp.ClientSession, p: Proc) -> None:
    t0 = time.time()
    try:
        async with session.get(f"http://127.0.0.1:{p.port}/health",
                               timeout=aiohttp.ClientTimeout(total=2)) as r:
            doc = await r.json()
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return
    stats = doc.get("stats", {})
    p.progress = {"t": (t0 + time.time()) / 2, "messages": stats.get("messages", 0),
                  "routed": stats.get("routed", 0), "applied": stats.get("applied", 0),
                  "changes": stats.get("changes", 0), "ready": doc.get("status") == "ok",
                  "assigned": doc.get("assigned_partitions", []),
                  "rebalancing": doc.get("rebalancing", False)}


async def read_progress(p: Proc) -> None:
    """The baseline prints one JSON line of counters every POLL_S."""
    assert p.proc is not None and p.proc.stdout is not None
    loop = asyncio.get_running_loop()
    stdout = p.proc.stdout
    while True:
        line = await loop.run_in_executor(None, stdout.readline)
        if not line:
            return
        with contextlib.suppress(ValueError):
            p.progress = {**orjson.loads(line), "ready": True}


@dataclass
class Sample:
    t: float
    messages: list[int]  # per process
    routed: int
    committed: int
    cpu: list[float]  # per process, seconds
    broker_cpu: float
    settled: bool  # every process ready, not rebalancing, all partitions assigned


async def watch(procs: list[Proc], broker: EmbeddedBroker, admin: Any, group: str,
                topic: str, expected: int, partitions: int, timeout: float) -> list[Sample]:
    """Sample progress until every message is processed and committed (or ``timeout``)."""
    broker_ps = psutil.Process(broker.pid) if broker.pid else None
    samples: list[Sample] = []
    deadline = time.time() + timeout
    async with aiohttp.ClientSession() as session:
        while time.time() < deadline:
            await asyncio.gather(*(poll_worker(session, p) for p in procs if p.port))
            done = await committed(admin, group, topic)
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited:\n{p.tail()}")
            assigned = {x for p in procs for x in p.progress.get("assigned", [])}
            s = Sample(
                t=time.time(),
                messages=[int(p.progress.get("messages", 0)) for p in procs],
                routed=sum(int(p.progress.get("routed", 0)) for p in procs),
                committed=done,
                cpu=[p.cpu() for p in procs],
                broker_cpu=_cpu(broker_ps),
                settled=all(p.progress.get("ready") and not p.progress.get("rebalancing")
                            for p in procs) and (procs[0].port is None
                                                 or len(assigned) == partitions),
            )
            # progress timestamps: the processes' own (midpoint of the /health request, or the
            # baseline's clock when it printed the line)
            s.t = max((float(p.progress["t"]) for p in procs if "t" in p.progress),
                      default=s.t)
            samples.append(s)
            if done >= expected and sum(s.messages) >= expected + s.routed:
                return samples
            await asyncio.sleep(POLL_S)
    raise TimeoutError(f"not drained in {timeout:.0f}s: {samples[-1] if samples else None}")


def _cpu(ps: psutil.Process | None) -> float:
    if ps is None:
        return 0.0
    try:
        t = ps.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


@dataclass
class Drain:
    system: str
    workers: int
    events: int
    seconds: float  # first progress -> last effect
    seconds_to_commit: float
    ev_s: float
    ev_s_to_commit: float
    steady_ev_s: float  # while every process is busy and the group has settled
    cpu_s: float  # processes' CPU seconds over the drain
    broker_cpu_s: float
    ev_per_cpu_s: float


def analyse(system: str, samples: list[Sample], expected: int) -> Drain:
    total = [sum(s.messages) for s in samples]
    first = next(i for i, n in enumerate(total) if n > 0)
    start = samples[max(first - 1, 0)].t if first else samples[0].t
    start = (start + samples[first].t) / 2  # progress began between these two samples
    effects = next(i for i, s in enumerate(samples) if sum(s.messages) >= expected + s.routed)
    end = samples[effects].t
    commit_end = samples[-1].t
    seconds = max(end - start, 1e-6)
    # steady rate: all processes progressing, group settled, until the first one runs dry
    steady = _steady_rate(samples)
    cpu = sum(samples[effects].cpu) - sum(samples[max(first - 1, 0)].cpu)
    broker = samples[effects].broker_cpu - samples[max(first - 1, 0)].broker_cpu
    return Drain(system, len(samples[0].messages), expected, round(seconds, 3),
                 round(commit_end - start, 3), expected / seconds,
                 expected / max(commit_end - start, 1e-6), steady, round(cpu, 2),
                 round(broker, 2), expected / max(cpu, 1e-6))


def _steady_rate(samples: list[Sample]) -> float:
    """The rate between 10 % and 90 % of the drain (start-up, group joins and the tail left
    out), read at samples where every process was ready and the group settled."""
    settled = [s for s in samples if s.settled]
    if len(settled) < 2:
        return 0.0
    total = sum(settled[-1].messages)
    if total <= 0:
        return 0.0
    a = next((s for s in settled if sum(s.messages) >= 0.1 * total), None)
    b = next((s for s in settled if sum(s.messages) >= 0.9 * total), None)
    if a is None or b is None or b.t - a.t < 1.0:
        return 0.0
    return (sum(b.messages) - sum(a.messages)) / (b.t - a.t)


# --- phases -------------------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    workload: Workload
    results: dict[str, Any] = field(default_factory=dict)
    _model: Path | None = None

    def model(self) -> Path:
        """A behaviour snapshot trained on the workload, for the step and the baseline (made
        once): they score every event as a worker with a trained model does. (The worker
        trains its own, in its own process, as in production: scoring starts once its model
        has learned enough, and the trainer's work is part of the worker's.)"""
        if self._model is None:
            self._model = self.workdir / "model.json"
            self._model.write_bytes(orjson.dumps(_train_snapshot(self)))
        return self._model


def _train_snapshot(ctx: Context) -> dict[str, Any]:
    from stream_app.core.segmentation.clustering import Trainer, TrainerSettings

    settings = load_settings_from(settings_env("127.0.0.1:9", "bench", ctx.args.partitions,
                                               ctx.workdir / "model", **dict(ctx.args.setting)))
    step = _make_step(settings)
    samples: list[dict[str, Any]] = []
    now = time.time()
    for batch in _step_batches(ctx, settings, now).values():
        customers: dict[str, Any] = {}
        for p, msgs in batch:
            samples += step.run(p, msgs, customers, now).samples
    trainer = Trainer(TrainerSettings(algorithm=settings.cluster_model.value,
                                      clusters=settings.clusters,
                                      predictions=settings.predictions))
    for feats in samples:
        trainer.learn(feats)
    snapshot = trainer.maybe_snapshot(now)
    if snapshot is None:
        raise SystemExit("too few training samples in the workload for a model: raise --events")
    return snapshot


def _step_batches(ctx: Context, settings: Any, now: float
                  ) -> dict[int, list[tuple[int, list[Any]]]]:
    """The workload as the worker sees it when draining: per partition, batches of up to
    ``batch_size / partitions`` messages."""
    from stream_app.core.processing import Message
    from stream_app.core.routing import partition_for

    by_partition: dict[int, list[Message]] = {}
    for i, (key, value) in enumerate(ctx.workload.records):
        p = partition_for(key.decode(), settings.partitions)
        by_partition.setdefault(p, []).append(
            Message(settings.input_topic, p, i, key, value, now))
    per_batch = max(1, settings.batch_size // settings.partitions)
    return {p: [(p, msgs[i:i + per_batch]) for i in range(0, len(msgs), per_batch)]
            for p, msgs in by_partition.items()}


def _load_model(step: Any, path: Path) -> None:
    """Score with the snapshot at ``path`` from the first event on."""
    behavior = next((seg for seg in step.segmentations if seg.name == "behavior"), None)
    if behavior is not None:
        behavior.min_learned = 0
        snapshot = orjson.loads(path.read_bytes())
        behavior.load(snapshot)
        if step.predictions is not None:  # and predict with its BG/NBD and Gamma-Gamma fits
            step.predictions.load(snapshot.get("predictive"), snapshot["version"])


def step_phase(ctx: Context) -> dict[str, Any]:
    """The pure step alone, in this process, on the same workload: no Kafka at all.

    The worker and the baseline loop both run this step; its rate is the ceiling for any
    Kafka loop doing the same work on one core."""

    settings = load_settings_from(settings_env("127.0.0.1:9", "bench", ctx.args.partitions,
                                               ctx.workdir / "step", **dict(ctx.args.setting)))
    step = _make_step(settings)
    _load_model(step, ctx.model())
    now = time.time()
    batches = _step_batches(ctx, settings, now)
    changes = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for p, partition_batches in batches.items():
        customers: dict[str, Any] = {}
        for _, msgs in partition_batches:
            changes += len(step.run(p, msgs, customers, now).changes)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(ctx.workload.records)
    predicting = step.predictions is not None and step.predictions.ready
    out = {"events": n, "changes": changes, "cpu_s": round(cpu, 2), "seconds": round(wall, 2),
           "ev_per_cpu_s": round(n / max(cpu, 1e-9)), "us_per_event": round(1e6 * cpu / n, 1),
           "predictions": predicting}
    print(f"  step       {out['ev_per_cpu_s']:9,} ev per CPU-s ({out['us_per_event']} µs an "
          f"event, {changes:,} changes; predictions {'on' if predicting else 'off'}; no Kafka)",
          flush=True)
    return out


def _make_step(s: Any) -> Any:
    """The worker's step, built from settings by the core as the worker builds it."""
    from stream_app.core.pipeline import Pipeline
    from stream_app.core.segmentation.registry import build_segmentations

    return Pipeline(s, build_segmentations(s)).step


async def drain_phase(ctx: Context, system: str, workers: int = 1) -> Drain:
    """Preload the workload, then start the system and time it until drained."""
    args = ctx.args
    tag = f"{system}{workers if system == 'worker' else ''}"
    run_dir = ctx.workdir / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        app_id = f"bench-{uuid.uuid4().hex[:6]}"
        env = settings_env(broker.bootstrap, app_id, args.partitions, run_dir / "data",
                           **dict(args.setting))
        settings = load_settings_from(env)
        from stream_app.host.clients import ensure_topics

        ensure_topics(settings)
        ends = await preload(broker.bootstrap, settings.input_topic, ctx.workload.records)
        expected = sum(ends.values())
        if system == "baseline":
            group = f"{app_id}-baseline"
            _create_internal_topics(settings)
            procs = [Proc("baseline", [sys.executable, str(Path(__file__).resolve()),
                                       "--role", "baseline", "--group", group,
                                       "--model", str(ctx.model())],
                          env, run_dir / "baseline.log")]
        else:
            group = app_id
            procs = [worker_proc(f"worker-{i}", env, run_dir) for i in range(workers)]
        for p in procs:
            p.start()
        readers = [asyncio.create_task(read_progress(p)) for p in procs if p.port is None]
        try:
            async with admin_client(broker.bootstrap) as admin:
                samples = await watch(procs, broker, admin, group, settings.input_topic,
                                      expected, args.partitions, timeout=args.timeout)
            result = analyse(tag, samples, expected)
            if system == "worker" and workers == 1:
                ctx.results["store"] = await store_sizes(broker.bootstrap, app_id)
            if system == "baseline":
                ctx.results["baseline_store"] = procs[0].progress.get("store")
        finally:
            for p in procs:
                p.stop()
            for task in readers:
                task.cancel()
    print(f"  {tag:10s} {result.ev_s:9,.0f} ev/s drained in {result.seconds:6.2f}s "
          f"(to commit {result.ev_s_to_commit:,.0f} ev/s; steady {result.steady_ev_s:,.0f}; "
          f"{result.ev_per_cpu_s:,.0f} ev per CPU-s)", flush=True)
    return result


async def store_sizes(bootstrap: str, app_id: str) -> dict[str, Any]:
    """Sizes of the customers' encoded states as the store holds them: the last value of
    each key of the table's changelog."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = f"{app_id}-customers-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    sizes: dict[bytes, int] = {}
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    if r.value:
                        sizes[r.key] = len(r.value)
                    else:
                        sizes.pop(r.key, None)
    finally:
        await consumer.stop()
    return _size_summary(list(sizes.values()))


def _size_summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"customers": 0}
    values.sort()
    return {"customers": len(values), "mean": round(statistics.fmean(values)),
            "p50": values[len(values) // 2], "p99": values[min(len(values) - 1,
                                                               int(len(values) * 0.99))],
            "max": values[-1]}


async def latency_phase(ctx: Context, rate: float) -> dict[str, Any]:
    """Produce at ``rate`` into a running worker; time input record -> segment change."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from stream_app.core.routing import partition_for

    args = ctx.args
    run_dir = ctx.workdir / f"latency-{rate:.0f}"
    run_dir.mkdir(parents=True, exist_ok=True)
    records, marks = ctx.workload.records, ctx.workload.marks
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        broker_ps = psutil.Process(broker.pid) if broker.pid else None
        env = settings_env(broker.bootstrap, f"bench-{uuid.uuid4().hex[:6]}", args.partitions,
                           run_dir / "data", **dict(args.setting))
        settings = load_settings_from(env)
        from stream_app.host.clients import ensure_topics

        ensure_topics(settings)
        worker = worker_proc("worker", env, run_dir).start()
        try:
            await _wait_ready(worker)
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                                        # the measuring consumer's own wait is in every
                                        # figure: kept short
                                        enable_auto_commit=False, fetch_max_wait_ms=5)
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1,
                                        acks=1)
            await consumer.start()
            await producer.start()
            sent: dict[tuple[str, int], float] = {}
            # (customer id, occurred_at as the worker wrote it) -> first arrival, record time;
            # parsed into event times after the run, not on these shared cores meanwhile
            seen: dict[tuple[str, str], tuple[float, float]] = {}
            try:
                tps = [TopicPartition(settings.changes_topic, p)
                       for p in range(args.partitions)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                stop = asyncio.Event()

                async def consume() -> None:
                    while not stop.is_set():
                        batch = await consumer.getmany(timeout_ms=50)
                        now = time.time()
                        for recs in batch.values():
                            for r in recs:
                                doc = orjson.loads(r.value)
                                key = (doc["customer_id"], doc["occurred_at"])
                                if key not in seen:
                                    seen[key] = (now, r.timestamp / 1000.0)

                reader = asyncio.create_task(consume())
                broker_by_second: list[float] = []

                async def sample_broker() -> None:
                    # the embedded broker's CPU grows with the record batches it holds
                    # (README, "Guarantees, and what the embedded broker changes")
                    last = _cpu(broker_ps)
                    while not stop.is_set():
                        await asyncio.sleep(1.0)
                        now_cpu = _cpu(broker_ps)
                        broker_by_second.append(round(now_cpu - last, 2))
                        last = now_cpu

                sampler = asyncio.create_task(sample_broker())
                duration = args.latency_seconds
                n = min(len(records), int(rate * duration))
                started = time.time()
                cpu_at_start = (worker.cpu(), _cpu(broker_ps), time.process_time())
                tick = args.latency_linger_ms / 1000.0
                i = 0
                next_burst = started
                while i < n:
                    # A burst at most every `tick` (a client's linger.ms), then what is due by
                    # then, timestamped with the moment it is handed over, as one record
                    # batch per partition (as a busy client's producer sends them). Each
                    # produce request costs the embedded broker ~1 ms of CPU on the worker's
                    # cores; a send per record cost more CPU than the worker.
                    delay = max(next_burst, started + i / rate) - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_burst = time.time() + tick
                    burst_end = min(n, int((time.time() - started) * rate) + 1)
                    now = time.time()
                    by_partition: dict[int, Any] = {}
                    for j in range(i, burst_end):
                        key, value = records[j]
                        part = partition_for(key.decode(), args.partitions)
                        batch = by_partition.get(part)
                        if batch is None:
                            batch = by_partition[part] = producer.create_batch()
                        if batch.append(key=key, value=value,
                                        timestamp=int(now * 1000)) is None:
                            await producer.send_batch(batch, settings.input_topic,
                                                      partition=part)
                            batch = by_partition[part] = producer.create_batch()
                            batch.append(key=key, value=value, timestamp=int(now * 1000))
                        sent.setdefault(marks[j], now)
                    for part, batch in by_partition.items():
                        await producer.send_batch(batch, settings.input_topic, partition=part)
                    i = burst_end
                await producer.flush()
                produced_for = time.time() - started
                # CPU while producing: what the worker, the broker and this driver (producer
                # and change consumer) took of the machine's cores
                shares = [round((now - then) / produced_for, 2) for now, then in zip(
                    (worker.cpu(), _cpu(broker_ps), time.process_time()), cpu_at_start,
                    strict=True)]
                await asyncio.sleep(3.0)  # trailing changes
                stop.set()
                await reader
                await sampler
                cpu = worker.cpu()
            finally:
                await producer.stop()
                await consumer.stop()
        finally:
            worker.stop()
    arrivals: dict[tuple[str, int], tuple[float, float]] = {}
    for (cid, occurred), first in seen.items():
        arrivals.setdefault((cid, _event_ms(occurred)), first)
    warm = started + min(3.0, duration / 4)
    lat_arrival = sorted((arrivals[k][0] - t) * 1000 for k, t in sent.items()
                         if k in arrivals and t >= warm)
    lat_record = sorted((arrivals[k][1] - t) * 1000 for k, t in sent.items()
                        if k in arrivals and t >= warm)
    # p99 of each second of input: a steady tail, or spikes?
    by_second: dict[int, list[float]] = {}
    for k, t in sent.items():
        if k in arrivals and t >= warm:
            by_second.setdefault(int(t - started), []).append((arrivals[k][0] - t) * 1000)
    timeline = [round(_percentiles(sorted(v))["p99"]) for _, v in sorted(by_second.items())]
    out = {"rate_ev_s": round(rate), "events": n, "seconds": duration,
           "with_change": len(lat_arrival), "worker_cpu_s": round(cpu, 1),
           "p99_ms_by_second": timeline, "broker_cores_by_second": broker_by_second,
           "cpu_cores": dict(zip(("worker", "broker", "driver"), shares, strict=True)),
           "arrival_ms": _percentiles(lat_arrival), "record_ts_ms": _percentiles(lat_record)}
    p = out["arrival_ms"]
    c = out["cpu_cores"]
    print(f"  latency at {rate:,.0f} ev/s: p50 {p.get('p50', 0):.1f} ms, p99 "
          f"{p.get('p99', 0):.1f} ms, max {p.get('max', 0):.1f} ms ({len(lat_arrival)} events "
          f"with a change); cores busy: worker {c['worker']}, broker {c['broker']}, driver "
          f"{c['driver']}; p99 by second: {timeline}; broker cores by second: "
          f"{broker_by_second}", flush=True)
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def q(f: float) -> float:
        return round(values[min(len(values) - 1, int(f * len(values)))], 1)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(values[-1], 1)}


async def _wait_ready(p: Proc, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    async with aiohttp.ClientSession() as session:
        while time.time() < deadline:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited:\n{p.tail()}")
            await poll_worker(session, p)
            if p.progress.get("ready"):
                return
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{p.name} not ready in {timeout:.0f}s:\n{p.tail()}")


async def rss_phase(ctx: Context) -> dict[str, Any]:
    """Worker RSS with the rocksdb store as customers accumulate; a straight-line fit of RSS
    against customers stored, extrapolated to 1M."""
    args = ctx.args
    wl = many_customers(ctx.workload, args.rss_customers, args.rss_events_per_customer)
    run_dir = ctx.workdir / "rss"
    run_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        env = settings_env(broker.bootstrap, f"bench-{uuid.uuid4().hex[:6]}", args.partitions,
                           run_dir / "data", STORE="rocksdb", **dict(args.setting))
        settings = load_settings_from(env)
        from stream_app.host.clients import ensure_topics

        ensure_topics(settings)
        worker = worker_proc("worker", env, run_dir).start()
        try:
            await _wait_ready(worker)
            idle_rss = worker.rss()
            ends = await preload(broker.bootstrap, settings.input_topic, wl.records)
            expected = sum(ends.values())
            points: list[tuple[int, int]] = []  # (customers stored, rss)
            peak = idle_rss
            deadline = time.time() + args.timeout
            async with aiohttp.ClientSession() as session:
                while time.time() < deadline:
                    await poll_worker(session, worker)
                    if not worker.alive():
                        raise RuntimeError(f"worker exited:\n{worker.tail()}")
                    applied = int(worker.progress.get("applied", 0))
                    rss = worker.rss()
                    peak = max(peak, rss)
                    points.append((applied // args.rss_events_per_customer, rss))
                    if int(worker.progress.get("messages", 0)) >= expected + int(
                            worker.progress.get("routed", 0)):
                        break
                    await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)
            final = worker.rss()
            disk = sum(f.stat().st_size for f in (run_dir / "data").rglob("*") if f.is_file())
        finally:
            worker.stop()
    # fit over the second half (the first includes start-up growth of caches and buffers)
    pts = [(c, r) for c, r in points if c >= args.rss_customers // 2] or points
    slope = _slope(pts)
    customers = args.rss_customers
    out = {"customers": customers, "events": len(wl.records), "idle_rss_mib": _mib(idle_rss),
           "final_rss_mib": _mib(final), "peak_rss_mib": _mib(peak),
           "bytes_per_customer_slope": round(slope),
           "extrapolated_1m_mib": _mib(final + slope * (1_000_000 - customers)),
           "disk_mib": _mib(disk)}
    print(f"  rocksdb: {customers:,} customers -> RSS {out['final_rss_mib']} MiB (peak "
          f"{out['peak_rss_mib']}), +{slope:,.0f} B per customer -> 1M: "
          f"{out['extrapolated_1m_mib']} MiB", flush=True)
    return out


def _slope(points: list[tuple[int, int]]) -> float:
    if len(points) < 2:
        return 0.0
    xs = [float(c) for c, _ in points]
    ys = [float(r) for _, r in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _mib(n: float) -> float:
    return round(n / 1024**2, 1)


# --- the baseline loop (child process) ----------------------------------------------------------

async def baseline_loop(group: str, model: Path | None) -> None:
    """consume -> Step (dict state) -> produce -> commit, as plainly as aiokafka allows."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from stream_app.config import load_settings
    from stream_app.core.pipeline import Pipeline
    from stream_app.core.processing import DELETED, Message
    from stream_app.core.segmentation.registry import build_segmentations
    from stream_app.core.state import codec
    from stream_app.host.batching import OutputBatcher
    from stream_app.host.clients import aiokafka_config

    s = load_settings()
    # the worker's core, as the worker builds it: this loop is a second host of it
    pipeline = Pipeline(s, build_segmentations(s))
    if model is not None:
        _load_model(pipeline.step, model)
    conf = aiokafka_config(s)
    consumer = AIOKafkaConsumer(s.input_topic, s.routed_topic, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=1024**2, **conf)
    producer = AIOKafkaProducer(acks="all", linger_ms=5, max_batch_size=16384, **conf)
    await consumer.start()
    await producer.start()
    customers: dict[int, dict[str, Any]] = {}
    cl_customers = f"{s.app_id}-customers-changelog"
    stats = {"messages": 0, "routed": 0, "applied": 0, "changes": 0}
    positions: dict[Any, int] = {}
    last_commit = last_print = time.time()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    def report() -> None:
        sizes = [len(codec.dumps(st)) for table in customers.values() for st in table.values()]
        print(orjson.dumps({"t": time.time(), **stats, "store": _size_summary(sizes)
                            if stop.is_set() else None}).decode(), flush=True)

    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=s.batch_size)
            wall = time.time()
            out = OutputBatcher()
            for tp, records in batch.items():
                p = tp.partition
                msgs = [Message(r.topic, p, r.offset, r.key, r.value, r.timestamp / 1000.0)
                        for r in records]
                table = customers.setdefault(p, {})
                done = pipeline.run(p, msgs, table, wall)
                # every output of the batch as one record batch per partition, as the
                # worker; then the state and its changelog (the worker writes those only
                # once the outputs are acknowledged: here they go in the same request)
                out.extend(done.outputs)
                for key, entry in done.writes.items():
                    if entry is DELETED:
                        table.pop(key, None)
                        out.add(cl_customers, key.encode(), None, p)
                    else:
                        table[key] = entry
                        out.add(cl_customers, key.encode(), codec.dumps(entry), p)
                result = done.result
                positions[TopicPartition(tp.topic, p)] = records[-1].offset + 1
                stats["messages"] += len(records)
                stats["routed"] += len(result.routed)
                stats["applied"] += result.applied
                stats["changes"] += len(result.changes)
            await out.send(producer)
            now = time.time()
            if positions and now - last_commit >= 1.0:  # Faust's broker_commit_interval
                await producer.flush()  # effects first, then the offsets
                await consumer.commit({tp: OffsetAndMetadata(off, "")
                                       for tp, off in positions.items()})
                positions.clear()
                last_commit = now
            if now - last_print >= POLL_S:
                report()
                last_print = now
    finally:
        report()
        await producer.stop()
        await consumer.stop()


# --- report -------------------------------------------------------------------------------------

def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, required, met) for each target that was measured."""
    out: list[tuple[str, str, str, bool | None]] = []
    w1, base = r.get("worker1"), r.get("baseline")
    if w1:
        out.append(("throughput, one worker, single-event messages",
                    f"{w1['ev_s']:,.0f} ev/s", f">= {TARGETS['throughput_ev_s']:,} ev/s",
                    w1["ev_s"] >= TARGETS["throughput_ev_s"]))
    st = r.get("step")
    if w1 and st:
        out.append(("worker / pure step per CPU second (Kafka and framework share)",
                    f"{w1['ev_per_cpu_s'] / st['ev_per_cpu_s']:.2f}", "", None))
    if w1 and base:
        ratio = w1["ev_s"] / base["ev_s"]
        out.append(("worker / plain aiokafka loop (same run)", f"{ratio:.2f}",
                    f">= {TARGETS['baseline_ratio']}", ratio >= TARGETS["baseline_ratio"]))
    lat = r.get("latency")
    if lat and lat["arrival_ms"]:
        p99 = lat["arrival_ms"]["p99"]
        out.append((f"p99 latency at {lat['rate_ev_s']:,} ev/s", f"{p99:.0f} ms",
                    f"<= {TARGETS['p99_latency_ms']:.0f} ms", p99 <= TARGETS["p99_latency_ms"]))
    store = r.get("store")
    if store and store.get("customers"):
        out.append(("state per customer in the store (mean / max)",
                    f"{store['mean']} / {store['max']} B",
                    f"<= {TARGETS['store_bytes_per_customer']} B",
                    store["max"] <= TARGETS["store_bytes_per_customer"]))
    rss = r.get("rss")
    if rss:
        measured = rss["customers"] >= 1_000_000
        est = (max(rss["final_rss_mib"], rss["peak_rss_mib"]) if measured
               else rss["extrapolated_1m_mib"]) * 1024**2
        out.append((f"rocksdb RSS at 1M customers (measured at {rss['customers']:,})",
                    f"{est / 1024**2:,.1f} MiB ({'peak, measured' if measured else 'extrapolated'})",
                    "<= 1024 MiB", est <= TARGETS["rss_1m_customers_bytes"]))
    w2 = r.get("worker2")
    if w1 and w2 and w1["steady_ev_s"]:
        eff = w2["steady_ev_s"] / (2 * w1["steady_ev_s"])
        out.append(("scale-out: 2 workers vs 2 x one worker (steady rates)", f"{eff:.2f}",
                    f">= {TARGETS['scale_efficiency']}", eff >= TARGETS["scale_efficiency"]))
    return out


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
             f"load average at start {m['load_avg_at_start']}; Python {m['python']}, "
             f"faust {m['faust']}, aiokafka {m['aiokafka']}; broker: embedded Tansu on the "
             "same machine.", "",
             f"Workload: {r['workload']['events']:,} single-event messages from "
             f"{r['workload']['customers']:,} simulated customers, {r['args']['partitions']} "
             f"partitions; settings {r['args']['setting'] or 'default'}."]
    if any(r.get(k) for k in ("step", "baseline", "worker1", "worker2")):
        lines += ["", "| system | drained in | ev/s (to last effect) | ev/s (to commit) | "
                  "steady ev/s | process CPU s | broker CPU s | ev per CPU-s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    st = r.get("step")
    if st:
        lines.append(f"| pure step, no Kafka (in the driver) | {st['seconds']:.2f} s | "
                     f"{st['events'] / max(st['seconds'], 1e-9):,.0f} | | | {st['cpu_s']} | | "
                     f"{st['ev_per_cpu_s']:,.0f} |")
    for key in ("baseline", "worker1", "worker2"):
        d = r.get(key)
        if d:
            lines.append(f"| {d['system']} | {d['seconds']:.2f} s | {d['ev_s']:,.0f} | "
                         f"{d['ev_s_to_commit']:,.0f} | {d['steady_ev_s']:,.0f} | {d['cpu_s']} | "
                         f"{d['broker_cpu_s']} | {d['ev_per_cpu_s']:,.0f} |")
    lat = r.get("latency")
    if lat:
        a, b = lat["arrival_ms"], lat["record_ts_ms"]
        lines += ["", f"Latency at {lat['rate_ev_s']:,} ev/s for {lat['seconds']} s "
                  f"({lat['with_change']:,} input events with a segment change):", "",
                  "| input produced -> | p50 | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |",
                  f"| change arrives at a consumer | {a.get('p50')} ms | {a.get('p90')} ms | "
                  f"{a.get('p99')} ms | {a.get('max')} ms |",
                  f"| change record timestamp | {b.get('p50')} ms | {b.get('p90')} ms | "
                  f"{b.get('p99')} ms | {b.get('max')} ms |"]
        c = lat.get("cpu_cores")
        if c:
            lines += ["", f"Cores busy while producing: worker {c['worker']}, broker "
                      f"{c['broker']}, driver (producer and change consumer) {c['driver']}."]
    curve = r.get("latency_curve")
    if curve:
        lines += ["", "Latency against the input rate (each a fresh broker and worker; cores "
                  "busy while producing, of the machine's "
                  f"{m['cores']}):", "",
                  "| input ev/s | p50 | p99 | max | worker cores | broker cores | driver cores |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for d in curve:
            a, c = d["arrival_ms"], d["cpu_cores"]
            lines.append(f"| {d['rate_ev_s']:,} | {a.get('p50')} ms | {a.get('p99')} ms | "
                         f"{a.get('max')} ms | {c['worker']} | {c['broker']} | {c['driver']} |")
    store = r.get("store")
    if store and store.get("customers"):
        lines += ["", f"State in the store (customers changelog, last value per key, "
                  f"{store['customers']:,} customers): mean {store['mean']} B, p50 "
                  f"{store['p50']} B, p99 {store['p99']} B, max {store['max']} B."]
    rss = r.get("rss")
    if rss:
        lines += ["", f"RocksDB store: {rss['customers']:,} customers ({rss['events']:,} events):"
                  f" worker RSS {rss['idle_rss_mib']} MiB idle -> {rss['final_rss_mib']} MiB "
                  f"(peak {rss['peak_rss_mib']} MiB), {rss['bytes_per_customer_slope']:,} B "
                  f"per additional customer over the second half"
                  + ("" if rss["customers"] >= 1_000_000 else
                     f" -> {rss['extrapolated_1m_mib']:,} MiB at 1M (straight-line "
                     "extrapolation)") + f"; {rss['disk_mib']} MiB on disk."]
    extra = []
    if r.get("collector"):
        lines += phase_module("collector").markdown_lines(r["collector"])
        extra = phase_module("collector").verdicts(r["collector"])
    lines += ["", "| target | measured | required | met |", "| --- | --- | --- | --- |"]
    for name, got, need, ok in verdicts(r) + extra:
        met = "" if ok is None else "yes" if ok else "no"
        lines.append(f"| {name} | {got} | {need} | {met} |")
    return "\n".join(lines)


def phase_module(name: str) -> Any:
    """``bench/<name>.py``: a phase kept in a file of its own (loaded once)."""
    import importlib.util

    key = f"segmenter_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events preloaded per drain")
    ap.add_argument("--customers", type=int, default=10_000, help="simulated customers")
    ap.add_argument("--days", type=float, default=60.0, help="days of simulated history")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--buyers", type=int, default=0,
                    help="add this many customers whose orders follow BG/NBD + Gamma-Gamma "
                         "(for the predictions to have a valid fit)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--phases", default="step,baseline,worker1,worker2,latency,rss",
                    help="comma-separated subset of step,baseline,worker1,worker2,latency,rss,"
                         "collector (the HTTP collector: bench/collector.py)")
    ap.add_argument("--collector-seconds", type=float, default=10.0,
                    help="collector phase: seconds per measurement")
    ap.add_argument("--collector-clients", type=int, default=16,
                    help="collector phase: concurrent HTTP clients")
    ap.add_argument("--collector-processes", type=int, default=1,
                    help="collector phase: collector processes sharing one port")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--latency-rate", type=float, default=0.0,
                    help="events/s for the latency phase (default: half worker1's throughput)")
    ap.add_argument("--latency-linger-ms", type=float, default=20.0,
                    help="the latency phase's producer sends what is due every this many ms "
                         "(a producer's linger.ms; each request costs the embedded broker, on "
                         "the worker's cores, ~1 ms of CPU)")
    ap.add_argument("--latency-also", default="",
                    help="comma-separated further rates (ev/s) for the latency phase: a curve")
    ap.add_argument("--rss-customers", type=int, default=100_000)
    ap.add_argument("--rss-events-per-customer", type=int, default=3)
    ap.add_argument("--set", dest="setting", action="append", default=[],
                    type=lambda kv: tuple(kv.split("=", 1)),
                    help="worker setting for every phase, e.g. --set batch_size=4000 "
                         "(SEGMENTER_BATCH_SIZE)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    ap.add_argument("--keep", action="store_true",
                    help="keep the phases' logs and data (their folder is printed)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--markdown", type=Path, help="write the tables here")
    ap.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict[str, Any] = {"machine": machine(), "args": {
        k: v for k, v in vars(args).items() if k not in ("json", "markdown", "role", "group")}}
    results["args"]["setting"] = dict(args.setting)
    print(f"segmenter bench: {results['machine']['date']}, {results['machine']['cores']} cores "
          f"({results['machine']['cpu']}), load {results['machine']['load_avg_at_start']}",
          flush=True)
    t = time.perf_counter()
    wl = make_workload(args.events, args.customers, args.days, args.seed, args.buyers)
    print(f"  workload: {len(wl.records):,} events, {wl.customers:,} customers "
          f"({time.perf_counter() - t:.1f}s to simulate)", flush=True)
    results["workload"] = {"events": len(wl.records), "customers": wl.customers}
    workdir = Path(tempfile.mkdtemp(prefix="segmenter-bench-"))
    ctx = Context(args, workdir, wl, results)
    try:
        if "step" in phases:
            results["step"] = step_phase(ctx)
        if "baseline" in phases:
            results["baseline"] = asdict(await drain_phase(ctx, "baseline"))
        if "worker1" in phases:
            results["worker1"] = asdict(await drain_phase(ctx, "worker", 1))
        if "worker2" in phases:
            results["worker2"] = asdict(await drain_phase(ctx, "worker", 2))
        if "latency" in phases:
            rate = args.latency_rate or (results["worker1"]["ev_s"] / 2
                                         if "worker1" in results else 0)
            if not rate:
                raise SystemExit("--latency-rate is needed without the worker1 phase")
            results["latency"] = await latency_phase(ctx, rate)
            if args.latency_also:
                results["latency_curve"] = sorted(
                    [results["latency"]] + [await latency_phase(ctx, float(r))
                                            for r in args.latency_also.split(",") if r.strip()],
                    key=lambda d: d["rate_ev_s"])
        if "rss" in phases:
            results["rss"] = await rss_phase(ctx)
        if "collector" in phases:
            results["collector"] = await phase_module("collector").collector_phase(ctx)
    except BaseException:
        print(f"  (logs kept in {workdir})", file=sys.stderr)
        raise
    if args.keep:
        print(f"  (logs kept in {workdir})", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "baseline":
        asyncio.run(baseline_loop(args.group, args.model))
        return 0
    # SIGTERM (timeout, Ctrl-C in a pipeline) stops the phase's workers and broker too: they
    # run in their own sessions and would outlive the driver.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = asyncio.run(run(args))
    table = markdown(results)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
