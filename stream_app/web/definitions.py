"""The rule definitions over HTTP.

- ``GET /segmentations``: the definitions in force on this worker (their text and each
  segmentation written out), their version, where and when they came from, and the last
  backfill. Open, as ``/segments`` is: definitions hold no customer's data.
- ``PUT /admin/segmentations`` (bearer ``SEGMENTER_ADMIN_TOKEN``; unset: not served): the
  same YAML or JSON as the definitions file (``Content-Type: application/json`` for JSON,
  anything else is read as YAML), at most ``MAX_DEFINITIONS_BYTES`` (413 beyond). Checked in
  full: invalid definitions get 400 with every problem located, and nothing changes; valid
  ones are published to the definitions topic, which every worker follows
  (:mod:`stream_app.host.redefinition`). The answer waits (up to 10 s) for this worker to have
  switched: 200 with the version, ``"applied": true``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from ..core.segmentation.rules import DefinitionsError
from ..core.segmentation.rules.live import MAX_DEFINITIONS_BYTES, format_of, parse_set
from .access import Gate

if TYPE_CHECKING:
    from ..config import Settings
    from ..host.redefinition import Definitions

log = logging.getLogger(__name__)
APPLY_WAIT_S = 10.0


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (read no further)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def register_definitions(app: Any, settings: Settings, live: Definitions) -> None:
    """``GET /segmentations`` and ``PUT /admin/segmentations`` on ``app``, over ``live``."""

    @app.page("/segmentations")
    class Segmentations(View):
        async def get(self, request: Request) -> Response:
            return self.json(live.describe())

    token = settings.admin_token
    if token is None or not token.get_secret_value():
        return
    denied = Gate(token, setting="SEGMENTER_ADMIN_TOKEN", realm="segmenter-admin",
                  loopback_without_token=False).check

    @app.page("/admin/segmentations")
    class AdminSegmentations(View):
        async def put(self, request: Request) -> Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            body = await read_bounded(request, MAX_DEFINITIONS_BYTES)
            if body is None:
                return self.json({"error": f"definitions over {MAX_DEFINITIONS_BYTES} bytes"},
                                 status=413)
            try:
                defs = parse_set(body, format=format_of(request.content_type or ""),
                                 source="api", name="request")
            except DefinitionsError as exc:
                live.rejected("api", exc)
                return self.json({"error": "invalid definitions", "detail": str(exc),
                                  "version_in_force": live.version}, status=400)
            if defs.version != live.version:
                await live.publish(defs)
            applied = await live.wait_applied(defs.version, APPLY_WAIT_S)
            return self.json({"version": defs.version, "version_hex": f"{defs.version:08x}",
                              "applied": applied,
                              "segmentations": [seg.name for seg in defs.segmentations]},
                             status=200 if applied else 202)
