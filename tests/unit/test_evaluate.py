"""``segmenter evaluate``: a history (CSV with the replay mapping, or JSON lines) through the
pure pipeline, and the figures it prints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from stream_app.cli.main import cli
from stream_app.evaluation import adjusted_rand
from stream_app.simulate_long import horizon_populations

runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("SEGMENTER_CLUSTER_MODEL", "SEGMENTER_MODEL_MIN_LEARNED"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str) -> dict:
    result = runner.invoke(cli, ["evaluate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_evaluate_a_csv_of_orders(tmp_path: Path) -> None:
    pop = horizon_populations(customers=200, days=240.0, seed=2)[1]  # orders only
    path = tmp_path / "orders.csv"
    rows = 0
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["cust_id", "ts", "total", "cat"])
        for e in pop:
            out.writerow([e["userId"], e["timestamp"], e["properties"]["total"],
                          e["properties"]["category"]])
            rows += 1
    doc = run(str(path), "--mapping", "customer=cust_id,timestamp=ts,amount=total,category=cat")
    assert doc["events"] == rows and doc["dead_letters"] == 0
    assert doc["customers"] == len({e["userId"] for e in pop})
    assert doc["assigned"] == doc["customers"]  # everyone with data is in a segment
    assert doc["versions"] >= 3 and len(doc["segments"]) >= 2
    assert sum(s["members"] for s in doc["segments"]) == doc["assigned"]
    for seg in doc["segments"]:  # a purchase-only history: no browsing or e-mail figures
        assert seg["typical"]["product_views_per_month"] == 0.0
        assert seg["typical"]["email_opens_per_month"] == 0.0
    assert 0.3 < doc["ari_batch_kmeans"] <= 1.0 and -1.0 <= doc["ari_rfm_kmeans"] <= 1.0
    assert len(doc["new_ids_per_quarter"]) == 3
    assert doc["stability"]["versions_measured"] >= 2
    served = doc["stability_served"]  # the same transitions, through the hysteresis
    assert served["versions_measured"] == doc["stability"]["versions_measured"]
    assert 0.0 <= served["worst"] <= served["mean"] <= 1.0
    assert 0.0 <= doc["changes_per_customer_day"] < 0.5
    assert doc["unassigned_after_first_ready_model"] == 0
    assert doc["first_event"] < doc["last_event"]


def test_evaluate_json_lines_and_the_readable_report(tmp_path: Path) -> None:
    pop = horizon_populations(customers=120, days=150.0, seed=4)[0]  # browsing, e-mail, orders
    path = tmp_path / "events.jsonl"
    with path.open("wb") as handle:
        for e in pop:
            handle.write(orjson.dumps(e) + b"\n")
        handle.write(b'{"type": "track", "event": "Order Completed"}\n')  # no customer id
    bad = runner.invoke(cli, ["evaluate", str(path)])
    assert bad.exit_code == 1 and "needs userId or anonymousId" in bad.output
    lines = path.read_bytes().splitlines()[:-1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    doc = run(str(path))
    assert doc["events"] == len(lines) and doc["assigned"] == doc["customers"]
    assert any(s["typical"]["product_views_per_month"] > 0 for s in doc["segments"])
    text = runner.invoke(cli, ["evaluate", str(path)])
    assert text.exit_code == 0, text.output
    for words in ("Behavioural segments", "ARI vs batch k-means", "new segment ids per quarter",
                  "kept across versions, served", "nearest id kept, raw",
                  "segment changes per customer per day"):
        assert words in text.stdout


def test_evaluate_refuses_an_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "history.xlsx"
    path.write_text("x")
    result = runner.invoke(cli, ["evaluate", str(path)])
    assert result.exit_code == 2 and "unknown history format" in result.output


def test_adjusted_rand_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 300)
        b = np.where(rng.random(300) < 0.6, a, rng.integers(0, 7, 300))
        assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand(["x", "x", "y"], ["p", "p", "q"]) == 1.0
