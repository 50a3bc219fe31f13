"""One validated settings object for the whole service (env prefix ``SEGMENTER_``, ``.env`` too).

Every tunable lives here. A bad value fails at start-up with a message naming the setting
(see :func:`load_settings`).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreKind(StrEnum):
    memory = "memory"
    rocksdb = "rocksdb"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class ClusterModel(StrEnum):
    kmeans = "kmeans"
    streamkmeans = "streamkmeans"
    dbstream = "dbstream"
    denstream = "denstream"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class Settings(BaseSettings):
    """Service settings. Field ``x`` is read from ``SEGMENTER_X``."""

    model_config = SettingsConfigDict(
        env_prefix="SEGMENTER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka connection -------------------------------------------------------------------
    broker_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, e.g. kafka://host1:9092;host2:9092",
    )
    app_id: str = Field("segmenter", pattern=r"^[A-Za-z0-9._-]{1,100}$",
                        description="Faust app id: the consumer group and prefix of internal topics")
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    # --- Topics -----------------------------------------------------------------------------
    input_topic: str = "customer-interactions"
    dlq_topic: str = "customer-interactions-dlq"
    changes_topic: str = "segment-changes"
    memberships_topic: str = "segment-memberships"
    partitions: PositiveInt = Field(8, le=1024)
    replication_factor: PositiveInt = 1

    # --- Worker -----------------------------------------------------------------------------
    web_port: int = Field(6066, ge=1, le=65535)
    web_host: str = "0.0.0.0"
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "segmenter-data")
    store: StoreKind = StoreKind.memory
    batch_size: PositiveInt = Field(2000, le=100_000)
    batch_within: NonNegativeFloat = Field(0.0, le=10)
    fetch_wait_ms: PositiveInt = Field(
        10, le=5000, description="While events flow, the longest a fetch waits at the broker "
        "(idle, it waits up to 250 ms): the bound on how long new records of one partition "
        "wait for a fetch that covers another")
    commit_interval_s: PositiveFloat = Field(
        1.0, le=60, description="How often handled input offsets are committed. Longer means "
        "fewer commits and, after a crash, more input read again (skipped by the state's "
        "stored positions, not applied twice)")
    rebalance_timeout: PositiveFloat = 5.0
    session_timeout: PositiveFloat = 6.0
    shutdown_timeout: PositiveFloat = Field(8.0, le=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_token: SecretStr | None = Field(None, description="Bearer token for admin endpoints")
    api_token: SecretStr | None = Field(
        None, description="Bearer token for the endpoints that serve personal data "
        "(/customers/{id}); unset: they answer loopback clients only")

    # --- Input limits -----------------------------------------------------------------------
    max_message_bytes: PositiveInt = Field(256 * 1024, le=16 * 1024 * 1024)
    max_batch_events: PositiveInt = Field(500, le=100_000)
    max_future_skew_s: PositiveFloat = Field(24 * 3600.0)
    dedupe_window: PositiveInt = Field(32, le=1024)

    # --- Customer state ---------------------------------------------------------------------
    session_gap_s: PositiveFloat = 30 * 60.0
    recent_half_life_days: PositiveFloat = 30.0
    cart_abandon_after_s: PositiveFloat = 24 * 3600.0
    max_merged_ids: PositiveInt = Field(
        100, le=1000, description="Most ids (anonymous ids, renamed user ids) a customer's "
        "own events merge into it; further merges are refused and dead-lettered "
        "(merge_limit)")
    erased_keep_s: PositiveFloat = Field(
        24 * 3600.0, description="How long an erased id's marker (no data: only what was "
        "applied, so a replay after a crash cannot bring the customer back) is kept")

    # --- Segmentation -----------------------------------------------------------------------
    cluster_model: ClusterModel = ClusterModel.kmeans
    clusters: PositiveInt = Field(7, le=64)
    clusters_min: int = Field(
        3, ge=0, le=64, description="k-means: with clusters_max, the fewest clusters the "
        "data may choose (0: SEGMENTER_CLUSTERS, fixed)")
    clusters_max: int = Field(
        10, ge=0, le=64, description="k-means: the most clusters the data may choose, by "
        "silhouette at each model generation (0: SEGMENTER_CLUSTERS, fixed)")
    model_move_budget: float = Field(
        0.015, ge=0.0, le=1.0, description="The most of the trainer's recent sample one model "
        "version may move to another behavioural segment: a re-clustering is published in "
        "steps toward the model's centres (0: at once)")
    model_snapshot_every: PositiveInt = Field(
        1000, description="Publish a new clustering model after this many training samples")
    model_snapshot_every_s: PositiveFloat = Field(
        3600.0, description="... or after this many seconds since the last snapshot")
    model_min_learned: PositiveInt = Field(
        1000, description="Customers stay unassigned until the model has learned this many")
    clustering: bool = Field(True, description="Run the behavioural clustering")
    predictions: bool = Field(
        True, description="Fit BG/NBD and Gamma-Gamma in the trainer and give every customer "
        "p_alive, expected orders and revenue (on / off; needs the clustering's samples)")
    segments_file: Path | None = None
    segments_poll_s: PositiveFloat = Field(
        5.0, le=3600, description="How often SEGMENTER_SEGMENTS_FILE is checked for edits "
        "(and at once on SIGHUP); a valid edit is published to every worker")
    tick_interval_s: PositiveFloat = Field(
        30.0, description="How often time-driven segments (lapsing, ...) are re-evaluated")
    idle_advance_after_s: PositiveFloat = Field(
        60.0, description="With no events for this long, event time follows the wall clock")

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        value = value.strip()
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in {"kafka", "aiokafka"} or not rest:
            raise ValueError("expected kafka://HOST:PORT[;HOST:PORT...]")
        for hostport in rest.split(";"):
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{hostport!r} is not HOST:PORT")
        return value

    @field_validator("input_topic", "dlq_topic", "changes_topic", "memberships_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
            raise ValueError("a Kafka topic name is 1-249 of [A-Za-z0-9._-]")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        sasl = self.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                "SEGMENTER_SECURITY_PROTOCOL uses SASL: set SEGMENTER_SASL_USERNAME and "
                "SEGMENTER_SASL_PASSWORD"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"SEGMENTER_{name.upper()}: no such file: {path}")
        if self.segments_file is not None and not Path(self.segments_file).is_file():
            raise ValueError(f"SEGMENTER_SEGMENTS_FILE: no such file: {self.segments_file}")
        return self

    @model_validator(mode="after")
    def _check_output_topics(self) -> Settings:
        # the compacted memberships topic must not be one of the event logs: compaction would
        # drop their records, their records would read as memberships
        for name in ("input_topic", "dlq_topic", "changes_topic"):
            if self.memberships_topic == getattr(self, name):
                raise ValueError(f"SEGMENTER_MEMBERSHIPS_TOPIC must differ from "
                                 f"SEGMENTER_{name.upper()} ({self.memberships_topic})")
        return self

    @model_validator(mode="after")
    def _check_clusters(self) -> Settings:
        if self.clusters_max and not 2 <= self.clusters_min <= self.clusters_max:
            raise ValueError(
                "SEGMENTER_CLUSTERS_MIN must be between 2 and SEGMENTER_CLUSTERS_MAX (or set "
                "SEGMENTER_CLUSTERS_MAX=0 for a fixed SEGMENTER_CLUSTERS)")
        return self

    # --- Derived ----------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> list[str]:
        return self.broker_url.partition("://")[2].split(";")

    @property
    def routed_topic(self) -> str:
        """Internal topic: events and identity commands re-keyed by customer id."""
        return f"{self.app_id}-routed"

    @property
    def model_topic(self) -> str:
        """Internal compacted topic: versioned clustering-model snapshots."""
        return f"{self.app_id}-model"

    @property
    def training_topic(self) -> str:
        """Internal one-partition topic: feature samples for the one model trainer."""
        return f"{self.app_id}-training"

    @property
    def definitions_topic(self) -> str:
        """Internal compacted topic: the rule definitions in force, followed by every
        worker (a PUT /admin/segmentations or an edited definitions file writes it)."""
        return f"{self.app_id}-segment-definitions"

    @property
    def trainer_topic(self) -> str:
        """Internal compacted topic: trainer checkpoints, so the trainer can move workers."""
        return f"{self.app_id}-trainer"


class SettingsError(Exception):
    """A setting is invalid; the message names each bad setting and why."""


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        env = f"SEGMENTER_{loc.upper()}" if err["loc"] else "settings"
        value = err.get("input")
        shown = "" if "password" in loc or "token" in loc or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{env}: {err['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, raising :class:`SettingsError` with a clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def env_overrides(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = dict(os.environ)
    env["SEGMENTER_BROKER_URL"] = settings.broker_url
    env["SEGMENTER_APP_ID"] = settings.app_id
    env["SEGMENTER_DATA_DIR"] = str(settings.data_dir)
    env["SEGMENTER_WEB_PORT"] = str(settings.web_port)
    return env
