"""The ops dashboard in a real headless Chromium, fed by real sampler output.

The page is served the way the worker serves it (``/dashboard``, ``/dashboard/static/``,
``/dashboard/data``); the data comes from a :class:`Sampler` over a real metrics registry whose
metrics move between samples. A screenshot is kept under ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web

import stream_app.web
from stream_app.metrics import Metrics
from stream_app.web.timeseries import Sampler

STATIC = Path(stream_app.web.__file__).parent / "static"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHARTS = ("chart-throughput", "chart-lag", "chart-dead", "chart-changes", "chart-latency",
          "chart-event-latency", "chart-segments")
HISTORY_SAMPLES = 40


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed for the dashboard test and is not installed: "
                "run `sh scripts/test-deps.sh` as root (apt-get install chromium)")


class _Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _move(metrics: Metrics, step: int, now: float) -> None:
    """One sampling interval of a busy worker."""
    metrics.observe_batch(120 + 10 * (step % 7), 0.02 + 0.002 * (step % 5))
    metrics.count_events(["page_view"] * (300 + 30 * (step % 7)) + ["order"] * 50)
    metrics.count_dead_letters(["not_json"] * (step % 3) + ["missing_id"] * (step % 2))
    metrics.count_duplicates(step % 4)
    metrics.record_changes([("behavior", now - 0.05 * (1 + step % 4), now - 30.0)] * (5 + step % 6),
                           now=now)
    metrics.set_consumer_lag({("customer-interactions", p): 10 * p + step % 9 for p in range(4)})
    metrics.set_segment_sizes({
        "behavior": {f"c{k}": 100 * (k + 1) + 3 * step for k in range(4)},
        "value_tier": {"gold": 40 + step, "silver": 120, "bronze": 300 - step},
    })


def _predictions() -> dict[str, object]:
    """What the worker's /predictions/distribution answers, for 200 customers in 3 segments."""
    from stream_app.core.predictive import BgNbdParams, GammaGammaParams
    from stream_app.core.predictive.live import LivePredictions, distribution
    from stream_app.core.predictive.summary import PurchaseSummary

    live = LivePredictions.fixed(BgNbdParams(0.5, 20.0, 0.8, 3.0),
                                 GammaGammaParams(6.0, 4.0, 15.0), version=4)
    customers = [(PurchaseSummary(19000, 20.0, 19000 + 3 * (i % 90), i % 7 if i % 90 else 0,
                                  40.0 * (i % 7)), f"c{i % 3}") for i in range(200)]
    return {**distribution(customers, live, 19200 * 86400.0), "sampled_every": 1}


@pytest.fixture
async def dashboard_base_url() -> AsyncIterator[str]:
    """A stand-in for the worker's web server: same routes, real sampler output."""
    clock = _Clock(time.time() - 2.0 * HISTORY_SAMPLES)
    metrics = Metrics(clock=clock)
    metrics.set_model(7, clock.now - 600.0)
    sampler = Sampler(metrics.registry, interval_s=2.0, clock=clock)
    for step in range(HISTORY_SAMPLES):
        _move(metrics, step, clock.now)
        sampler.sample()
        clock.now += 2.0

    async def data(request: web.Request) -> web.Response:
        # Each poll sees one more sample, as with the worker's sampling timer. (Chromium runs
        # on virtual time: polls come faster than real time, so the clock is stepped.)
        _move(metrics, HISTORY_SAMPLES, clock.now)
        sampler.sample()
        clock.now += 2.0
        since = request.query.get("since")
        return web.json_response(sampler.snapshot(float(since) if since else None))

    async def predictions(_: web.Request) -> web.Response:
        return web.json_response(_predictions())

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "dashboard.html")

    app = web.Application()
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data", data)
    app.router.add_get("/predictions/distribution", predictions)
    app.router.add_static("/dashboard/static", STATIC)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _chromium_run(url: str, profile: Path, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--window-size=1440,1500", "--virtual-time-budget=6000", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("headless Chromium did not finish within 90 s")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


class _Dom(HTMLParser):
    """Attributes of elements with an id, and text of the elements the test reads."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.options: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.by_id[str(found["id"])] = found
            self._open = str(found["id"])
            self.text[self._open] = ""
        if tag == "option" and found.get("value"):
            self.options.append(str(found["value"]))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.text[self._open] += data

    def handle_endtag(self, tag: str) -> None:
        self._open = None


async def test_dashboard_draws_live_data(dashboard_base_url: str, tmp_path: Path) -> None:
    url = f"{dashboard_base_url}/dashboard"
    dom = _Dom()
    dom.feed(await _chromium_run(url, tmp_path / "profile-dom", "--dump-dom"))

    points = {chart: int(dom.by_id[chart].get("data-points") or 0) for chart in CHARTS}
    assert all(n > 0 for n in points.values()), f"charts without drawn points: {points}"
    # Throughput has three series over the whole history.
    assert points["chart-throughput"] >= 3 * (HISTORY_SAMPLES - 1)
    assert dom.by_id["status"].get("data-state") == "live", dom.text.get("status")
    assert dom.text["kpi-model"] == "v7"
    assert dom.text["kpi-events"] not in ("", "–")
    assert {"behavior", "value_tier"} <= set(dom.options)
    # the predictions panel drew its histograms and table (the caption is set last)
    assert dom.text["predictions-model"] == "model v4; 200 customers with an order"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    await _chromium_run(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"


async def test_real_worker_dashboard_draws_its_own_traffic(worker, producer, tmp_path: Path
                                                           ) -> None:
    """The worker's own /dashboard, fed by events that flowed through the real broker."""
    from itertools import islice

    import orjson

    from stream_app.simulate import simulate

    from .conftest import wait_for

    events = list(islice(iter(simulate(customers=150, days=30, seed=3)), 6000))
    for i, event in enumerate(events):
        key = (event.get("userId") or event.get("anonymousId")).encode()
        producer.send("customer-interactions", orjson.dumps(event), key=key)
        if i % 1500 == 0:
            producer.flush()
            await asyncio.sleep(2.1)  # spread over several sampling intervals
    producer.send("customer-interactions", b"{not json")
    producer.flush()

    def sampled() -> bool:
        doc = worker.get("/dashboard/data").json()
        rates = [v for _, v in doc["series"]["events_per_s"] if v]
        return len(rates) >= 2 and bool(doc["segment_sizes"])

    wait_for(sampled, timeout=60, what="the sampler to see traffic and segment sizes")
    dom = _Dom()
    url = f"{worker.base_url}/dashboard"
    dom.feed(await _chromium_run(url, tmp_path / "profile-dom", "--dump-dom"))
    points = {chart: int(dom.by_id[chart].get("data-points") or 0)
              for chart in ("chart-throughput", "chart-segments", "chart-changes")}
    assert all(n > 0 for n in points.values()), f"charts without drawn points: {points}"
    assert dom.text["kpi-events"] not in ("", "–")
    assert {"rfm", "lifecycle"} <= set(dom.options)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-worker.png"
    shot.unlink(missing_ok=True)
    await _chromium_run(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"
