"""The ``collector`` phase of ``segmenter bench``: the HTTP Tracking API into Kafka.

    segmenter bench --phases collector [--collector-seconds S] [--collector-clients C]

Requests are ``POST /v1/batch`` with 100 events each (the SDKs' batch size), built once from
the bench workload (simulated persona traffic), gzip off, HTTP Basic auth, from concurrent
clients in the driver process over keep-alive connections.

1. **bare**: a bare aiohttp server (this file, run as a script) that reads the body, parses
   the JSON and answers ``{"success": true}``: the cost of HTTP and JSON alone.
2. **collector**: ``segmenter collect`` against a fresh embedded broker: every event checked,
   corrected and produced (``acks=all``) before the answer.

For each: the most events/s (closed loop: every client sends its next request as soon as
the last one is answered), then the request latency at half that rate (open loop: requests
leave on a fixed schedule whether or not earlier ones were answered; latency counts from the
scheduled time, so a stall is not hidden). For the collector, "events/s into Kafka" counts
events in 200 answers, and the topic is read back at the end to check they are all there.
Everything (broker, server, load generator) shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_app.host.broker import EmbeddedBroker, free_port  # noqa: E402

KEY = "bench-write-key-0123456789"
BATCH = 100
TARGETS = {"collector_ev_s": 20_000, "collector_p99_ms": 50.0}


# --- the bare server ----------------------------------------------------------------------------

def bare_server(port: int) -> None:
    from aiohttp import web

    ok = orjson.dumps({"success": True})

    async def batch(request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        assert isinstance(doc.get("batch"), list)
        return web.Response(body=ok, content_type="application/json")

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/v1/{route}", batch)
    app.router.add_get("/health", lambda r: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- load ---------------------------------------------------------------------------------------

def request_bodies(records: list[tuple[bytes, bytes]], n: int) -> list[bytes]:
    """``n`` batch bodies of ``BATCH`` workload events each (cycling through the workload)."""
    events = [orjson.loads(v) for _, v in records[:max(BATCH, min(len(records), n * BATCH))]]
    sent_at = dt.datetime.now(dt.UTC).isoformat()
    return [orjson.dumps({"batch": [events[(i * BATCH + j) % len(events)] for j in range(BATCH)],
                          "sentAt": sent_at}) for i in range(n)]


HEADERS = {"Content-Type": "application/json",
           "Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


async def closed_loop(url: str, bodies: list[bytes], clients: int, seconds: float,
                      warmup: float = 1.0) -> dict[str, Any]:
    """Most events/s: each client sends as soon as its last request is answered."""
    counts = {"ok": 0, "failed": 0}
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    measured = {"events": 0}

    async def client(session: aiohttp.ClientSession, start: int) -> None:
        i = start
        while time.perf_counter() < stop_at:
            async with session.post(url, data=bodies[i % len(bodies)], headers=HEADERS) as r:
                await r.read()
                if r.status == 200:
                    counts["ok"] += 1
                    if time.perf_counter() >= measure_from:
                        measured["events"] += BATCH
                else:
                    counts["failed"] += 1
            i += clients

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(client(session, k) for k in range(clients)))
    return {"ev_s": round(measured["events"] / seconds), "requests_ok": counts["ok"],
            "requests_failed": counts["failed"], "events_ok": counts["ok"] * BATCH}


async def open_loop(url: str, bodies: list[bytes], ev_s: float, seconds: float
                    ) -> dict[str, Any]:
    """Latency at a fixed rate of requests, measured from each request's scheduled time."""
    interval = BATCH / ev_s
    latencies: list[float] = []
    failed = 0

    async def one(session: aiohttp.ClientSession, body: bytes, due: float) -> None:
        nonlocal failed
        async with session.post(url, data=body, headers=HEADERS) as r:
            await r.read()
            if r.status != 200:
                failed += 1
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter() + 0.2
        n = int(seconds / interval)
        for i in range(n):
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, bodies[i % len(bodies)], due)))
        await asyncio.gather(*tasks)
    latencies.sort()

    def q(f: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(f * len(latencies)))], 1)

    return {"rate_ev_s": round(ev_s), "requests": n, "failed": failed, "p50_ms": q(0.5),
            "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": round(latencies[-1], 1)}


# --- processes ----------------------------------------------------------------------------------

def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path,
                     timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} not ready in {timeout}s")


async def _wait_log(proc: subprocess.Popen[bytes], log: Path, text: str,
                    timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} from {proc.args}:\n{log.read_text()[-2000:]}")
        await asyncio.sleep(0.1)


def _cpu(pid: int | None) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except (psutil.Error, ValueError):
        return 0.0


async def _count_topic(bootstrap: str, topic: str) -> int:
    """Records in ``topic``, read from the start until the fetches stay empty (the embedded
    broker's end offsets cannot be trusted)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=200)
    await consumer.start()
    n, idle_since = 0, time.monotonic()
    try:
        while time.monotonic() - idle_since < 2.0:
            got = await consumer.getmany(timeout_ms=300, max_records=50_000)
            k = sum(len(v) for v in got.values())
            n += k
            if k:
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return n


async def measure(name: str, proc: subprocess.Popen[bytes], url: str, bodies: list[bytes],
                  args: argparse.Namespace, cpu_pids: dict[str, int | None]) -> dict[str, Any]:
    before = {k: _cpu(pid) for k, pid in cpu_pids.items()}
    driver0, wall0 = time.process_time(), time.perf_counter()
    peak = await closed_loop(url, bodies, args.collector_clients, args.collector_seconds)
    wall = time.perf_counter() - wall0
    cores = {k: round((_cpu(pid) - before[k]) / wall, 2) for k, pid in cpu_pids.items()}
    cores["server"] = round(sum(v for k, v in cores.items() if k.startswith("server")), 2)
    cores["driver"] = round((time.process_time() - driver0) / wall, 2)
    half = await open_loop(url, bodies, max(BATCH, peak["ev_s"] / 2), args.collector_seconds)
    print(f"  {name}: {peak['ev_s']:,} ev/s; at {half['rate_ev_s']:,} ev/s p50 "
          f"{half['p50_ms']} ms, p99 {half['p99_ms']} ms", flush=True)
    return {"peak": peak, "half_rate": half, "cores_at_peak": cores}


async def collector_phase(ctx: Any) -> dict[str, Any]:
    args = ctx.args
    bodies = request_bodies(ctx.workload.records, 200)
    mean_body = sum(map(len, bodies)) / len(bodies)
    out: dict[str, Any] = {"batch_events": BATCH, "clients": args.collector_clients,
                           "seconds": args.collector_seconds, "body_bytes": round(mean_body)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}

    port = free_port()
    log = ctx.workdir / "bare.log"
    proc = _start([sys.executable, str(Path(__file__)), "--port", str(port)], env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        await _wait_http(base + "/health", proc, log)
        out["bare"] = await measure("bare HTTP + JSON parse", proc, base + "/v1/batch",
                                    bodies, args, {"server": proc.pid})
    finally:
        _stop(proc)

    with EmbeddedBroker(log_path=ctx.workdir / "collector-broker.log") as broker:
        port = free_port()
        log = ctx.workdir / "collector.log"
        n = max(1, getattr(args, "collector_processes", 1))
        procs = [_start([sys.executable, "-m", "stream_app", "collect"], {
            **env, "SEGMENTER_BROKER_URL": broker.url, "SEGMENTER_WRITE_KEYS": KEY,
            "SEGMENTER_COLLECTOR_PORT": str(port), "SEGMENTER_LOG_LEVEL": "info"},
            log.with_suffix(f".{i}.log")) for i in range(n)]  # one port (SO_REUSEPORT)
        out["processes"] = n
        try:
            base = f"http://127.0.0.1:{port}"
            for i, proc in enumerate(procs):  # each listening (/health may reach another)
                await _wait_log(proc, log.with_suffix(f".{i}.log"), "collector listening")
            await _wait_http(base + "/health", procs[0], log)
            pids: dict[str, int | None] = {f"server{i}": p.pid for i, p in enumerate(procs)}
            out["collector"] = await measure(
                f"collector into Kafka ({n} process{'es' if n > 1 else ''})", procs[0],
                base + "/v1/batch", bodies, args, {**pids, "broker": broker.pid})
        finally:
            for proc in procs:
                _stop(proc)
        acked = out["collector"]["peak"]["events_ok"] + (
            out["collector"]["half_rate"]["requests"] - out["collector"]["half_rate"]["failed"]
        ) * BATCH
        out["collector"]["acked_events"] = acked
        out["collector"]["events_in_topic"] = await _count_topic(broker.bootstrap,
                                                                 "customer-interactions")
    c, b = out["collector"], out["bare"]
    out["ratio_to_bare"] = round(c["peak"]["ev_s"] / max(1, b["peak"]["ev_s"]), 3)
    return out


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    c = r["collector"]
    return [("collector: events/s into Kafka, /v1/batch of 100", f"{c['peak']['ev_s']:,} ev/s",
             f">= {TARGETS['collector_ev_s']:,} ev/s",
             c["peak"]["ev_s"] >= TARGETS["collector_ev_s"]),
            (f"collector: p99 request latency at {c['half_rate']['rate_ev_s']:,} ev/s",
             f"{c['half_rate']['p99_ms']} ms", f"<= {TARGETS['collector_p99_ms']:.0f} ms",
             c["half_rate"]["p99_ms"] <= TARGETS["collector_p99_ms"])]


def markdown_lines(r: dict[str, Any]) -> list[str]:
    lines = ["", f"HTTP Tracking API: `POST /v1/batch` of {r['batch_events']} events "
             f"(~{r['body_bytes']:,} B a body), {r['clients']} concurrent clients, "
             f"{r['seconds']} s per measurement:", "",
             "| server | most ev/s | cores at that rate (server / broker / load generator) "
             "| p50 at half | p99 at half | max at half |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    n = r.get("processes", 1)
    for key, name in (("bare", "bare aiohttp, JSON parse only (baseline), 1 process"),
                      ("collector", f"segmenter collect, into Kafka (acks=all), {n} "
                                    f"process{'es' if n > 1 else ''}")):
        d = r[key]
        c, h = d["cores_at_peak"], d["half_rate"]
        lines.append(f"| {name} | {d['peak']['ev_s']:,} | {c.get('server')} / "
                     f"{c.get('broker', '-')} / {c['driver']} | {h['p50_ms']} ms | "
                     f"{h['p99_ms']} ms | {h['max_ms']} ms |")
    c = r["collector"]
    lines += ["", f"Collector / bare: {r['ratio_to_bare']}. Events acknowledged with 200: "
              f"{c['acked_events']:,}; records in the topic afterwards: "
              f"{c['events_in_topic']:,}; failed requests: "
              f"{c['peak']['requests_failed'] + c['half_rate']['failed']}."]
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the bench's bare HTTP server")
    ap.add_argument("--port", type=int, required=True)
    bare_server(ap.parse_args().port)
