"""A reduced run of ``bench/quality.py``: the whole pure path finds the simulated personas."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.xfail(strict=True, reason="known, open (issue 14): on this small, young population "
                   "(200 customers, 40 days) k is re-chosen from the data late in the run; "
                   "with the move budget (1.5 % of the sample per version) served stability "
                   "is 0.985 (was 0.78 without it), but the published segments trail a model "
                   "that keeps moving and end at ARI truth 0.32 (needs 0.5); coverage passes "
                   "(the full 60-day run meets its figures)")
def test_reduced_quality_run_recovers_personas() -> None:
    bench = load_bench()
    report = bench.evaluate(customers=200, days=40.0, models=["kmeans"], min_learned=500)
    (row,) = report.rows
    assert report.events > 10_000
    assert row["coverage"] == 1.0  # after the final tick every customer has a segment
    assert row["ari_truth"] > 0.5  # chance level is 0
    assert row["stable_served"] > 0.9
    assert row["snapshots"] >= 3
