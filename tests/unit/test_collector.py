"""The collector's pure parts: write keys, bounded gunzip, event completion and checks."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.collector import intake as ix
from stream_app.collector.body import BadEncoding, TooLarge, gunzip, read_body
from stream_app.collector.settings import load_collector_settings
from stream_app.config import SettingsError
from stream_app.core.events import parse
from stream_app.core.events.parse import Limits, decode

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC).timestamp()
LIMITS = Limits()
KEYS = ("key-one-1234", "key-two-5678")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def take(route: str, doc: dict, now: float = NOW) -> ix.Intake | ix.Refusal:
    return ix.take(route, doc, received_at=now, limits=LIMITS)


def produced(result: ix.Intake | ix.Refusal) -> list[dict]:
    assert isinstance(result, ix.Intake), result
    return [orjson.loads(value) for _, value in result.records]


# --- settings -----------------------------------------------------------------------------------

def test_settings_defaults_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_WRITE_KEYS", " key-one-1234 , key-two-5678,")
    s = load_collector_settings()
    assert (s.collector_port, s.collector_host) == (8088, "127.0.0.1")
    assert s.write_key_list == KEYS
    assert "key-one" not in repr(s) and "key-one" not in str(s.model_dump())


def test_settings_refuse_to_run_without_a_key() -> None:
    with pytest.raises(SettingsError, match="SEGMENTER_WRITE_KEYS: no write key set"):
        load_collector_settings()


@pytest.mark.parametrize("keys", ["short", "has:colon-1234", "has space 1234", "ok-key-1234,é-key-12345"])
def test_bad_keys_are_named_but_never_shown(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("SEGMENTER_WRITE_KEYS", keys)
    with pytest.raises(SettingsError) as info:
        load_collector_settings()
    message = str(info.value)
    assert "SEGMENTER_WRITE_KEYS" in message
    for part in keys.split(","):
        assert part not in message


def test_bad_port_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_WRITE_KEYS", KEYS[0])
    monkeypatch.setenv("SEGMENTER_COLLECTOR_PORT", "70000")
    with pytest.raises(SettingsError, match="SEGMENTER_COLLECTOR_PORT"):
        load_collector_settings()


# --- authentication -----------------------------------------------------------------------------

def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_user_is_the_write_key() -> None:
    assert ix.basic_user(basic("key-one-1234")) == "key-one-1234"
    assert ix.basic_user("Basic " + base64.b64encode(b"key-one-1234").decode()) == "key-one-1234"
    assert ix.basic_user("basic " + base64.b64encode(b"k:").decode()) == "k"
    assert ix.basic_user(None) is None
    assert ix.basic_user("Bearer abc") is None
    assert ix.basic_user("Basic !!!not-base64") == ""


def test_authorized_only_for_configured_keys() -> None:
    assert ix.authorized("key-two-5678", KEYS)
    for bad in ("key-two-567", "", None, 5, "KEY-ONE-1234"):
        assert not ix.authorized(bad, KEYS)


# --- body ---------------------------------------------------------------------------------------

async def chunks(data: bytes, size: int = 1000):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i:i + size]


async def test_gzip_bodies_are_inflated() -> None:
    raw = orjson.dumps({"batch": [{"type": "page", "userId": "u"}] * 50})
    assert await read_body(chunks(gzip.compress(raw)), "gzip", 1 << 20) == raw
    assert await read_body(chunks(raw), None, 1 << 20) == raw
    assert gunzip(gzip.compress(raw), 1 << 20) == raw


async def test_body_over_the_limit() -> None:
    with pytest.raises(TooLarge):
        await read_body(chunks(b"x" * 5000), "identity", 4096)
    assert await read_body(chunks(b"x" * 4096), "identity", 4096) == b"x" * 4096


async def test_a_gzip_bomb_is_stopped_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge):
        await read_body(chunks(bomb, 4096), "gzip", 1 << 20)
    with pytest.raises(TooLarge):
        gunzip(bomb, 1 << 20)


async def test_bad_encodings() -> None:
    with pytest.raises(BadEncoding, match="not supported"):
        await read_body(chunks(b"{}"), "br", 1 << 20)
    with pytest.raises(BadEncoding, match="gzip"):
        await read_body(chunks(b"{not gzip}"), "gzip", 1 << 20)
    with pytest.raises(BadEncoding, match="truncated"):
        await read_body(chunks(gzip.compress(b"{}" * 100)[:-12]), "gzip", 1 << 20)


# --- one request -> records ---------------------------------------------------------------------

def test_single_event_takes_its_type_from_the_endpoint() -> None:
    result = take("track", {"userId": "u-1", "event": "Order Completed", "writeKey": KEYS[0],
                            "messageId": "m-1", "properties": {"total": 5}})
    assert isinstance(result, ix.Intake)
    (key, value), = result.records
    event = orjson.loads(value)
    assert key == b"u-1"
    assert event["type"] == "track" and event["messageId"] == "m-1"
    assert "writeKey" not in event
    assert event["receivedAt"] == "2026-12-02T12:00:00.000Z"
    assert event["timestamp"] == "2026-12-02T12:00:00.000Z"  # none sent: receivedAt


def test_keyed_by_user_id_else_anonymous_id() -> None:
    result = take("batch", {"batch": [
        {"type": "page", "anonymousId": " a-1 ", "messageId": "1"},
        {"type": "page", "anonymousId": "a-1", "userId": "u-9", "messageId": "2"}]})
    assert isinstance(result, ix.Intake)
    assert [k for k, _ in result.records] == [b"a-1", b"u-9"]


def test_the_records_are_what_the_worker_accepts() -> None:
    result = take("identify", {"userId": "u-1", "traits": {"age": 30}, "messageId": "m"})
    for _, value in produced_records(result):
        good, bad = decode(value, now=NOW, fallback_ts=0.0)
        assert not bad and good[0].customer_id == "u-1" and good[0].traits == {"age": 30}


def produced_records(result: ix.Intake | ix.Refusal) -> list[tuple[bytes, bytes]]:
    assert isinstance(result, ix.Intake)
    return result.records


@pytest.mark.parametrize(("route", "doc", "code"), [
    ("track", {"event": "x", "messageId": "m"}, "missing_id"),
    ("track", {"userId": "u", "messageId": "m"}, "invalid_field"),  # no event name
    ("alias", {"anonymousId": "a", "previousId": "p"}, "missing_id"),
    ("track", {"userId": "u", "event": "Order Completed", "properties": {"total": -1}},
     "negative_amount"),
    ("page", {"userId": "u", "timestamp": "2027-06-01T00:00:00Z"}, "future_timestamp"),
    ("page", {"userId": "u", "timestamp": "yesterday"}, "invalid_field"),
    ("page", {"userId": "u", "timestamp": "1970-01-01T00:00:00Z"}, "invalid_field"),
    ("page", {"userId": "anonymous_id:x"}, "invalid_field"),
])
def test_an_invalid_single_event_is_refused_with_the_workers_reason(
        route: str, doc: dict, code: str) -> None:
    result = take(route, doc)
    assert isinstance(result, ix.Refusal)
    assert (result.status, result.code) == (400, code)
    raw = orjson.dumps({**doc, "type": route})
    assert decode(raw, now=NOW, fallback_ts=NOW)[1][0].reason == code  # the worker agrees


def test_request_level_refusals() -> None:
    assert ix.load(b"{nope").code == "not_json"  # type: ignore[union-attr]
    assert ix.load(b"\xff\xfe").code == "not_utf8"  # type: ignore[union-attr]
    assert ix.load(b"[1]").code == "not_an_object"  # type: ignore[union-attr]
    assert take("batch", {"batch": {"a": 1}}).code == "not_an_object"  # type: ignore[union-attr]
    too_many = {"batch": [{"type": "page", "userId": "u"}] * (LIMITS.max_batch_events + 1)}
    refused = take("batch", too_many)
    assert isinstance(refused, ix.Refusal) and refused.code == "batch_too_large"


def test_a_batch_takes_the_valid_events_and_sets_the_others_aside() -> None:
    result = take("import", {"writeKey": KEYS[0], "batch": [
        {"type": "track", "userId": "u-1", "event": "Product Viewed", "messageId": "1"},
        {"type": "track", "event": "Product Viewed", "messageId": "2"},
        "not an event",
        {"userId": "u-1", "messageId": "4"},
        {"type": "group", "userId": "u-1", "groupId": "g"},
        {"userId": "u-1", "batch": []},
        {"type": "page", "userId": "u-2", "messageId": "7", "writeKey": KEYS[0]}]})
    assert isinstance(result, ix.Intake)
    assert [orjson.loads(v)["messageId"] for _, v in result.records] == ["1", "7"]
    assert [(r.batch_index, r.reason) for r in result.rejected] == [
        (1, "missing_id"), (2, "not_an_object"), (3, "unknown_type"), (5, "unknown_type")]
    assert result.rejected_keys == [None, None, b"u-1", b"u-1"]
    assert result.ignored == 1  # group
    assert all(b"writeKey" not in r.payload for r in result.rejected)


def test_group_calls_are_answered_and_not_forwarded() -> None:
    result = take("group", {"userId": "u", "groupId": "g"})
    assert isinstance(result, ix.Intake) and not result.records and result.ignored == 1


def test_batch_context_is_merged_under_each_events_own() -> None:
    events = produced(take("batch", {
        "context": {"channel": "mobile", "locale": "de-DE"},
        "batch": [{"type": "page", "userId": "u", "context": {"locale": "fr-FR"}},
                  {"type": "page", "userId": "u"}]}))
    assert events[0]["context"] == {"channel": "mobile", "locale": "fr-FR"}
    assert events[1]["context"] == {"channel": "mobile", "locale": "de-DE"}


# --- clock skew ---------------------------------------------------------------------------------

def test_skew_correction_as_segment_documents_it() -> None:
    # The device's clock is 1 h behind: it stamped the event at 10:59:30 and sent it at
    # 10:59:50 by its clock; the collector receives it at 12:00:00.
    doc = {"sentAt": "2026-12-02T10:59:50Z", "batch": [
        {"type": "page", "userId": "u", "timestamp": "2026-12-02T10:59:30Z", "messageId": "1"},
        {"type": "page", "userId": "u", "timestamp": "2026-12-02T10:59:40Z",
         "sentAt": "2026-12-02T10:59:45Z", "messageId": "2"}]}
    first, second = produced(take("batch", doc))
    assert first["timestamp"] == "2026-12-02T11:59:40.000Z"  # receivedAt - (sentAt - ts)
    assert first["originalTimestamp"] == "2026-12-02T10:59:30Z"
    assert first["sentAt"] == "2026-12-02T10:59:50Z"
    assert first["receivedAt"] == "2026-12-02T12:00:00.000Z"
    assert second["timestamp"] == "2026-12-02T11:59:55.000Z"  # its own sentAt wins


def test_rudderstack_style_original_timestamp_is_corrected_too() -> None:
    (event,) = produced(take("track", {
        "userId": "u", "event": "x", "originalTimestamp": "2026-12-02T13:00:00.250+01:00",
        "sentAt": "2026-12-02T13:00:01.000+01:00"}))
    assert event["timestamp"] == "2026-12-02T11:59:59.250Z"
    assert event["originalTimestamp"] == "2026-12-02T13:00:00.250+01:00"


def test_without_sent_at_the_client_timestamp_stands() -> None:
    (event,) = produced(take("page", {"userId": "u", "timestamp": "2025-01-01T00:00:00Z"}))
    assert event["timestamp"] == "2025-01-01T00:00:00Z"  # a historical import


def test_an_unreadable_sent_at_leaves_the_timestamp_alone() -> None:
    (event,) = produced(take("page", {"userId": "u", "timestamp": "2025-01-01T00:00:00Z",
                                      "sentAt": "soon"}))
    assert event["timestamp"] == "2025-01-01T00:00:00Z"


def test_a_corrected_timestamp_is_checked_like_any_other() -> None:
    # a device clock a year behind whose event is stamped after it was sent: the corrected
    # time lies a year in the future, which the worker refuses
    refused = take("page", {"userId": "u", "timestamp": "2026-12-02T12:00:00Z",
                            "sentAt": "2025-12-02T12:00:00Z"})
    assert isinstance(refused, ix.Refusal) and refused.code == "future_timestamp"


# --- message ids --------------------------------------------------------------------------------

def test_message_id_kept_or_derived() -> None:
    event = {"userId": "u", "event": "x", "timestamp": "2026-12-01T00:00:00Z"}
    (a,) = produced(take("track", {**event, "sentAt": "2026-12-01T00:00:01Z"}))
    (b,) = produced(take("track", {**event, "sentAt": "2026-12-01T00:00:09Z"}, NOW + 60))
    assert a["messageId"].startswith("api-")
    assert a["messageId"] == b["messageId"]  # a retried request: the same event, applied once
    (c,) = produced(take("track", {**event, "timestamp": "2026-12-01T00:00:00.001Z"}))
    assert c["messageId"] != a["messageId"]
    untimed = {"userId": "u", "event": "x"}
    (d,), (e,) = produced(take("track", untimed)), produced(take("track", untimed))
    assert d["messageId"] != e["messageId"]  # no time of its own: a new event each time
    (f,) = produced(take("track", {**event, "messageId": "mine"}))
    assert f["messageId"] == "mine"


def test_rudderstack_identify_traits_from_the_context() -> None:
    (event,) = produced(take("batch", {"batch": [
        {"type": "identify", "userId": "u", "context": {"traits": {"age": 51}}}]}))
    assert event["traits"] == {"age": 51}
    (event,) = produced(take("identify", {"userId": "u", "traits": {"age": 7},
                                          "context": {"traits": {"age": 51}}}))
    assert event["traits"] == {"age": 7}  # the event's own traits win


# --- the collector's check is the worker's ------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
_TIME = st.sampled_from(["2026-12-02T11:00:00Z", "2026-12-02T13:00:00.5+01:00", "2027-06-01",
                         "1989-12-31T23:59:59Z", "2026-12-02 11:00", "yesterday", ""]) | _JSON
_VALID = [
    {"type": "track", "userId": "u-1", "event": "Order Completed", "messageId": "m-1",
     "timestamp": "2026-12-02T11:00:00Z", "properties": {"total": 5, "currency": "EUR",
                                                         "products": [{"price": 2}]}},
    {"type": "identify", "anonymousId": "a-1", "traits": {"age": 30, "interests": "a,b"}},
    {"type": "page", "userId": " u-2 ", "name": "Home", "context": {"channel": "web"},
     "originalTimestamp": "2026-12-02T13:00:00.5+01:00"},
    {"type": "screen", "anonymousId": "a-2", "category": "Shoes", "messageId": "m-2"},
    {"type": "alias", "userId": "u-3", "previousId": "a-3", "timestamp": 1796000000},
]
_FIELDS = {
    "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group"]),
    "userId": st.sampled_from(["u-1", " u-2 ", "", " ", "anonymous_id:x", "a\x00", None]),
    "anonymousId": st.sampled_from(["a-1", " ", "a" * 300]),
    "event": st.sampled_from(["Order Completed", "Product Added", " "]),
    "properties": st.dictionaries(st.sampled_from(
        ["total", "price", "quantity", "products", "category", "channel", "currency"]),
        st.sampled_from([-1, 0, 1.5, 2e9, "EUR", "eu", [{"price": -1}], [{"price": 2}]]),
        max_size=3),
    "traits": st.dictionaries(st.sampled_from(["age", "address", "interests", "income"]),
                              st.sampled_from([200, 30, "a,b", {"country": "DE"}]), max_size=2),
    "context": st.dictionaries(st.sampled_from(["channel", "traits", "locale", "ip"]),
                               st.sampled_from(["web", {"age": 3}, ""]), max_size=2),
    "timestamp": _TIME, "originalTimestamp": _TIME, "sentAt": _TIME,
    "previousId": st.sampled_from(["p-1", ""]),
    "messageId": st.sampled_from(["m-1", "", " ", None]),
    "writeKey": st.just(KEYS[0]),
}
_EVENT = st.builds(
    lambda base, changes: {**base, **changes}, st.sampled_from(_VALID),
    st.dictionaries(st.sampled_from(sorted(_FIELDS)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: _FIELDS[k] | _JSON for k in keys})))


@settings(max_examples=400, deadline=None)
@given(items=st.lists(_EVENT | _EVENT | _JSON, max_size=6),
       sent_at=st.none() | _TIME, context=st.none() | _JSON)
def test_what_the_collector_takes_or_refuses_the_worker_does_too(
        items: list, sent_at: object, context: object) -> None:
    # The collector runs the event models on the completed event rather than on the bytes
    # parsed back (and refused events through parse.decode): the outcome must be the
    # worker's, event by event, on the bytes that are produced.
    doc = {"batch": items, "sentAt": sent_at, "context": context, "writeKey": KEYS[0]}
    result = take("batch", doc)
    assert isinstance(result, ix.Intake)
    records = iter(result.records)
    rejected = {r.batch_index: r for r in result.rejected}
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "group":
            continue
        if index in rejected:
            rej = rejected[index]
            kind = item.get("type") if isinstance(item, dict) else None
            if isinstance(kind, str) and kind in parse.KNOWN_TYPES:
                # (a random messageId when untimed: never part of a reason's detail)
                event = ix.complete(item, context if isinstance(context, dict) else None,
                                    sent_at, NOW)
                _, bad = decode(orjson.dumps(event), now=NOW, fallback_ts=NOW)
                assert [(b.reason, b.detail) for b in bad] == [(rej.reason, rej.detail)]
            continue
        key, value = next(records)
        good, bad = decode(value, now=NOW, fallback_ts=NOW)
        assert not bad, bad
        assert key == (good[0].user_id or good[0].anonymous_id).encode()
        assert orjson.loads(value)["receivedAt"] == "2026-12-02T12:00:00.000Z"
    assert next(records, None) is None


def test_an_event_over_the_size_limit_is_refused_as_the_worker_does() -> None:
    big = {"type": "track", "userId": "u", "event": "x", "messageId": "m",
           "properties": {"note": "y" * 1000}}
    result = ix.take("batch", {"batch": [big, {**big, "properties": {}}]}, received_at=NOW,
                     limits=Limits(max_message_bytes=600))
    assert isinstance(result, ix.Intake)
    assert [(r.batch_index, r.reason) for r in result.rejected] == [(0, "too_large")]
    assert len(result.records) == 1
