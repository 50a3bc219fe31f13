"""``segmenter demo``: broker, worker and persona traffic, with a live view of what happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..config import Settings
from ..host.broker import EmbeddedBroker, free_port
from ..host.clients import kafka_python_config
from .publish import producer_for, publish

# (key, value): keyless and keyed, to show the dead-letter path; a worker must survive both
BAD_EXAMPLES = [(None, b"{not json"), (None, b'{"type":"track","event":"Order Completed"}'),
                (b"x", b'{"type":"track","event":"Order Completed","userId":"x",'
                       b'"properties":{"total":-5}}'),
                (b"y", b'{"type":"page","userId":7,"messageId":null}')]


class Demo:
    def __init__(self, settings: Settings, customers: int, days: float, rate: float,
                 duration: float | None, console: Any) -> None:
        self.settings = settings
        self.customers = customers
        self.days = days
        self.rate = rate
        self.duration = duration
        self.console = console
        self.sent = 0
        self.changes: deque[dict[str, Any]] = deque(maxlen=8)
        self.changes_seen = 0
        self.stop = threading.Event()
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.health: dict[str, Any] = {}
        self.segments: dict[str, Any] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        s = self.settings
        data_dir = Path(s.data_dir) / "demo"
        data_dir.mkdir(parents=True, exist_ok=True)
        if "SEGMENTER_BROKER_URL" not in os.environ:
            self.broker = EmbeddedBroker(port=_port_or_free(9092),
                                         log_path=data_dir / "broker.log").start()
            s = self.settings = s.model_copy(update={"broker_url": self.broker.url})
            self.console.print(f"[green]embedded broker[/] on {self.broker.bootstrap} "
                               "(in memory; set SEGMENTER_BROKER_URL to use your own Kafka)")
        port = s.web_port if _port_free(s.web_port) else free_port()
        env = {**os.environ, "SEGMENTER_BROKER_URL": s.broker_url,
               "SEGMENTER_WEB_PORT": str(port), "SEGMENTER_DATA_DIR": str(data_dir),
               "SEGMENTER_APP_ID": s.app_id, "PYTHONUNBUFFERED": "1"}
        log = open(data_dir / "worker.log", "ab")  # noqa: SIM115
        self.worker = subprocess.Popen([sys.executable, "-m", "stream_app", "worker"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        log.close()
        self.base = f"http://127.0.0.1:{port}"
        self.console.print(f"worker starting (log: {data_dir / 'worker.log'}) ...")
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        try:
            if not self._wait_healthy(90):
                self.console.print("[red]worker did not become healthy; see its log[/]")
                return 1
            self.console.print(f"[green]worker ready[/]: dashboard {self.base}/dashboard, "
                               f"segments {self.base}/segments, metrics {self.base}/metrics")
            threads = [threading.Thread(target=self._traffic, daemon=True),
                       threading.Thread(target=self._follow_changes, daemon=True),
                       threading.Thread(target=self._poll, daemon=True)]
            for t in threads:
                t.start()
            alive = self._live()
            self._summary()
            return 0 if alive else 1
        except KeyboardInterrupt:
            self._summary()
            return 0 if self.worker.poll() is None else 1
        finally:
            self.stop.set()
            self._shutdown()

    def _summary(self) -> None:
        """One line a person or a test can read: what flowed, and whether the worker lives."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            self.health = httpx.get(self.base + "/health", timeout=2).json()
        st = self.health.get("stats", {})
        alive = self.worker is not None and self.worker.poll() is None
        self.console.print()
        self.console.print(
            f"demo summary: worker {'alive' if alive else 'DEAD'}, published {self.sent}, "
            f"applied {st.get('applied', 0)}, dead letters {st.get('dead_letters', 0)}, "
            f"segment changes {self.changes_seen}", soft_wrap=True)
        if not alive:
            log = Path(self.settings.data_dir) / "demo" / "worker.log"
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            self.console.print("[red]the worker exited[/] (code "
                               f"{self.worker.returncode if self.worker else '?'}); "
                               f"the end of {log}:\n" + "\n".join(tail), markup=False)

    def _shutdown(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self.broker:
            self.broker.stop()
        self.console.print("demo stopped.")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            assert self.worker is not None
            if self.worker.poll() is not None:
                return False
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    # --- background work ------------------------------------------------------------------------
    def _traffic(self) -> None:
        from ..simulate import simulate

        start = datetime.now(UTC) - timedelta(days=self.days)
        sim = simulate(customers=self.customers, days=self.days, seed=7, start=start)
        producer = producer_for(self.settings)
        try:
            for key, raw in BAD_EXAMPLES:  # show the dead-letter path too
                producer.send(self.settings.input_topic, key=key, value=raw)

            def count(n: int) -> None:
                self.sent += n

            publish(producer, self.settings.input_topic, iter(sim), rate=self.rate,
                    on_sent=count, stop=self.stop.is_set)
        finally:
            producer.close(timeout=5)

    def _follow_changes(self) -> None:
        consumer = KafkaConsumer(self.settings.changes_topic, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=500,
                                 **kafka_python_config(self.settings))
        try:
            while not self.stop.is_set():
                for record in consumer:
                    self.changes_seen += 1
                    self.changes.append(orjson.loads(record.value))
                    if self.stop.is_set():
                        break
        finally:
            consumer.close()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                self.health = httpx.get(self.base + "/health", timeout=2).json()
                self.segments = httpx.get(self.base + "/segments", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                pass
            self.stop.wait(1.0)

    # --- view ---------------------------------------------------------------------------------
    def _live(self) -> bool:
        """The live view until Ctrl-C, ``duration`` or the worker's death (then False)."""
        started = time.monotonic()
        alive = True
        with Live(self._render(), console=self.console, refresh_per_second=2,
                  transient=False) as live:
            while not self.stop.is_set():
                if self.duration and time.monotonic() - started > self.duration:
                    break
                if self.worker is not None and self.worker.poll() is not None:
                    self.console.print("[red]worker exited unexpectedly[/]")
                    alive = False
                    break
                live.update(self._render())
                self.stop.wait(0.5)
            live.update(self._render())
        return alive

    def _render(self) -> Group:
        st = self.health.get("stats", {})
        head = Table.grid(padding=(0, 2))
        head.add_row("events published", f"{self.sent:,}",
                     "applied", f"{st.get('applied', 0):,}",
                     "duplicates", f"{st.get('duplicates', 0):,}",
                     "dead letters", f"{st.get('dead_letters', 0):,}",
                     "segment changes", f"{self.changes_seen:,}")
        wm = self.health.get("watermark") or 0
        head.add_row("event time", datetime.fromtimestamp(wm, UTC).strftime("%Y-%m-%d %H:%M")
                     if wm else "-", "", "", "", "", "", "", "dashboard",
                     f"{getattr(self, 'base', '')}/dashboard")
        tables = []
        for seg in self.segments.get("segmentations", []):
            if seg["name"] not in ("behavior", "lifecycle", "rfm"):
                continue
            t = Table(title=f"{seg['name']} ({seg.get('customers', 0):,} customers)",
                      expand=False, show_edge=False)
            t.add_column("segment")
            t.add_column("customers", justify="right")
            t.add_column("share", justify="right")
            for item in sorted(seg["segments"], key=lambda x: -x.get("size", 0))[:8]:
                t.add_row(str(item.get("name") or item.get("id")), f"{item.get('size', 0):,}",
                          f"{item.get('share', 0):.0%}")
            tables.append(t)
        grid = Table.grid(padding=(0, 4))
        if tables:
            grid.add_row(*tables)
        recent = Table(title="latest segment changes (topic segment-changes)", show_edge=False)
        for col in ("customer", "segmentation", "from", "to", "reason"):
            recent.add_column(col, overflow="ellipsis", max_width=40)
        for ch in list(self.changes)[::-1]:
            recent.add_row(ch["customer_id"], ch["segmentation"],
                           str(ch.get("previous_segment") or "-"),
                           str(ch.get("segment_name") or ch.get("segment") or "-"),
                           ch.get("reason", ""))
        return Group(Panel(head, title="segmenter demo - Ctrl-C to stop"), grid, recent,
                     Text("The worker serves /health, /customers/{id}, /segments, /metrics, "
                          "/dashboard.", style="dim"))


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_or_free(port: int) -> int:
    return port if _port_free(port) else free_port()
