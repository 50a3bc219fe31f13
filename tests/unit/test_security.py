"""Security properties that need no broker: client credentials, serializers, output contents.

- TLS/SASL settings become the arguments each Kafka client library takes (Faust/aiokafka for
  the worker, kafka-python for the CLI tools). SASL cannot be tried end to end here: the
  embedded broker (Tansu 0.6) has no SASL listener, so the mapping is what is tested.
- No pickle wherever data crosses a process: no module of the package imports a pickle-like
  serializer, and every topic and table the worker declares has a byte-exact codec.
- Segment changes carry no personal data beyond the customer id.
"""

from __future__ import annotations

import ast
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream_app.config import Settings, load_settings
from stream_app.core.events.models import SegmentChange
from stream_app.core.processing import Message, Step
from stream_app.core.segmentation.registry import build_segmentations
from stream_app.host.clients import (
    aiokafka_config,
    connection_summary,
    faust_credentials,
    kafka_python_config,
)

PACKAGE = Path(__file__).resolve().parents[2] / "stream_app"
SECRET = "s3cret-do-not-leak"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("SEGMENTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# --- TLS and SASL ------------------------------------------------------------------------------

def _ca(tmp_path: Path) -> Path:
    """A real CA certificate file (ssl.create_default_context refuses anything else)."""
    from tests.integration.tls import self_signed

    cert, _key = self_signed(tmp_path, "127.0.0.1")
    return cert


def test_plaintext_needs_no_credentials() -> None:
    s = load_settings()
    assert faust_credentials(s) is None
    assert kafka_python_config(s) == {"bootstrap_servers": ["127.0.0.1:9092"],
                                      "security_protocol": "PLAINTEXT"}
    assert credentials_to_aiokafka_auth(faust_credentials(s)) == {"security_protocol": "PLAINTEXT"}


def test_tls_maps_to_an_ssl_context_for_every_client(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    s = load_settings(security_protocol="SSL", ssl_cafile=ca, ssl_check_hostname=False,
                      broker_url="kafka://k1:9093;k2:9093")
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is False
    assert any(c["subject"] for c in ctx.get_ca_certs())  # our CA was loaded
    kp = kafka_python_config(s)
    assert kp["security_protocol"] == "SSL" and isinstance(kp["ssl_context"], ssl.SSLContext)
    assert kp["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert aiokafka_config(s)["bootstrap_servers"] == "k1:9093,k2:9093"


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_maps_to_faust_and_kafka_python_credentials(protocol: str, mechanism: str) -> None:
    s = load_settings(security_protocol=protocol, sasl_mechanism=mechanism,
                      sasl_username="segmenter", sasl_password=SECRET)
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    # What Faust hands to aiokafka (the worker's consumer and producer):
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == protocol
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("segmenter", SECRET)
    assert (auth["ssl_context"] is not None) == (protocol == "SASL_SSL")
    # kafka-python (topic creation, CLI tools) and the broker watch (aiokafka client):
    for conf in (kafka_python_config(s), aiokafka_config(s)):
        assert conf["security_protocol"] == protocol and conf["sasl_mechanism"] == mechanism
        assert (conf["sasl_plain_username"], conf["sasl_plain_password"]) == ("segmenter", SECRET)
        assert ("ssl_context" in conf) == (protocol == "SASL_SSL")


def test_the_connection_summary_names_the_settings_but_never_the_password() -> None:
    s = load_settings(broker_url="kafka://k1:9093", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-256", sasl_username="segmenter",
                      sasl_password=SECRET)
    text = connection_summary(s)
    assert text == ("SEGMENTER_BROKER_URL=kafka://k1:9093, SEGMENTER_SECURITY_PROTOCOL=SASL_SSL, "
                    "SEGMENTER_SASL_MECHANISM=SCRAM-SHA-256, SEGMENTER_SASL_USERNAME=segmenter")
    assert SECRET not in text
    plain = load_settings(broker_url="kafka://k1:9092", security_protocol="PLAINTEXT")
    assert connection_summary(plain) == (
        "SEGMENTER_BROKER_URL=kafka://k1:9092, SEGMENTER_SECURITY_PROTOCOL=PLAINTEXT")


def test_the_worker_app_is_built_with_the_credentials(tmp_path: Path) -> None:
    from stream_app.host.app import Runtime

    s = load_settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="segmenter", sasl_password=SECRET, clustering=False,
                      data_dir=tmp_path)
    rt = Runtime(s, build_segmentations(s))
    creds = rt.app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "segmenter", SECRET, "SCRAM-SHA-512")
    assert SECRET not in repr(s) and SECRET not in s.model_dump_json()


# --- no pickle ---------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal", "jsonpickle"}
UNSAFE_CODECS = {"pickle", "binary", "pickle_restricted", "pickle_fickling"}


def test_no_module_imports_a_pickle_like_serializer() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("__reduce__", "__reduce_ex__"):
                names = ["__reduce__"]
            offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in UNSAFE_MODULES or n == "__reduce__"]
    assert not offenders, offenders


def _serializers(obj: Any) -> tuple[Any, Any]:
    return getattr(obj, "key_serializer", None), getattr(obj, "value_serializer", None)


def test_every_topic_and_table_uses_a_byte_exact_codec(tmp_path: Path) -> None:
    """Faust picks pickle-capable codecs for Records when told to; ours must never be one.

    Checked on the app as a worker builds it: the app defaults, each table and its changelog,
    each agent's channel, each topic the app declared (clustering topics included).
    """
    from stream_app.host.app import Runtime

    s = load_settings(data_dir=tmp_path, clustering=True)
    rt = Runtime(s, build_segmentations(s))
    app = rt.app
    seen: dict[str, tuple[Any, Any]] = {
        "app defaults": (app.conf.key_serializer, app.conf.value_serializer)}
    for name, table in app.tables.items():
        seen[f"table {name}"] = _serializers(table)
        seen[f"changelog {table.changelog_topic.get_topic_name()}"] = _serializers(
            table.changelog_topic)
    for agent in app.agents.values():
        seen[f"agent {agent.name}"] = _serializers(agent.channel)
    assert rt.modeling is not None
    for attr in ("input_topic", "routed_topic", "dlq_topic", "changes_topic"):
        seen[f"topic {attr}"] = _serializers(getattr(rt, attr))
    for attr in ("model_topic", "trainer_checkpoints", "training_topic"):
        seen[f"topic {attr}"] = _serializers(getattr(rt.modeling, attr))
    seen["topic definitions"] = _serializers(rt.definitions.topic)
    assert len(seen) >= 12, seen
    allowed = {"raw", "utf8", "orjson", "customer-state", "json"}
    for what, pair in seen.items():
        for codec_name in pair:
            assert isinstance(codec_name, str), f"{what}: {pair}"
            assert codec_name not in UNSAFE_CODECS and codec_name in allowed, f"{what}: {pair}"


# --- segment changes carry no personal data ----------------------------------------------------

def test_segment_changes_carry_no_personal_data() -> None:
    """Customers with full profiles (contact details, address, demographics) move through the
    shipped rule segmentations; every change is exactly a SegmentChange, and no profile value
    appears in it: only the customer id identifies the customer."""
    s = load_settings(clustering=False)
    step = Step(input_topic="in", routed_topic="routed", partitions=1,
                segmentations=build_segmentations(s))
    personal = {"jane.doe@example.org", "+49 170 1234567", "Jane", "Doe", "Jane Doe",
                "Hauptstr. 5", "10115", "Berlin", "1984-02-29", "Acme GmbH", "203.0.113.7",
                "Mozilla/5.0 (X11; Linux x86_64)", "85000"}
    # Not listed: gender, interests, lifestyle, values. Segments derived from them (gender
    # "female", psychographic "eco_minded") are the segmentation itself, not a leak.
    t0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
    customers: dict[str, Any] = {}
    docs: list[dict[str, Any]] = []
    for n in range(6):
        uid = f"cust-{n}"

        def ts(hours: int, day: int = n) -> str:
            return datetime.fromtimestamp(t0 + day * 86400 + hours * 3600, UTC).isoformat()

        docs.append({"type": "identify", "userId": uid, "anonymousId": f"anon-{n}",
                     "messageId": f"id-{n}", "timestamp": ts(0),
                     "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
                                 "channel": "web"},
                     "traits": {"email": "jane.doe@example.org", "phone": "+49 170 1234567",
                                "firstName": "Jane", "lastName": "Doe", "name": "Jane Doe",
                                "birthday": "1984-02-29", "company": "Acme GmbH",
                                "age": 30 + n, "gender": "female", "income": 85000,
                                "address": {"street": "Hauptstr. 5", "postalCode": "10115",
                                            "city": "Berlin", "country": "DE"},
                                "interests": ["running"], "lifestyle": ["vegan"],
                                "values": ["privacy"]}})
        for k in range(n + 1):
            docs.append({"type": "track", "event": "Order Completed", "userId": uid,
                         "messageId": f"o-{n}-{k}", "timestamp": ts(k + 1),
                         "properties": {"total": 120.0 * (k + 1), "currency": "EUR",
                                        "products": [{"category": "shoes", "price": 120.0}]}})
        docs.append({"type": "track", "event": "Email Link Clicked", "userId": uid,
                     "messageId": f"e-{n}", "timestamp": ts(n + 2), "properties": {}})
    msgs = [Message("in", 0, i, None, orjson.dumps(d), t0) for i, d in enumerate(docs)]
    wall = t0 + 30 * 86400
    result = step.run(0, msgs, customers, wall)
    assert not result.dead_letters and result.applied == len(docs)
    assert len(result.changes) >= 12  # value, lifecycle, demographic, geographic ... moved
    assert {c.record.segmentation for c in result.changes} >= {"rfm", "age_band", "gender",
                                                                  "geographic"}
    fields = set(SegmentChange.model_fields)
    for change in result.changes:
        record = change.document()
        assert set(record) == fields
        SegmentChange.model_validate(record)
        text = orjson.dumps(record).decode()
        leaked = {p for p in personal if p.lower() in text.lower()}
        assert not leaked, f"{leaked} in {record}"
        assert f"anon-{record['customer_id'][5:]}" not in text  # nor the linked anonymous id


def test_settings_repr_and_json_never_show_secrets() -> None:
    s = Settings(sasl_password=SECRET, admin_token=SECRET)  # type: ignore[arg-type]
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert SECRET not in text
