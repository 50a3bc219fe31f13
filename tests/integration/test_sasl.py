"""SASL against a broker that requires it: the embedded broker started with ``--authentication``.

What can be shown here and what cannot: Tansu 0.6 enforces SASL (SCRAM-SHA-256/512; its
OAUTHBEARER has no token validator) and refuses clients that do not authenticate, but its users
live in its storage engine. This build has memory storage only (no PostgreSQL or S3 back end
compiled in), which starts empty, and creating a user takes an authenticated connection. So no
client can log in here, and the test shows the rest:

- a client without SASL gets nowhere;
- a worker with SASL settings runs the SASL exchange with the mechanism and user it was given
  (the broker's own log names them), and the password never reaches any log;
- refused, the worker stops at start-up with a message naming the settings it used, not a
  client library's traceback.

A successful SASL login, and everything after it, runs through the same client arguments as the
TLS test's worker (``stream_app/host/clients.py``; mapping unit-tested in test_security.py).
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_app.host.broker import EmbeddedBroker

from .conftest import kafka_request_answered

pytestmark = pytest.mark.integration

PASSWORD = "pw-7f3c-never-logged"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """Overrides conftest's broker: workers from worker_factory point at this one."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log", authentication=True,
                        log_filter="warn,tansu_auth=debug") as b:
        yield b


def metadata_answered(host: str, port: int) -> bool:
    """Does a Metadata request (all topics) without authentication get an answer?"""
    return kafka_request_answered(host, port, 3, struct.pack(">i", 0))


def broker_log(broker: EmbeddedBroker) -> str:
    assert broker.log_path is not None
    return re.sub(r"\x1b\[[0-9;]*m", "", broker.log_path.read_text(errors="replace"))


@pytest.mark.slow(30)
def test_the_worker_authenticates_with_its_sasl_settings(broker: EmbeddedBroker,
                                                         worker_factory: Any) -> None:
    # Enforced: without SASL a client gets no metadata (the connection is closed).
    assert not metadata_answered(broker.host, broker.port)
    assert "NotAuthenticated" in broker_log(broker)
    assert "auth_id" not in broker_log(broker)

    worker = worker_factory(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="alice", sasl_password=PASSWORD)
    started = time.monotonic()
    worker.start(wait=False)
    code = worker.proc.wait(90)
    took = time.monotonic() - started
    out = worker.log_path.read_text(errors="replace")

    # The SASL exchange reached the broker with the configured mechanism and user.
    log = broker_log(broker)
    assert 'auth_id="alice" mechanism=Scram512' in log, log[-2000:]
    # Refused, the worker stops at start-up and says which settings it used.
    assert code == 2, f"exit {code} after {took:.0f}s:\n{out[-2000:]}"
    assert "cannot connect to the Kafka cluster" in out, out[-2000:]
    assert f"SEGMENTER_BROKER_URL={broker.url}" in out
    assert "SEGMENTER_SECURITY_PROTOCOL=SASL_PLAINTEXT" in out
    assert "SEGMENTER_SASL_MECHANISM=SCRAM-SHA-512" in out
    assert "SEGMENTER_SASL_USERNAME=alice" in out
    assert "Traceback" not in out
    # The password is in no log: the worker's or the broker's (SCRAM never sends it).
    assert PASSWORD not in out and PASSWORD not in log
