"""The front door: ``make demo`` as the README runs it, for a minute of its traffic.

A newcomer's first command must neither die nor show nothing. The demo's own traffic
includes keyless and keyed bad messages (a keyless dead letter once killed the worker on
input partitions 4-7, because the DLQ has fewer partitions); the demo exits non-zero when its
worker dies, and prints a summary line this test reads.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.slow(70)
@pytest.mark.timeout(240)
def test_make_demo_runs_a_minute_with_traffic_flowing(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: the README's demo command needs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env["SEGMENTER_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen([make, "--no-print-directory", "demo", "DEMO_ARGS=--duration 60"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("make demo did not stop after --duration 60:\n" + out.decode()[-3000:])
    text = out.decode(errors="replace")
    summary = re.search(r"demo summary: worker (\w+), published (\d+), applied (\d+), "
                        r"dead letters (\d+), segment changes (\d+)", text)
    assert summary, "no summary line:\n" + text[-3000:]
    state, published, applied, dead, changes = summary.groups()
    assert proc.returncode == 0 and state == "alive", text[-3000:]
    assert int(published) > 10_000, text[-1500:]
    assert int(applied) > 10_000, text[-1500:]
    assert int(dead) >= 4, "the demo's four bad messages are dead-lettered"
    assert int(changes) > 100, text[-1500:]
