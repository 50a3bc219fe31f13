"""The collector service of docker-compose.yml, as Compose itself resolves it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"GRAFANA_ADMIN_PASSWORD": "grafana-secret", "SEGMENTER_ADMIN_TOKEN": "admin-token",
            "SEGMENTER_WRITE_KEYS": "compose-write-key-1,compose-write-key-2"}


def _config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is needed to validate docker-compose.yml (apt-get install "
                    "docker-compose)")
    env_file = tmp_path / "empty.env"  # a developer's .env must not satisfy the variables
    env_file.write_text("")
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _config(tmp_path_factory.mktemp("compose"), REQUIRED)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]["collector"]


def test_collector_service(collector: dict[str, Any]) -> None:
    assert collector["command"] == ["segmenter", "collect"]
    assert collector["image"] == "segmenter:latest"
    env = collector["environment"]
    assert env["SEGMENTER_BROKER_URL"] == "kafka://kafka:9092"
    assert env["SEGMENTER_COLLECTOR_HOST"] == "0.0.0.0"  # in the container
    assert env["SEGMENTER_WRITE_KEYS"] == REQUIRED["SEGMENTER_WRITE_KEYS"]
    assert "container_name" not in collector  # it scales
    for published in collector["ports"]:  # Compose 1.29 keeps the short form
        host_ip, host_ports, target = str(published).rsplit(":", 2)
        assert host_ip == "127.0.0.1"  # published on loopback unless SEGMENTER_COLLECTOR_BIND
        assert target.removesuffix("/tcp") == str(env["SEGMENTER_COLLECTOR_PORT"])
    assert collector["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "/health" in " ".join(collector["healthcheck"]["test"])


def test_compose_refuses_to_start_without_write_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "SEGMENTER_WRITE_KEYS"}
    result = _config(tmp_path, env)
    assert result.returncode != 0
    assert "SEGMENTER_WRITE_KEYS" in result.stderr
