"""``GET /segments/{segmentation}/{segment}/members``: the customer ids in a segment, paged,
across all workers.

Each worker answers for the customers of the partitions assigned to it (``scope=local``);
the worker that got the request asks every peer and merges. Pages are in customer-id order
(code points), and the cursor is the last id of the page (base64url): the next page is the
ids after it. So a cursor is stable across rebalances and restarts (it names no worker,
partition or offset), bounded (one id), and a customer that stays in the segment while a
client pages through is returned exactly once; one that joins or leaves meanwhile may or may
not be. A page is refused (503) rather than answered incomplete when a peer does not answer
or some partition is not served (a rebalance): retry it with the same cursor.

Customer ids are personal data: the same gate as ``/customers/{id}`` (SEGMENTER_API_TOKEN).
No index is kept (memory per customer stays as it was): a worker scans its customers for a
segment once and serves the following pages from that scan for a while
(:class:`LocalMembers`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from faust.web import Request, Response, View

from ..core.routing import partition_of
from ..core.state.customer import CustomerState
from .access import Gate

if TYPE_CHECKING:
    from ..host.worker_view import WorkerView

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR = 2048  # characters: an id (<= 269 characters, UTF-8) in base64url
MAX_SEGMENT = 200
PEER_TIMEOUT_S = 10.0


class BadRequest(ValueError):
    """Answered 400 with this message."""


def encode_cursor(customer_id: str) -> str:
    return base64.urlsafe_b64encode(customer_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    if len(cursor) > MAX_CURSOR:
        raise BadRequest(f"cursor: at most {MAX_CURSOR} characters (use the next_cursor of "
                         f"the previous page as it is)")
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor: not a cursor of this endpoint (use the next_cursor of the "
                         "previous page as it is)") from None


def parse_query(query: Any) -> tuple[int, str | None]:
    """(limit, the id the page starts after) from the query string."""
    raw = query.get("limit")
    if raw is None or raw == "":
        limit = DEFAULT_LIMIT
    else:
        try:
            limit = int(raw)
        except ValueError:
            raise BadRequest(f"limit: an integer from 1 to {MAX_LIMIT}, not {raw[:40]!r}"
                             ) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit: an integer from 1 to {MAX_LIMIT}, not {limit}")
    cursor = query.get("cursor")
    return limit, (decode_cursor(cursor) if cursor else None)


class LocalMembers:
    """This worker's members of a segment, for pages: the sorted ids of one scan of the local
    customers, kept ``CACHE_S`` for the following pages (an export asks for many), and each
    id checked again against its state when a page is served.

    A scan costs ~6 µs a customer (the partition check and a state read; more with RocksDB,
    which decodes each state): 0.6 s for 100,000. It yields to the event loop every
    ``SCAN_CHUNK`` customers so batches go on meanwhile, and runs once per segment per
    ``CACHE_S`` however many pages are asked for. So a page may miss a customer that joined
    the segment in the last ``CACHE_S`` seconds; it never lists one that is not in it."""

    CACHE_S = 30.0
    SCAN_CHUNK = 2000
    MAX_CACHED = 8  # segments

    def __init__(self, rt: WorkerView) -> None:
        self.rt = rt
        # (segmentation, segment) -> (scanned at, partitions scanned, sorted ids)
        self.cache: dict[tuple[str, str], tuple[float, tuple[int, ...], list[str]]] = {}

    async def scan(self, segmentation: str, segment: str, owned: tuple[int, ...]
                   ) -> list[str]:
        n = self.rt.settings.partitions
        states = self.rt.customer_states  # with the staged writes of batches in flight
        mine = set(owned)
        keys = list(states)
        found = []
        for start in range(0, len(keys), self.SCAN_CHUNK):
            for cid in keys[start:start + self.SCAN_CHUNK]:
                state = states.get(cid)
                if (type(state) is CustomerState and state.segments.get(segmentation) == segment
                        and partition_of(cid, n) in mine):
                    found.append(cid)
            await asyncio.sleep(0)
        found.sort()
        return found

    async def page(self, segmentation: str, segment: str, after: str | None, limit: int
                   ) -> dict[str, Any]:
        """The first ``limit`` ids after ``after``, whether there may be more, and the
        partitions they come from."""
        owned = tuple(self.rt.assigned())
        key = (segmentation, segment)
        now = time.monotonic()
        cached = self.cache.get(key)
        if cached is None or cached[1] != owned or now - cached[0] > self.CACHE_S:
            ids = await self.scan(segmentation, segment, owned)
            self.cache.pop(key, None)
            while len(self.cache) >= self.MAX_CACHED:
                self.cache.pop(next(iter(self.cache)))  # the oldest
            self.cache[key] = cached = (now, owned, ids)
        ids = cached[2]
        states = self.rt.customer_states
        out: list[str] = []
        i = bisect.bisect_right(ids, after) if after is not None else 0
        while i < len(ids) and len(out) <= limit:
            state = states.get(ids[i])  # still in the segment?
            if type(state) is CustomerState and state.segments.get(segmentation) == segment:
                out.append(ids[i])
            i += 1
        return {"members": out[:limit], "more": len(out) > limit, "partitions": list(owned)}


def _peers(rt: WorkerView) -> set[str]:
    me = str(rt.app.conf.canonical_url).rstrip("/")
    try:
        return {str(url).rstrip("/") for url in rt.app.router.tables_metadata()} - {me}
    except Exception:  # no assignment metadata yet: this worker alone
        return set()


class Unavailable(RuntimeError):
    """Answered 503: the page would be incomplete."""


async def cluster_members(rt: WorkerView, local: LocalMembers, request: Request,
                          segmentation: str, segment: str, after: str | None, limit: int
                          ) -> dict[str, Any]:
    """One page merged from every worker's local answer."""
    answers = [await local.page(segmentation, segment, after, limit)]
    peers = sorted(_peers(rt))
    if peers:
        params = {"scope": "local", "limit": str(limit)}
        if after is not None:
            params["cursor"] = encode_cursor(after)
        headers = {}
        if "Authorization" in request.headers:  # the caller's token works on every worker
            headers["Authorization"] = request.headers["Authorization"]
        path = f"/segments/{quote(segmentation, safe='')}/{quote(segment, safe='')}/members"

        async def fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
            async with session.get(url + path, params=params, headers=headers) as resp:
                if resp.status != 200:
                    raise Unavailable(f"worker {url} answered {resp.status}: "
                                      f"{(await resp.text())[:200]}")
                return await resp.json()  # type: ignore[no-any-return]

        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            results = await asyncio.gather(*(fetch(session, u) for u in peers),
                                           return_exceptions=True)
        for url, res in zip(peers, results, strict=True):
            if isinstance(res, BaseException):
                raise Unavailable(str(res) if isinstance(res, Unavailable)
                                  else f"worker {url} did not answer: {type(res).__name__}")
            answers.append(res)
    served = set().union(*(a["partitions"] for a in answers))
    missing = sorted(set(range(rt.settings.partitions)) - served)
    if missing:
        raise Unavailable(f"partitions {missing} are served by no worker right now (a "
                          f"rebalance, or a worker starting): retry with the same cursor")
    # a partition moving between workers may be reported by both: ids are unique anyway
    merged = sorted(set().union(*(a["members"] for a in answers)))
    page = merged[:limit]
    more = len(merged) > limit or any(a["more"] for a in answers)
    return {"segmentation": segmentation, "segment": segment, "members": page,
            "next_cursor": encode_cursor(page[-1]) if more and page else None}


def register_members(rt: WorkerView) -> None:
    personal = Gate(rt.settings.api_token, setting="SEGMENTER_API_TOKEN",
                    realm="segmenter", loopback_without_token=True)
    local = LocalMembers(rt)

    @rt.app.page("/segments/{segmentation}/{segment}/members")
    class Members(View):
        async def get(self, request: Request, segmentation: str, segment: str) -> Response:
            refused = personal.check(self, request)
            if refused is not None:
                return refused
            known = sorted(seg.name for seg in rt.step.segmentations)
            try:
                if segmentation not in known:
                    raise BadRequest(f"unknown segmentation {segmentation[:100]!r}; known: "
                                     f"{', '.join(known)}")
                if not 0 < len(segment) <= MAX_SEGMENT:
                    raise BadRequest(f"segment: 1 to {MAX_SEGMENT} characters")
                limit, after = parse_query(request.query)
            except BadRequest as exc:
                return self.json({"error": str(exc)}, status=400)
            if request.query.get("scope") == "local":
                return self.json(await local.page(segmentation, segment, after, limit))
            try:
                return self.json(await cluster_members(rt, local, request, segmentation,
                                                       segment, after, limit))
            except Unavailable as exc:
                return self.json({"error": str(exc)}, status=503,
                                 headers={"Retry-After": "2"})
