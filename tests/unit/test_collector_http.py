"""The collector's HTTP answers (aiohttp in process; Kafka replaced by a recording sink)."""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from stream_app.collector.intake import Intake
from stream_app.collector.metrics import CollectorMetrics
from stream_app.collector.server import make_app
from stream_app.collector.settings import load_collector_settings
from stream_app.collector.sink import KafkaUnavailable

KEY = "wk-test-0123456789"
NOW = 1_796_000_000.0  # 2026-11-30


class RecordingSink:
    """What the collector hands to Kafka; ``up`` decides between acknowledged and 503."""

    def __init__(self) -> None:
        self.up = True
        self.delivered: list[Intake] = []

    @property
    def available(self) -> bool:
        return self.up

    async def deliver(self, intake: Intake, rejected_at: float) -> None:
        if not self.up:
            raise KafkaUnavailable("broker gone")
        self.delivered.append(intake)

    def health(self) -> dict[str, Any]:
        return {"available": self.up}

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for i in self.delivered for _, v in i.records]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def client(sink: RecordingSink, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> AsyncIterator[Any]:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = load_collector_settings(write_keys=f"{KEY},other-key-123",
                                       collector_max_body_bytes=64 * 1024)
    app = make_app(settings, sink, CollectorMetrics(), clock=lambda: NOW)  # type: ignore[arg-type]
    server = TestServer(app)
    await server.start_server(auto_decompress=False)  # as serve() runs it
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        yield session
    await server.close()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def post(client: Any, path: str, doc: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    async with client.post(path, data=raw if raw is not None else orjson.dumps(doc),
                           headers=headers or {}) as r:
        return r.status, orjson.loads(await r.read()), r.headers


TRACK = {"userId": "u-1", "event": "Product Viewed", "messageId": "m-1"}


async def test_basic_auth_and_body_write_key(client: Any, sink: RecordingSink) -> None:
    assert (await post(client, "/v1/track", TRACK, auth()))[:2] == (200, {"success": True})
    status, body, _ = await post(client, "/v1/track", {**TRACK, "writeKey": "other-key-123"})
    assert (status, body) == (200, {"success": True})
    assert [e["messageId"] for e in sink.events] == ["m-1", "m-1"]


@pytest.mark.parametrize(("headers", "doc"), [
    ({}, TRACK),
    (auth("wrong-key-1234"), TRACK),
    (auth("wrong-key-1234"), {**TRACK, "writeKey": KEY}),  # a wrong header is not rescued
    ({}, {**TRACK, "writeKey": "wrong-key-1234"}),
    ({"Authorization": "Bearer " + KEY}, TRACK),
])
async def test_missing_or_wrong_key_is_401(client: Any, sink: RecordingSink,
                                           headers: dict[str, str], doc: dict) -> None:
    status, body, _ = await post(client, "/v1/track", doc, headers)
    assert status == 401 and body["code"] == "unauthorized" and KEY not in str(body)
    assert not sink.delivered


async def test_unauthenticated_garbage_is_401_not_400(client: Any) -> None:
    status, _, _ = await post(client, "/v1/batch", None, raw=b"{nope")
    assert status == 401
    status, body, _ = await post(client, "/v1/batch", None, auth(), raw=b"{nope")
    assert (status, body["code"]) == (400, "not_json")


async def test_every_endpoint(client: Any, sink: RecordingSink) -> None:
    for route, doc in [("identify", {"userId": "u", "traits": {"age": 40}}),
                       ("page", {"anonymousId": "a", "name": "Home"}),
                       ("screen", {"userId": "u", "name": "Cart"}),
                       ("alias", {"userId": "u", "previousId": "a"}),
                       ("group", {"userId": "u", "groupId": "g"}),
                       ("batch", {"batch": [{"type": "track", **TRACK}]}),
                       ("import", {"batch": [{"type": "page", "userId": "u"}]})]:
        status, body, headers = await post(client, f"/v1/{route}", doc, auth())
        assert (status, body) == (200, {"success": True}), route
        assert headers["Access-Control-Allow-Origin"] == "*"
    assert [e["type"] for e in sink.events] == ["identify", "page", "screen", "alias",
                                                "track", "page"]
    status, _, _ = await post(client, "/v1/nothing", TRACK, auth())
    assert status == 404


async def test_cors_preflight(client: Any) -> None:
    async with client.options("/v1/batch", headers={"Origin": "https://shop.example",
                                                     "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204
        assert "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_gzip_request_body(client: Any, sink: RecordingSink) -> None:
    raw = gzip.compress(orjson.dumps({"batch": [{"type": "track", **TRACK}] * 3}))
    status, _, _ = await post(client, "/v1/batch", None, {**auth(), "Content-Encoding": "gzip"},
                              raw=raw)
    assert status == 200 and len(sink.events) == 3
    status, body, _ = await post(client, "/v1/batch", None,
                                 {**auth(), "Content-Encoding": "gzip"}, raw=b"plain")
    assert (status, body["code"]) == (400, "bad_encoding")
    status, _, _ = await post(client, "/v1/batch", None, {**auth(), "Content-Encoding": "br"},
                              raw=b"x")
    assert status == 415


async def test_over_the_size_limit_is_413(client: Any, sink: RecordingSink) -> None:
    big = {"batch": [{"type": "page", "userId": "u", "name": "x" * 150}] * 450}  # ~80 KiB
    status, body, _ = await post(client, "/v1/batch", big, auth())
    assert (status, body["code"]) == (413, "too_large")
    bomb = gzip.compress(b" " * (50 << 20))  # 50 MiB of JSON whitespace in ~50 KiB
    status, body, _ = await post(client, "/v1/batch", None,
                                 {**auth(), "Content-Encoding": "gzip"}, raw=bomb)
    assert (status, body["code"]) == (413, "too_large")
    assert not sink.delivered


async def test_invalid_event_is_400_with_the_reason(client: Any, sink: RecordingSink) -> None:
    status, body, _ = await post(client, "/v1/track", {"event": "x"}, auth())
    assert (status, body["success"], body["code"]) == (400, False, "missing_id")
    assert "userId" in body["message"]
    assert not sink.delivered


async def test_batch_with_invalid_events(client: Any, sink: RecordingSink) -> None:
    status, body, _ = await post(client, "/v1/batch", {"batch": [
        {"type": "track", **TRACK},
        {"type": "track", "event": "x"},
        {"type": "page", "userId": "u", "properties": {"total": -5}}]}, auth())
    assert status == 200 and body["success"] is True
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (1, "missing_id"), (2, "negative_amount")]
    (intake,) = sink.delivered
    assert len(intake.records) == 1 and len(intake.rejected) == 2  # those go to the DLQ


async def test_kafka_unavailable_is_503_with_retry_after(client: Any, sink: RecordingSink
                                                         ) -> None:
    sink.up = False
    status, body, headers = await post(client, "/v1/batch", {"batch": [{"type": "track",
                                                                        **TRACK}]}, auth())
    assert (status, body["code"]) == (503, "kafka_unavailable")
    assert int(headers["Retry-After"]) > 0
    async with client.get("/health") as r:
        assert r.status == 503 and (await r.json())["status"] == "kafka_unavailable"
    sink.up = True
    async with client.get("/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_metrics_count_requests_and_events(client: Any) -> None:
    await post(client, "/v1/batch", {"batch": [{"type": "track", **TRACK},
                                               {"type": "track", "event": "x"}]}, auth())
    await post(client, "/v1/track", TRACK)
    async with client.get("/metrics") as r:
        text = await r.text()
    assert 'segmenter_collector_requests_total{route="batch",status="200"} 1.0' in text
    assert 'segmenter_collector_requests_total{route="track",status="401"} 1.0' in text
    assert 'segmenter_collector_events_total{outcome="accepted"} 1.0' in text
    assert 'segmenter_collector_rejected_events_total{reason="missing_id"} 1.0' in text
