"""Settings validation at start-up (stream_app.config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_app.config import SettingsError, load_settings

SECRET = "hunter2-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SEGMENTER_* variables and no .env file but the ones a test sets."""
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def fails(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert (s.partitions, s.web_port, s.input_topic, s.app_id) == (
        8, 6066, "customer-interactions", "segmenter")
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert (s.routed_topic, s.model_topic) == ("segmenter-routed", "segmenter-model")


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SEGMENTER_PARTITIONS=3\nSEGMENTER_WEB_PORT=7000\n")
    monkeypatch.setenv("SEGMENTER_WEB_PORT", "7001")
    monkeypatch.setenv("SEGMENTER_BROKER_URL", "kafka://a:9092;b.example:19092")
    monkeypatch.setenv("SEGMENTER_APP_ID", "seg-2")
    s = load_settings()
    assert (s.partitions, s.web_port) == (3, 7001)  # the environment wins over .env
    assert s.bootstrap_servers == ["a:9092", "b.example:19092"]
    assert s.routed_topic == "seg-2-routed"


@pytest.mark.parametrize(("var", "value"), [
    ("SEGMENTER_WEB_PORT", "abc"),
    ("SEGMENTER_WEB_PORT", "0"),
    ("SEGMENTER_WEB_PORT", "70000"),
    ("SEGMENTER_BROKER_URL", "http://x"),
    ("SEGMENTER_BROKER_URL", "kafka://host"),
    ("SEGMENTER_BROKER_URL", "kafka://host:99999"),
    ("SEGMENTER_BROKER_URL", "kafka://"),
    ("SEGMENTER_BROKER_URL", "kafka://a:9092;b"),
    ("SEGMENTER_PARTITIONS", "0"),
    ("SEGMENTER_PARTITIONS", "-1"),
    ("SEGMENTER_PARTITIONS", "2000"),
    ("SEGMENTER_APP_ID", "bad id"),
    ("SEGMENTER_INPUT_TOPIC", "bad topic!"),
    ("SEGMENTER_MEMBERSHIPS_TOPIC", "bad topic!"),
    ("SEGMENTER_MEMBERSHIPS_TOPIC", "segment-changes"),
    ("SEGMENTER_LOG_LEVEL", "verbose"),
    ("SEGMENTER_STORE", "redis"),
    ("SEGMENTER_SECURITY_PROTOCOL", "TLS"),
    ("SEGMENTER_BATCH_WITHIN", "-1"),
    ("SEGMENTER_CLUSTER_MODEL", "gmm"),
])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                      value: str) -> None:
    message = fails(monkeypatch, **{var: value})
    assert var in message
    assert message.count("\n") == 1  # one line per bad setting, and only that one


def test_every_bad_setting_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fails(monkeypatch, SEGMENTER_WEB_PORT="abc", SEGMENTER_PARTITIONS="0")
    assert "SEGMENTER_WEB_PORT" in message and "SEGMENTER_PARTITIONS" in message


def test_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="SEGMENTER_WEB_PORT"):
        load_settings(web_port=0)
    assert load_settings(partitions=2).partitions == 2


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_needs_username_and_password(monkeypatch: pytest.MonkeyPatch,
                                          protocol: str) -> None:
    message = fails(monkeypatch, SEGMENTER_SECURITY_PROTOCOL=protocol,
                    SEGMENTER_SASL_USERNAME="bob")
    assert "SEGMENTER_SASL_PASSWORD" in message
    message = fails(monkeypatch, SEGMENTER_SASL_USERNAME="", SEGMENTER_SASL_PASSWORD=SECRET)
    assert "SEGMENTER_SASL_USERNAME" in message
    assert SECRET not in message


def test_sasl_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SEGMENTER_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SEGMENTER_SASL_USERNAME", "bob")
    monkeypatch.setenv("SEGMENTER_SASL_PASSWORD", SECRET)
    s = load_settings()
    assert s.sasl_password is not None and s.sasl_password.get_secret_value() == SECRET
    for text in (repr(s), str(s), s.model_dump_json()):
        assert SECRET not in text


@pytest.mark.parametrize("name", ["SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE", "SEGMENTS_FILE"])
def test_missing_files_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 name: str) -> None:
    message = fails(monkeypatch, **{f"SEGMENTER_{name}": str(tmp_path / "missing.pem")})
    assert f"SEGMENTER_{name}" in message and "missing.pem" in message
    (tmp_path / "present.pem").write_text("x")
    monkeypatch.setenv(f"SEGMENTER_{name}", str(tmp_path / "present.pem"))
    assert load_settings() is not None


@pytest.mark.parametrize("env", [
    {"SEGMENTER_SASL_PASSWORD": SECRET, "SEGMENTER_WEB_PORT": "abc"},
    {"SEGMENTER_SASL_PASSWORD": SECRET, "SEGMENTER_SECURITY_PROTOCOL": "SASL_SSL"},
    {"SEGMENTER_SASL_PASSWORD": SECRET, "SEGMENTER_SSL_CAFILE": "/nonexistent/ca.pem"},
    {"SEGMENTER_ADMIN_TOKEN": SECRET, "SEGMENTER_PARTITIONS": "x"},
    {"SEGMENTER_ADMIN_TOKEN": SECRET, "SEGMENTER_SEGMENTS_FILE": "/nonexistent.yaml"},
])
def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    message = fails(monkeypatch, **env)
    assert SECRET not in message


def test_a_bad_secret_is_named_but_not_shown() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(sasl_password=["not", SECRET])
    assert "SEGMENTER_SASL_PASSWORD" in str(info.value) and SECRET not in str(info.value)


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.partitions = 3  # type: ignore[misc]
