"""The access rule for personal data, on requests from any address (the integration test
``test_access.py`` needs a non-loopback interface to send from and skips on machines
without one; this one runs everywhere)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from stream_app.web.access import Gate


@dataclass
class Request:
    remote: str | None
    headers: dict[str, str] = field(default_factory=dict)


class View:
    def json(self, body: Any, status: int = 200, headers: Any = None) -> tuple[int, Any]:
        return status, body


def gate(token: str | None) -> Gate:
    return Gate(SecretStr(token) if token else None, setting="SEGMENTER_API_TOKEN",
                realm="segmenter", loopback_without_token=True)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.0.3", "::1", "localhost"])
def test_without_a_token_loopback_clients_are_let_in(remote: str) -> None:
    assert gate(None).check(View(), Request(remote)) is None


@pytest.mark.parametrize("remote", ["10.1.2.3", "203.0.113.7", "fe80::1%eth0", "::ffff:8.8.8.8",
                                    "", None, "not-an-address"])
def test_without_a_token_anyone_else_gets_403_naming_the_setting(remote: str | None) -> None:
    status, body = gate(None).check(View(), Request(remote))  # type: ignore[misc]
    assert status == 403 and "SEGMENTER_API_TOKEN" in body["error"]


@pytest.mark.parametrize("remote", ["127.0.0.1", "203.0.113.7"])
def test_with_a_token_only_the_token_counts_wherever_the_client_is(remote: str) -> None:
    g = gate("s3cret-token")
    assert g.check(View(), Request(remote, {"Authorization": "Bearer s3cret-token"})) is None
    status, _ = g.check(View(), Request(remote))  # type: ignore[misc]
    assert status == 401
    status, _ = g.check(View(), Request(remote, {"Authorization": "Bearer wrong"}))  # type: ignore[misc]
    assert status == 403
    status, _ = g.check(View(), Request(remote, {"Authorization": "Basic s3cret-token"}))  # type: ignore[misc]
    assert status == 401
