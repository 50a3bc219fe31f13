"""Bytes off the wire -> interactions or rejections (stream_app.core.events.parse)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.events import interaction as ix
from stream_app.core.events import parse
from stream_app.core.events.parse import Limits, decode

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
KAFKA_TS = NOW - 60.0


def ev(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "track", "event": "Product Viewed", "userId": "u1"}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def one(doc: Any, **kw: Any) -> ix.Interaction:
    recs, rejects = decode(orjson.dumps(doc), now=NOW, fallback_ts=KAFKA_TS, **kw)
    assert rejects == [] and len(recs) == 1, rejects
    return recs[0]


def rejected(raw: bytes | dict[str, Any], **kw: Any) -> parse.Rejection:
    data = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    recs, rejects = decode(data, now=NOW, fallback_ts=KAFKA_TS, **kw)
    assert recs == [] and len(rejects) == 1
    return rejects[0]


# --- reason codes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe{}", parse.NOT_UTF8),
    (b'{"type": "track", "event": "\xc3\x28"}', parse.NOT_UTF8),
    (b"{not json", parse.NOT_JSON),
    (b"", parse.NOT_JSON),
    (b'{"a": 1e400}', parse.NOT_JSON),  # would be infinity
    (b"[1, 2]", parse.NOT_OBJECT),
    (b'"track"', parse.NOT_OBJECT),
    (b"null", parse.NOT_OBJECT),
    (b'{"batch": {"type": "track"}}', parse.NOT_OBJECT),
    (orjson.dumps(ev(type="purchase")), parse.UNKNOWN_TYPE),
    (orjson.dumps(ev(type=None)), parse.UNKNOWN_TYPE),
    (orjson.dumps(ev(type=["track"])), parse.UNKNOWN_TYPE),  # unhashable: used to crash
    (orjson.dumps(ev(type={"t": 1})), parse.UNKNOWN_TYPE),
    (orjson.dumps(ev(userId=None)), parse.MISSING_ID),
    (orjson.dumps({"type": "alias", "anonymousId": "a1", "previousId": "p"}), parse.MISSING_ID),
    (orjson.dumps(ev(event="Order Completed", properties={"total": -1})), parse.NEGATIVE_AMOUNT),
    (orjson.dumps(ev(properties={"products": [{"price": -0.5}]})), parse.NEGATIVE_AMOUNT),
    (orjson.dumps(ev(timestamp="2100-01-01T00:00:00Z")), parse.FUTURE_TIMESTAMP),
    (orjson.dumps(ev(timestamp="yesterday")), parse.INVALID),
    (orjson.dumps(ev(timestamp="1985-01-01T00:00:00Z")), parse.INVALID),
    (orjson.dumps(ev(userId=123)), parse.INVALID),
    (orjson.dumps(ev(event="   ")), parse.INVALID),
    (orjson.dumps(ev(properties={"total": 2e9})), parse.INVALID),
    (orjson.dumps(ev(properties={"quantity": -1})), parse.INVALID),
    (orjson.dumps(ev(properties={"currency": "euro"})), parse.INVALID),
    (orjson.dumps({"type": "identify", "userId": "u", "traits": {"age": 200}}), parse.INVALID),
    (orjson.dumps({"type": "alias", "userId": "u"}), parse.INVALID),
])
def test_reason_codes(raw: bytes, reason: str) -> None:
    rej = rejected(raw)
    assert rej.reason == reason, rej.detail
    assert rej.reason in parse.REASONS
    assert rej.payload == raw  # the original bytes go to the dead letter
    assert rej.batch_index is None
    assert rej.detail


def test_none_value_is_rejected_not_raised() -> None:
    assert rejected(b"").reason == parse.NOT_JSON
    recs, rejects = decode(None, now=NOW, fallback_ts=KAFKA_TS)
    assert recs == [] and [r.reason for r in rejects] == [parse.NOT_JSON]


def test_size_limit_is_checked_before_parsing() -> None:
    raw = orjson.dumps(ev(name="x" * 50))
    limits = Limits(max_message_bytes=len(raw))
    assert one(orjson.loads(raw), limits=limits).customer_id == "u1"  # exactly at the limit
    rej = rejected(raw, limits=Limits(max_message_bytes=len(raw) - 1))
    assert rej.reason == parse.TOO_LARGE
    assert rejected(b"\xff" * 100, limits=Limits(max_message_bytes=10)).reason == parse.TOO_LARGE


def test_future_timestamp_bound_uses_now_and_skew() -> None:
    limits = Limits(max_future_skew_s=3600)
    ok = one(ev(timestamp=NOW + 3600), limits=limits)
    assert ok.ts == NOW + 3600
    assert rejected(ev(timestamp=NOW + 3601), limits=limits).reason == parse.FUTURE_TIMESTAMP


def test_detail_names_the_field() -> None:
    rej = rejected(ev(event="Order Completed", properties={"total": -1}))
    assert "properties.total" in rej.detail


# --- batches -----------------------------------------------------------------------------------

def test_batch_rejects_bad_elements_individually() -> None:
    items = [
        ev(messageId="m0"),
        ev(messageId="m1", userId=None),
        "not an object",
        ev(messageId="m3", type="nope"),
        ev(messageId="m4", event="Order Completed", properties={"total": 5}),
    ]
    recs, rejects = decode(orjson.dumps({"batch": items}), now=NOW, fallback_ts=KAFKA_TS)
    assert [r.message_id for r in recs] == ["m0", "m4"]
    assert [(r.batch_index, r.reason) for r in rejects] == [
        (1, parse.MISSING_ID), (2, parse.NOT_OBJECT), (3, parse.UNKNOWN_TYPE)]
    # each rejection carries that element only, not the whole envelope
    assert orjson.loads(rejects[0].payload) == items[1]
    assert orjson.loads(rejects[1].payload) == "not an object"


def test_batch_limits() -> None:
    items = [ev(messageId=f"m{i}") for i in range(3)]
    raw = orjson.dumps({"batch": items})
    recs, _ = decode(raw, now=NOW, fallback_ts=KAFKA_TS, limits=Limits(max_batch_events=3))
    assert len(recs) == 3
    rej = rejected(raw, limits=Limits(max_batch_events=2))
    assert rej.reason == parse.BATCH_TOO_LARGE and rej.payload == raw
    assert decode(b'{"batch": []}', now=NOW, fallback_ts=KAFKA_TS) == ([], [])


def test_an_event_with_a_batch_field_is_an_event() -> None:
    rec = one(ev(batch=[1, 2]))
    assert rec.kind == ix.PRODUCT_VIEW


# --- message ids -------------------------------------------------------------------------------

def test_message_id_is_used_when_present() -> None:
    assert one(ev(messageId="  abc  ")).message_id == "abc"


def test_digest_stands_in_for_a_missing_message_id() -> None:
    raw = orjson.dumps(ev(timestamp="2023-11-14T00:00:00Z"))
    a = decode(raw, now=NOW, fallback_ts=KAFKA_TS)[0][0]
    b = decode(raw, now=NOW, fallback_ts=KAFKA_TS + 5)[0][0]
    assert a.message_id.startswith("sha1:")
    assert a.message_id == b.message_id  # a redelivery, however late, is the same message
    other = orjson.dumps(ev(timestamp="2023-11-14T00:00:01Z"))
    assert decode(other, now=NOW, fallback_ts=KAFKA_TS)[0][0].message_id != a.message_id


def test_identical_bodies_without_timestamp_are_told_apart_by_record_time() -> None:
    # e.g. a server producer sending {"type": "page", "userId": ...} for every view
    raw = orjson.dumps({"type": "page", "userId": "u1"})
    first = decode(raw, now=NOW, fallback_ts=KAFKA_TS)[0][0]
    again = decode(raw, now=NOW, fallback_ts=KAFKA_TS)[0][0]
    later = decode(raw, now=NOW, fallback_ts=KAFKA_TS + 10)[0][0]
    assert first.message_id == again.message_id  # redelivered record: same id
    assert first.message_id != later.message_id  # another view: another event


def test_batch_element_digest_ignores_key_order() -> None:
    a = {"type": "track", "event": "X", "userId": "u", "timestamp": "2023-11-14T00:00:00Z"}
    b = dict(reversed(list(a.items())))
    ids = [decode(orjson.dumps({"batch": [doc]}), now=NOW, fallback_ts=KAFKA_TS)[0][0].message_id
           for doc in (a, b)]
    assert ids[0] == ids[1]


# --- event time --------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "expected"), [
    ({"timestamp": "2023-11-14T22:13:20Z"}, NOW),
    ({"timestamp": "2023-11-15T00:13:20+02:00"}, NOW),
    ({"timestamp": "2023-11-14T22:13:20"}, NOW),  # naive: UTC
    ({"timestamp": "2023-11-14T22:13:20.250Z"}, NOW + 0.25),
    ({"originalTimestamp": "2023-11-14T22:13:20Z"}, NOW),
    ({"timestamp": "2023-11-14T22:13:20Z", "originalTimestamp": "2023-11-14T00:00:00Z"}, NOW),
    ({}, KAFKA_TS),  # none: the Kafka record's timestamp
])
def test_event_time(fields: dict[str, Any], expected: float) -> None:
    assert one(ev(**fields)).ts == pytest.approx(expected)


# --- kinds -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [
    ("Product Viewed", ix.PRODUCT_VIEW),
    ("product viewed", ix.PRODUCT_VIEW),
    ("Products Searched", ix.PRODUCT_VIEW),
    ("Product Added", ix.CART_ADD),
    ("Product Removed", ix.CART_REMOVE),
    ("Checkout Started", ix.CHECKOUT),
    ("ORDER COMPLETED", ix.ORDER),
    ("Order Refunded", ix.REFUND),
    ("Order Cancelled", ix.REFUND),
    ("Email Opened", ix.EMAIL_OPEN),
    ("Email Link Clicked", ix.EMAIL_CLICK),
    ("Unsubscribed", ix.EMAIL_UNSUBSCRIBE),
    ("Ticket Created", ix.SUPPORT),
    ("Cart Viewed", ix.CUSTOM),
    ("Played Video", ix.CUSTOM),
])
def test_track_event_names_map_to_kinds(name: str, kind: str) -> None:
    rec = one(ev(event=name))
    assert rec.kind == kind
    assert rec.name == name


def test_page_screen_identify_alias() -> None:
    page = one({"type": "page", "anonymousId": "a1", "name": "Home", "category": "Shoes"})
    assert (page.kind, page.name, page.categories, page.channel) == (
        ix.PAGE_VIEW, "Home", ("shoes",), "web")
    # an anonymous customer's key: its own id space (never a user's)
    assert page.customer_id == "anonymous_id:a1" and page.user_id is None
    assert page.anonymous_id == "a1"
    screen = one({"type": "screen", "userId": "u1", "name": "Cart"})
    assert (screen.kind, screen.channel) == (ix.SCREEN_VIEW, "mobile")
    ident = one({"type": "identify", "userId": "u1", "anonymousId": "a1",
                 "traits": {"age": 30}})
    assert (ident.kind, ident.customer_id, ident.anonymous_id, ident.traits) == (
        ix.IDENTIFY, "u1", "a1", {"age": 30})
    assert ident.channel is None
    alias = one({"type": "alias", "userId": "u2", "previousId": "a1"})
    assert (alias.kind, alias.customer_id, alias.previous_id) == (ix.ALIAS, "u2", "a1")


def test_user_id_wins_over_anonymous_id_and_ids_are_stripped() -> None:
    rec = one(ev(userId="  u1 ", anonymousId=" a1"))
    assert (rec.customer_id, rec.user_id, rec.anonymous_id) == ("u1", "u1", "a1")


# --- channels ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "channel"), [
    (ev(event="Email Opened", context={"channel": "browser"}), "email"),
    (ev(properties={"channel": "Store"}, context={"channel": "browser"}), "store"),
    (ev(context={"channel": "browser"}), "web"),
    (ev(context={"channel": "Web"}), "web"),
    (ev(context={"channel": "iOS"}), "mobile"),
    (ev(context={"channel": "android"}), "mobile"),
    (ev(context={"channel": "server"}), None),
    (ev(context={"channel": "Call-Center"}), "call-center"),
    (ev(), None),
    ({"type": "page", "userId": "u", "context": {"channel": "server"}}, None),
    ({"type": "page", "userId": "u"}, "web"),
    ({"type": "screen", "userId": "u"}, "mobile"),
    ({"type": "screen", "userId": "u", "context": {"channel": "browser"}}, "web"),
])
def test_channel(doc: dict[str, Any], channel: str | None) -> None:
    assert one(doc).channel == channel


# --- amounts and categories --------------------------------------------------------------------

@pytest.mark.parametrize(("props", "amount"), [
    ({"total": 10, "revenue": 8, "value": 5}, 10.0),
    ({"revenue": 8, "value": 5, "price": 1}, 8.0),
    ({"value": 5, "price": 1}, 5.0),
    ({"products": [{"price": 2.5, "quantity": 2}, {"price": 1}, {"quantity": 3}]}, 6.0),
    ({"price": 4, "quantity": 3}, 12.0),
    ({"price": 4}, 4.0),
    ({"total": "12.5"}, 12.5),
    ({"total": 0}, 0.0),
    ({}, 0.0),
])
def test_amount(props: dict[str, Any], amount: float) -> None:
    assert one(ev(event="Order Completed", properties=props)).amount == amount


def test_categories_lower_cased_deduplicated_and_capped() -> None:
    products = [{"category": c} for c in ["Shoes", "shoes", "Bags", *[f"c{i}" for i in range(10)]]]
    rec = one(ev(properties={"category": "SHOES", "products": products}))
    assert rec.categories == ("shoes", "bags", "c0", "c1", "c2", "c3", "c4", "c5")


def test_page_category_only_when_properties_have_none() -> None:
    rec = one({"type": "page", "userId": "u", "category": "Docs",
               "properties": {"category": "Blog"}})
    assert rec.categories == ("blog",)


# --- traits ------------------------------------------------------------------------------------

def test_traits_are_flattened_and_contact_details_dropped() -> None:
    rec = one({"type": "identify", "userId": "u", "traits": {
        "email": "x@example.com", "name": "X", "phone": "123",
        "age": "34", "gender": "Female", "income": 50000,
        "address": {"country": "DE", "state": "BY", "city": "Munich", "postalCode": "80331"},
        "interests": "Golf, wine , golf,", "lifestyle": ["Urban", "urban"],
    }})
    assert rec.traits == {
        "age": 34, "gender": "female", "income": 50000.0,
        "country": "DE", "region": "BY", "city": "Munich",
        "interests": ["golf", "wine"], "lifestyle": ["urban"],
    }


def test_top_level_geo_traits_win_over_address() -> None:
    rec = one({"type": "identify", "userId": "u", "traits": {
        "country": "FR", "address": {"country": "DE", "region": "Bavaria", "state": "BY"}}})
    assert rec.traits == {"country": "FR", "region": "Bavaria"}


def test_empty_traits() -> None:
    assert one({"type": "identify", "userId": "u"}).traits == {}


# --- robustness --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
EVENTISH = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "alias"]) | JSON},
    optional={
        "userId": st.text(max_size=4) | JSON, "anonymousId": st.text(max_size=4),
        "event": st.sampled_from(["Order Completed", "Product Added"]) | JSON,
        "properties": st.dictionaries(
            st.sampled_from(["total", "price", "products", "category", "channel"]), JSON),
        "traits": st.dictionaries(st.sampled_from(["age", "address", "interests"]), JSON),
        "timestamp": JSON, "previousId": JSON, "context": JSON, "messageId": JSON,
    },
)


@settings(max_examples=200, deadline=None)
@given(doc=EVENTISH | JSON, batched=st.booleans())
def test_decode_never_raises(doc: Any, batched: bool) -> None:
    raw = orjson.dumps({"batch": [doc, doc]} if batched else doc)
    recs, rejects = decode(raw, now=NOW, fallback_ts=KAFKA_TS)
    envelope = isinstance(doc, dict) and "batch" in doc and "type" not in doc
    if batched or not envelope:
        assert len(recs) + len(rejects) == (2 if batched else 1)
    assert all(r.reason in parse.REASONS for r in rejects)
    for rec in recs:
        assert rec.kind in ix.KINDS and rec.customer_id and rec.message_id
        assert ix.Interaction.from_wire(orjson.loads(orjson.dumps(rec.to_wire()))) == rec
