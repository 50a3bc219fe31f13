"""Who may read personal data, and who may administer.

A customer document holds traits (age, income, city), features and linked anonymous ids:
personal data. Its endpoints answer only

- a client with ``Authorization: Bearer <SEGMENTER_API_TOKEN>`` when that token is set
  (workers forward a request for another worker's customer with its headers, so the token
  works across hosts); or,
- when no token is set, a client on the loopback interface (the laptop, a sidecar, a
  ``kubectl port-forward``). Anyone else gets 403 saying which setting opens the door.

``/health``, ``/metrics``, ``/segments`` and ``/dashboard`` stay open: they carry counts and
segment definitions, no customer's data. Tokens are compared in constant time and never
logged.
"""

from __future__ import annotations

import hmac
import ipaddress

from faust.web import Request, Response, View
from pydantic import SecretStr


def _loopback(request: Request) -> bool:
    remote = getattr(request, "remote", None)
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return remote == "localhost"


class Gate:
    """``check(view, request)``: ``None`` when allowed, else the 401/403 answer."""

    def __init__(self, token: SecretStr | None, *, setting: str, realm: str,
                 loopback_without_token: bool) -> None:
        secret = token.get_secret_value() if token is not None else ""
        self.expected = secret.encode() if secret else None
        self.setting = setting
        self.realm = realm
        self.loopback_without_token = loopback_without_token

    @property
    def open(self) -> bool:
        """Served at all (a token is set, or loopback clients are let in)."""
        return self.expected is not None or self.loopback_without_token

    def check(self, view: View, request: Request) -> Response | None:
        if self.expected is None:
            if self.loopback_without_token and _loopback(request):
                return None
            return view.json({"error": f"personal data: served to loopback clients only "
                                       f"while {self.setting} is not set"}, status=403)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return view.json({"error": "bearer token required"}, status=401,
                             headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})
        if not hmac.compare_digest(given.strip().encode(), self.expected):
            return view.json({"error": "invalid token"}, status=403)
        return None
