"""Kafka client configuration from :class:`Settings` (TLS / SASL), and topic creation.

One place turns the security settings into each client library's arguments, so the worker
(Faust/aiokafka), the CLI tools (kafka-python) and the tests connect the same way.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Any

from ..config import SecurityProtocol, Settings

log = logging.getLogger(__name__)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    ctx.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile:
        ctx.load_cert_chain(str(settings.ssl_certfile),
                            str(settings.ssl_keyfile) if settings.ssl_keyfile else None)
    return ctx


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for Faust, or None for PLAINTEXT."""
    import faust

    proto = settings.security_protocol
    if proto == SecurityProtocol.PLAINTEXT:
        return None
    ctx = ssl_context(settings)
    if proto == SecurityProtocol.SSL:
        return faust.SSLCredentials(ctx)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return faust.SASLCredentials(
        username=settings.sasl_username, password=password,
        ssl_context=ctx, mechanism=settings.sasl_mechanism.value)


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (producer, consumer, admin)."""
    conf: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol.value,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        conf["ssl_context"] = ctx
    if settings.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        conf["sasl_mechanism"] = settings.sasl_mechanism.value
        conf["sasl_plain_username"] = settings.sasl_username
        conf["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None)
    return conf


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    conf = kafka_python_config(settings)
    conf["bootstrap_servers"] = ",".join(settings.bootstrap_servers)
    return conf


def topic_specs(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) of the topics the service reads and writes."""
    week = str(7 * 24 * 3600 * 1000)
    return [
        (settings.input_topic, settings.partitions, {"retention.ms": week}),
        (settings.routed_topic, settings.partitions, {"retention.ms": week}),
        (settings.dlq_topic, max(1, min(settings.partitions, 4)),
         {"retention.ms": str(14 * 24 * 3600 * 1000)}),
        (settings.changes_topic, settings.partitions,
         {"cleanup.policy": "delete", "retention.ms": week}),
        # each customer's current memberships (compacted: the newest record per customer;
        # a tombstone on erasure), for subscribers that arrive after segment-changes expired
        (settings.memberships_topic, settings.partitions, {"cleanup.policy": "compact"}),
        # one partition each: one trainer owns the model, every worker reads every snapshot
        (settings.training_topic, 1, {"retention.ms": str(24 * 3600 * 1000)}),
        (settings.model_topic, 1, {"cleanup.policy": "compact"}),
        (settings.definitions_topic, 1, {"cleanup.policy": "compact"}),
        (settings.trainer_topic, 1, {"cleanup.policy": "compact",
                                     "max.message.bytes": str(8 * 1024 * 1024)}),
    ]


class BrokerUnreachable(RuntimeError):
    """The cluster did not answer at start-up; the message names the settings involved."""


class TopicMismatch(RuntimeError):
    """An existing topic has a partition count the service cannot work with; the message
    names the topic, both counts and what to do."""


def co_partitioned_topics(settings: Settings) -> list[str]:
    """Topics whose partition ``p`` must hold the customers of table partition ``p``: the
    service writes to their partitions by number, so their count must be
    ``SEGMENTER_PARTITIONS`` exactly. (The input may have any count: what arrives on a
    partition the worker does not own is re-keyed through the routed topic; the DLQ,
    the changes and the memberships topics are written with the default partitioner over
    their actual count.)"""
    return [settings.routed_topic, f"{settings.app_id}-customers-changelog"]


def check_partitions(settings: Settings, counts: dict[str, int]) -> None:
    """Raise :class:`TopicMismatch` if a co-partitioned topic exists with another count."""
    for topic in co_partitioned_topics(settings):
        n = counts.get(topic)
        if n and n != settings.partitions:
            raise TopicMismatch(
                f"topic {topic} has {n} partitions but SEGMENTER_PARTITIONS={settings.partitions}: "
                f"the worker writes customer p's records to partition p of it. Set "
                f"SEGMENTER_PARTITIONS={n}, or a new SEGMENTER_APP_ID (its internal topics are "
                f"created with the right count)")


def connection_summary(settings: Settings) -> str:
    """The connection settings in use, as a user sets them (never the password)."""
    parts = [f"SEGMENTER_BROKER_URL={settings.broker_url}",
             f"SEGMENTER_SECURITY_PROTOCOL={settings.security_protocol.value}"]
    if settings.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        parts += [f"SEGMENTER_SASL_MECHANISM={settings.sasl_mechanism.value}",
                  f"SEGMENTER_SASL_USERNAME={settings.sasl_username}"]
    if settings.ssl_cafile:
        parts.append(f"SEGMENTER_SSL_CAFILE={settings.ssl_cafile}")
    return ", ".join(parts)


def ensure_topics(settings: Settings, timeout_s: float = 20.0) -> dict[str, int]:
    """Create missing topics; return each topic's partition count as the cluster has it.

    Raises :class:`BrokerUnreachable` when the cluster cannot be reached or refuses the
    connection (wrong address, TLS or SASL settings): a worker fails at start-up with a
    message that says which settings it used, rather than a client library's traceback.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(client_id=f"{settings.app_id}-admin",
                                 request_timeout_ms=int(timeout_s * 1000),
                                 **kafka_python_config(settings))
    except (KafkaError, OSError) as exc:
        secure = settings.security_protocol != SecurityProtocol.PLAINTEXT
        hint = ("the broker is not running there, or refused the TLS/SASL settings "
                "(a wrong mechanism, user or password, or an untrusted certificate)"
                if secure else "no Kafka broker answers there")
        raise BrokerUnreachable(
            f"cannot connect to the Kafka cluster ({connection_summary(settings)}): "
            f"{type(exc).__name__}; {hint}") from exc
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, partitions, settings.replication_factor, topic_configs=conf)
               for name, partitions, conf in topic_specs(settings) if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                admin.create_topics(new)
        counts: dict[str, int] = {}
        names = [name for name, _, _ in topic_specs(settings)]
        names += [t for t in co_partitioned_topics(settings) if t in existing and t not in names]
        for meta in admin.describe_topics(names):
            counts[meta.get("topic") or meta["name"]] = len(meta.get("partitions") or [])
        return counts
    finally:
        admin.close()
