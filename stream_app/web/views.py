"""HTTP views served by each worker: health, customers, segments."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from faust.exceptions import SameNode
from faust.web import Request, Response, View

from ..state.codec import to_json
from ..state.features import features

if TYPE_CHECKING:
    from ..app import Runtime


def register_views(rt: Runtime) -> None:
    app = rt.app

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
            }
            return self.json(body, status=200 if consumer_ready else 503)

    @app.page("/customers/{customer_id}")
    class Customer(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            # The customer's partition may be served by another worker: proxy there.
            try:
                return await app.router.route_req(rt.customers.name, customer_id, self.web,
                                                  request)
            except SameNode:
                pass
            except (TypeError, KeyError):  # assignment metadata not known yet: answer locally
                pass
            state = rt.customer(customer_id)
            if state is None:
                return self.json({"error": "unknown customer", "id": customer_id}, status=404)
            return self.json(customer_document(rt, state))


def customer_document(rt: Runtime, state: Any) -> dict[str, Any]:
    now = state.last_seen
    feats = features(state, now, rt.step.cfg)
    segments: dict[str, Any] = {}
    for seg in rt.segmentations:
        decision = seg.evaluate(state, feats, now, state.segment_aux.get(seg.name))
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
        "anonymous_ids": state.anonymous_ids,
        "traits": state.traits,
        "features": feats,
        "segments": segments,
        "first_seen": raw["first_seen"],
        "last_seen": raw["last_seen"],
        "events": state.events,
    }
