"""The collector's settings: the service's own (broker, TLS, SASL, topics, input limits) plus
the few only the collector reads. Same ``SEGMENTER_`` environment and ``.env`` file.

Kept beside the collector rather than in :mod:`stream_app.config` for now; each field is
meant to move there unchanged.
"""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, ValidationError, field_validator

from ..config import Settings, SettingsError

# Printable ASCII without ':' (the Basic-auth separator) or spaces: what a write key can be.
_KEY = re.compile(r"[!-9;-~]{8,200}")
SECRET_FIELDS = frozenset({"write_keys", "sasl_password", "admin_token", "api_token"})


class CollectorSettings(Settings):
    collector_port: int = Field(8088, ge=1, le=65535, description="HTTP port of the collector")
    collector_host: str = Field(
        "127.0.0.1", min_length=1, description="Bind address; 0.0.0.0 to serve other hosts "
        "(behind a TLS-terminating load balancer)")
    write_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated write keys the collector accepts (the "
        "SDK's writeKey); required: the collector does not start without one")
    collector_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body, compressed and after gunzip: larger ones get 413")
    collector_ack_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest wait for Kafka to acknowledge a request's "
        "records; then 503 (the SDKs retry; their own timeout is 15 s)")
    collector_linger_ms: int = Field(
        2, ge=0, le=1000, description="Producer linger: records of concurrent requests "
        "share a produce request")

    @field_validator("write_keys")
    @classmethod
    def _check_keys(cls, value: SecretStr) -> SecretStr:
        # Messages never contain a key, not even a bad one: these are secrets.
        keys = [k.strip() for k in value.get_secret_value().split(",")]
        keys = [k for k in keys if k]
        if not keys:
            raise ValueError("no write key set: the collector refuses to accept events from "
                             "anyone; set one or more keys, comma-separated")
        for n, key in enumerate(keys, 1):
            if not _KEY.fullmatch(key):
                raise ValueError(f"key {n} of {len(keys)} is not 8-200 printable ASCII "
                                 "characters without spaces or ':'")
        return SecretStr(",".join(keys))

    @property
    def write_key_list(self) -> tuple[str, ...]:
        return tuple(self.write_keys.get_secret_value().split(","))


def describe(exc: ValidationError) -> str:
    """One line per bad setting, naming it; never the value of a secret."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        env = f"SEGMENTER_{loc.upper()}" if loc else "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        shown = ("" if not loc or loc in SECRET_FIELDS or isinstance(value, dict)
                 else f" (got {value!r})")
        lines.append(f"{env}: {msg}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_collector_settings(**overrides: object) -> CollectorSettings:
    """Settings from the environment, or :class:`SettingsError` naming each bad one."""
    try:
        return CollectorSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
