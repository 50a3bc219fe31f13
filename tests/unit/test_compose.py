"""docker-compose.yml and what it mounts, checked by Compose itself (``docker-compose config``).

No Docker engine is needed: ``config`` validates and resolves the file without one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app.config import Settings
from stream_app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"GRAFANA_ADMIN_PASSWORD": "grafana-secret", "SEGMENTER_ADMIN_TOKEN": "admin-token",
            "SEGMENTER_WRITE_KEYS": "write-key-for-tests"}
SERVICES = {"kafka", "topic-init", "worker", "collector", "kafka-ui", "prometheus", "grafana"}


def _compose(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is needed to validate docker-compose.yml and is not "
                    "installed: run `sh scripts/test-deps.sh` as root (apt-get install "
                    "docker-compose)")
    # An empty env file: a developer's .env must not satisfy the required variables.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _compose(tmp_path_factory.mktemp("compose"), REQUIRED)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_all_services_are_defined(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("kafka", "worker", "prometheus", "grafana"):
        check = compose["services"][name].get("healthcheck")
        assert check and check["test"], f"{name} has no healthcheck"


def test_start_up_is_gated_on_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions["topic-init"] == {"kafka": "service_healthy"}
    assert conditions["worker"] == {"kafka": "service_healthy",
                                    "topic-init": "service_completed_successfully"}
    assert conditions["kafka-ui"] == {"kafka": "service_healthy"}
    assert conditions["grafana"] == {"prometheus": "service_healthy"}


def test_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert worker["build"]["context"] == str(ROOT)
    assert worker["environment"]["SEGMENTER_BROKER_URL"] == "kafka://kafka:9092"
    web_port = str(worker["environment"]["SEGMENTER_WEB_PORT"])
    for published in worker.get("ports", []):
        match = re.fullmatch(r"(?:([\d.]+):)?(\d+(?:-\d+)?):(\d+)(?:/tcp)?", str(published))
        assert match, f"unexpected port syntax {published!r}"
        host_ip, host_ports, target = match.groups()
        assert target == web_port
        first, _, last = host_ports.partition("-")
        assert last and int(last) - int(first) >= 2, f"{published}: replicas need a port range"
        assert host_ip == "127.0.0.1"


def test_dockerfile_builds_the_worker() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "RUN pip install ." in dockerfile
    assert 'CMD ["segmenter", "worker"]' in dockerfile


def test_topic_init_creates_the_configured_topics(compose: dict[str, Any]) -> None:
    script = " ".join(compose["services"]["topic-init"]["command"])
    fields = Settings.model_fields  # the defaults, whatever this shell's environment says
    for topic in (fields[name].default for name in ("input_topic", "dlq_topic", "changes_topic")):
        assert re.search(rf"topic {re.escape(topic)} \S+ cleanup\.policy=delete,retention\.ms=\d+",
                         script), topic


def test_topic_init_creates_the_memberships_topic_compacted(compose: dict[str, Any]) -> None:
    script = " ".join(compose["services"]["topic-init"]["command"])
    topic = Settings.model_fields["memberships_topic"].default
    assert re.search(rf"topic {re.escape(topic)} \S+ cleanup\.policy=compact\b", script)


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_missing_required_variable_is_refused(tmp_path: Path, missing: str) -> None:
    env = {name: value for name, value in REQUIRED.items() if name != missing}
    result = _compose(tmp_path, env)
    assert result.returncode != 0
    assert f"set {missing} (" in result.stderr, result.stderr  # our message, not a dump


def test_prometheus_discovers_every_worker(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "segmenter")
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert str(discovery["port"]) == str(
        compose["services"]["worker"]["environment"]["SEGMENTER_WEB_PORT"])
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.endswith(":/etc/prometheus/prometheus.yml:ro") for m in mounts)


def test_grafana_is_provisioned_with_the_dashboard(compose: dict[str, Any]) -> None:
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/segmenter.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{path}:ro") for m in compose["services"]["grafana"]["volumes"])

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/segmenter.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Throughput", "Consumer lag", "Dead letters by reason", "Segment changes per minute",
            "Latency p99", "Model version"} <= titles
    assert any(t.startswith("Segment sizes") for t in titles)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = {family.name + suffix for family in Metrics().registry.collect()
                for suffix in SUFFIXES[family.type]}
    dashboard = (ROOT / "deploy/grafana/dashboards/segmenter.json").read_text()
    queried = set(re.findall(r"\bsegmenter_\w+", dashboard))
    assert queried, "the dashboard queries no segmenter metric"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
