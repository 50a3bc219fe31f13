"""Who may read personal data: ``/customers/{id}`` answers loopback clients only while
``SEGMENTER_API_TOKEN`` is unset, and only the bearer of the token once it is set (also
through another worker, which forwards the request with its headers). ``/health``,
``/metrics`` and ``/segments`` stay open and carry no customer's data."""

from __future__ import annotations

import socket

import httpx
import pytest

from .conftest import send, wait_for

pytestmark = pytest.mark.integration

TOKEN = "api-token-3c9e-never-logged"


def outside_address() -> str:
    """This machine's address on a non-loopback interface (what another host would reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 interface to test from")
    return address


def order(user: str, i: int) -> dict:
    return {"type": "track", "event": "Order Completed", "userId": user, "messageId": f"o-{i}",
            "timestamp": f"2026-10-0{i + 1}T10:00:00Z", "properties": {"total": 30.0}}


def test_personal_data_needs_loopback_or_the_token(broker, worker_factory, producer):
    outside = outside_address()
    first = worker_factory("open", tick_interval_s="3600").start()
    for i in range(3):
        send(producer, order("pii-user", i), key=b"pii-user")
    producer.flush()
    wait_for(lambda: first.get("/customers/pii-user").status_code == 200,
             what="the customer, read from loopback")
    far = f"http://{outside}:{first.port}"
    r = httpx.get(f"{far}/customers/pii-user", timeout=10)
    assert r.status_code == 403 and "SEGMENTER_API_TOKEN" in r.json()["error"]
    assert "age" not in r.text and "pii-user" not in r.text
    for path in ("/health", "/metrics", "/segments"):
        assert httpx.get(far + path, timeout=10).status_code == 200, path
    assert "pii-user" not in httpx.get(far + "/metrics", timeout=10).text
    first.stop()

    guarded = worker_factory("guarded", api_token=TOKEN, tick_interval_s="3600").start()
    base = f"http://{outside}:{guarded.port}"
    wait_for(lambda: httpx.get(f"{base}/customers/pii-user", timeout=10,
                               headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200,
             what="the customer, read with the token from outside")
    for url in (f"{base}/customers/pii-user", f"{guarded.base_url}/customers/pii-user"):
        r = httpx.get(url, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = httpx.get(url, timeout=10, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403
    ok = httpx.get(f"{base}/customers/pii-user", timeout=10,
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.json()["features"]["orders"] == 3
    assert TOKEN not in guarded.tail(10_000)
