"""Integration fixtures: a real embedded broker and real worker processes.

Every test gets a fresh in-memory broker (it starts in milliseconds), so tests never see each
other's topics. Workers run as real ``segmenter worker`` subprocesses; clients are kafka-python.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_app.host.broker import EmbeddedBroker, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def kafka_request_answered(host: str, port: int, api_key: int, body: bytes = b"") -> bool:
    """Does a raw Kafka request (version 0, no TLS, no SASL) get an answer, or is the
    connection dropped? ``body`` follows the request header."""
    client_id, correlation = b"raw-probe", 7
    frame = struct.pack(">hhih", api_key, 0, correlation, len(client_id)) + client_id + body
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        try:
            head = sock.recv(8)
        except (ConnectionError, TimeoutError):
            return False
    return len(head) == 8 and struct.unpack(">ii", head)[1] == correlation


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        yield b


@dataclass
class Worker:
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 60.0) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(self.base_url + "/health", timeout=2)
                last = r.text
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy in {timeout}s (last: {last}):\n{self.tail()}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@pytest.fixture
def worker_factory(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []
    app_id = f"seg-{uuid.uuid4().hex[:8]}"

    def make(name: str = "w", **settings: str) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
        env.update({
            "SEGMENTER_BROKER_URL": broker.url,
            "SEGMENTER_APP_ID": app_id,
            "SEGMENTER_PARTITIONS": "4",
            "SEGMENTER_DATA_DIR": str(tmp_path / f"data-{name}"),
            "SEGMENTER_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        })
        port = free_port()
        env["SEGMENTER_WEB_PORT"] = str(port)
        env.update({f"SEGMENTER_{k.upper()}": v for k, v in settings.items()})
        w = Worker(env=env, log_path=tmp_path / f"worker-{name}.log", port=port)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


@pytest.fixture
def worker(worker_factory: Any) -> Worker:
    return worker_factory().start()


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    yield p
    p.close(timeout=5)


def send(producer: KafkaProducer, event: Any, key: bytes | None = None,
         topic: str = "customer-interactions") -> None:
    value = event if isinstance(event, bytes) else orjson.dumps(event)
    producer.send(topic, value=value, key=key)


def read_topic(broker: EmbeddedBroker, topic: str, *, expect: int, timeout: float = 30.0,
               idle: float = 1.5) -> list[Any]:
    """Read a topic from the beginning until ``expect`` records and then ``idle`` s of quiet."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = [r for rs in batch.values() for r in rs]
            records.extend(got)
            if got:
                quiet_since = time.monotonic()
            elif len(records) >= expect and time.monotonic() - quiet_since >= idle:
                break
        return records
    finally:
        consumer.close()


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.3, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate} (last: {last!r})")
