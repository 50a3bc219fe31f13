"""HTTP views served by each worker: health, customers, segments."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from faust.exceptions import SameNode
from faust.web import Request, Response, View

from ..core.events.interaction import ANON_PREFIX
from ..core.predictive.live import NO_PREDICTIONS, distribution
from ..core.state.codec import to_json
from ..core.state.customer import CustomerState, Link
from ..core.state.features import features
from .access import Gate
from .members import register_members

if TYPE_CHECKING:
    from ..host.worker_view import WorkerView

STATIC = Path(__file__).parent / "static"
DISTRIBUTION_SAMPLE = 5000  # customers per worker in the dashboard's predictions panel


def register_views(rt: WorkerView) -> None:
    app = rt.app
    register_members(rt)  # GET /segments/{segmentation}/{segment}/members

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            consumer_ready = rt.ready()
            body = {
                "status": "ok" if consumer_ready else "starting",
                "app_id": rt.settings.app_id,
                "uptime_s": round(time.time() - rt.started_at, 1),
                "rebalancing": bool(app.rebalancing),
                "assigned_partitions": sorted(
                    tp.partition for tp in app.assignor.assigned_actives()
                    if tp.topic == rt.settings.input_topic),
                "watermark": rt.watermark,
                "stats": dict(rt.stats),
                "dropped_stale": app.batch_sink.dropped_stale if app.batch_sink else 0,
                "broker": rt.broker_watch.report(),
            }
            return self.json(body, status=200 if consumer_ready else 503)

    personal = Gate(rt.settings.api_token, setting="SEGMENTER_API_TOKEN",
                    realm="segmenter", loopback_without_token=True)

    @app.page("/customers/{customer_id}")
    class Customer(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            refused = personal.check(self, request)
            if refused is not None:
                return refused
            # The customer's partition may be served by another worker: proxy there.
            try:
                return await app.router.route_req(rt.table_name, customer_id, self.web,
                                                  request)
            except SameNode:
                pass
            except (TypeError, KeyError):  # assignment metadata not known yet: answer locally
                pass
            state = rt.customer(customer_id)
            if type(state) is Link:
                return self.json({"id": customer_id, "merged_into": state.target})
            if type(state) is not CustomerState:  # absent, or erased
                return self.json({"error": "unknown customer", "id": customer_id}, status=404)
            return self.json(customer_document(rt, state))


    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body, ctype = rt.metrics.exposition(request.headers.get("Accept"))
            return self.bytes(body, headers={"Content-Type": ctype})

    @app.page("/dashboard")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html((STATIC / "dashboard.html").read_text())

    @app.page("/dashboard/data")
    class DashboardData(View):
        async def get(self, request: Request) -> Response:
            since = request.query.get("since")
            try:
                since_f = float(since) if since else None
            except ValueError:
                return self.json({"error": "since must be a number"}, status=400)
            return self.json(rt.sampler.snapshot(since_f))

    app.web.add_static("/dashboard/static", STATIC)

    @app.page("/predictions/model")
    class PredictionsModel(View):
        """The BG/NBD and Gamma-Gamma parameters this worker predicts with (null parts
        while not fitted; every worker follows the same snapshots)."""

        async def get(self, request: Request) -> Response:
            if rt.predictions is None:
                return self.json({"bgnbd": None, "gamma_gamma": None, "version": None})
            return self.json(rt.predictions.model_document())

    cached: dict[str, Any] = {"at": 0.0, "doc": None}

    @app.page("/predictions/distribution")
    class PredictionsDistribution(View):
        """The dashboard's predictions panel: p_alive and expected 90-day revenue across
        this worker's customers (a uniform sample of at most DISTRIBUTION_SAMPLE, every
        k-th key), and by behavioural segment; computed at most every 15 s."""

        async def get(self, request: Request) -> Response:
            if rt.predictions is None:
                return self.json({"customers": 0, "version": None, "off": True})
            if cached["doc"] is None or time.monotonic() - cached["at"] > 15.0:
                keys = list(rt.customer_ids())
                every = max(1, len(keys) // DISTRIBUTION_SAMPLE)
                states = (rt.customer(k) for k in keys[::every])
                cached["doc"] = distribution(
                    ((st.purchases, st.segments.get("behavior")) for st in states
                     if type(st) is CustomerState), rt.predictions, rt.event_time_now())
                cached["doc"]["sampled_every"] = every
                cached["at"] = time.monotonic()
            return self.json(cached["doc"])

    @app.page("/segments")
    class Segments(View):
        """Every segmentation with its segments, profiles and live sizes (all workers)."""

        async def get(self, request: Request) -> Response:
            local = local_sizes(rt)
            sizes = local
            if request.query.get("scope") != "local":
                sizes = await cluster_sizes(rt, local)
            return self.json(segments_document(rt, sizes))


def local_sizes(rt: WorkerView) -> dict[str, dict[str, int]]:
    return rt.sizes.totals(rt.assigned())


async def cluster_sizes(rt: WorkerView, local: dict[str, dict[str, int]]
                        ) -> dict[str, dict[str, int]]:
    """Sum the local sizes of every worker in the group (one request to each peer)."""
    me = str(rt.app.conf.canonical_url).rstrip("/")
    try:
        peers = {str(url).rstrip("/") for url in rt.app.router.tables_metadata()} - {me}
    except Exception:
        peers = set()
    totals = {seg: dict(counts) for seg, counts in local.items()}
    if not peers:
        return totals

    async def fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        async with session.get(f"{url}/segments?scope=local") as resp:
            return await resp.json()  # type: ignore[no-any-return]

    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(fetch(session, u) for u in peers),
                                       return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException):
            continue
        for seg in res.get("segmentations", []):
            bucket = totals.setdefault(seg["name"], {})
            for segment in seg.get("segments", []):
                bucket[segment["id"]] = bucket.get(segment["id"], 0) + int(segment.get("size", 0))
    return totals


def segments_document(rt: WorkerView, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    out = []
    for seg in rt.segmentations:
        desc = seg.describe()
        counts = sizes.get(seg.name, {})
        total = sum(counts.values())
        segments = []
        known = set()
        for item in desc.get("segments", []):
            sid = item.get("id")
            known.add(sid)
            n = counts.get(sid, 0)
            segments.append({**item, "size": n, "share": n / total if total else 0.0})
        for sid, n in sorted(counts.items()):
            if sid not in known:  # e.g. a retired cluster still holding customers
                segments.append({"id": sid, "size": n, "share": n / total if total else 0.0,
                                 "retired": True})
        out.append({**{k: v for k, v in desc.items() if k != "segments"}, "name": seg.name,
                    "customers": total, "segments": segments})
    return {"segmentations": out, "event_time": rt.event_time_now()}


def customer_document(rt: WorkerView, state: Any) -> dict[str, Any]:
    now = state.last_seen
    feats = features(state, now, rt.step.cfg)
    # at event time as the worker's ticks have it (T runs to the evaluation time)
    predicted_at = max(state.last_seen, state.evaluated_at, rt.event_time_now())
    predictions = (rt.predictions.of(state.purchases, predicted_at)
                   if rt.predictions is not None else NO_PREDICTIONS)
    feats.update(predictions)
    segments: dict[str, Any] = {}
    for seg in rt.segmentations:
        decision = seg.decide(state, feats, now, state.segment_aux.get(seg.name), explain=True)
        current = state.segments.get(seg.name)
        segments[seg.name] = {
            "segment": current,
            "segment_name": decision.segment_name if decision.segment == current else None,
            "reason": decision.reason if decision.segment == current else None,
            "why": decision.why if decision.segment == current else {},
        }
    raw = to_json(state)
    return {
        "id": state.customer_id,
        "anonymous": state.anonymous,
        "anonymous_ids": [k[len(ANON_PREFIX):] for k in state.merged_ids
                          if k.startswith(ANON_PREFIX)],
        "merged_ids": state.merged_ids,
        "traits": state.traits,
        "features": feats,
        "predictions": {**predictions, "evaluated_at": predicted_at,
                        "model_version": rt.predictions.version
                        if rt.predictions is not None and rt.predictions.ready else None},
        "segments": segments,
        "first_seen": raw["first_seen"],
        "last_seen": raw["last_seen"],
        "events": state.events,
    }
