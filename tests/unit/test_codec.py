"""Customer-state serialisation (stream_app.core.state.codec)."""

from __future__ import annotations

import dataclasses
import uuid

import orjson
import pytest

from stream_app.core.events import interaction as ix
from stream_app.core.events.interaction import Interaction
from stream_app.core.state import codec
from stream_app.core.state.customer import (
    FIELD_NAMES,
    MAX_CATEGORIES,
    MAX_CHANNELS,
    MAX_RECENT_ORDERS,
    CustomerState,
    merge,
)
from stream_app.host import codecs as faust_codecs

from .statefold import apply_many

T0 = 1_700_000_000.0
CATEGORIES = ["electronics", "home & garden", "books", "toys", "sports", "beauty", "grocery",
              "fashion", "pets", "automotive"]
CHANNELS = ["web", "mobile", "email", "store", "call-center", "partner", "kiosk"]


def busy_customer() -> CustomerState:
    """Long-lived, active customer: every bounded part of the state filled to its cap."""
    uid = str(uuid.UUID(int=1))
    recs = []
    for i in range(300):
        kind = [ix.ORDER, ix.PRODUCT_VIEW, ix.CART_ADD, ix.PAGE_VIEW, ix.EMAIL_CLICK][i % 5]
        recs.append(Interaction(
            kind=kind, customer_id=uid, message_id=str(uuid.UUID(int=1000 + i)),
            ts=T0 + i * 3671.123,  # millisecond timestamps, as spec events carry
            user_id=uid, anonymous_id=str(uuid.UUID(int=10 + i % 6)),
            amount=round(19.99 + 7.31 * i, 2),
            categories=(CATEGORIES[i % 10], CATEGORIES[(i + 3) % 10]),
            channel=CHANNELS[i % 7]))
    recs.append(Interaction(
        kind=ix.IDENTIFY, customer_id=uid, message_id="identify-1", ts=T0 + 400 * 3600.0,
        user_id=uid, traits={
            "age": 34, "gender": "female", "income": 85000.0, "country": "Germany",
            "region": "Bavaria", "city": "Munich", "interests": ["cooking", "golf", "travel"],
            "lifestyle": ["active", "urban"], "values": ["sustainability"]}))
    state, applied = apply_many(None, recs)
    assert state is not None and applied == len(recs)
    for i in range(6):  # signed in from six browsers: their (empty) histories merged in
        state = merge(state, CustomerState(customer_id=str(uuid.UUID(int=10 + i))))
    state.segments = {"behavior": "c3", "value-tier": "gold"}
    state.segment_aux = {"behavior": [2, "c3"]}
    return state


def typical_customer() -> CustomerState:
    recs = [Interaction(kind=k, customer_id="user-48213", message_id=str(uuid.UUID(int=i)),
                        ts=T0 + i * 600.5, user_id="user-48213", amount=42.5,
                        categories=("shoes",) if k == ix.PRODUCT_VIEW else (), channel="web")
            for i, k in enumerate([ix.PAGE_VIEW, ix.PRODUCT_VIEW, ix.CART_ADD, ix.ORDER] * 3)]
    state, _ = apply_many(None, recs)
    assert state is not None
    return state


def test_busy_customer_fills_every_cap() -> None:
    s = busy_customer()
    assert len(s.recent_orders) == MAX_RECENT_ORDERS and len(s.seen) == 32
    assert len(s.categories) == MAX_CATEGORIES and len(s.channels) == MAX_CHANNELS
    assert len(s.merged_ids) == 6 and len(s.traits) == 9


@pytest.mark.parametrize("make", [busy_customer, typical_customer,
                                  lambda: CustomerState(customer_id="ü-∂-😀")])
def test_round_trip(make) -> None:  # type: ignore[no-untyped-def]
    state = make()
    back = codec.loads(codec.dumps(state))
    assert back == state
    assert codec.dumps(back) == codec.dumps(state)
    assert codec.to_json(back) == codec.to_json(state)


def test_layout_is_versioned_and_positional() -> None:
    row = orjson.loads(codec.dumps(typical_customer()))
    assert row[0] == codec.VERSION == 4
    assert len(row) == 1 + len(FIELD_NAMES)
    assert row[1 + FIELD_NAMES.index("customer_id")] == "user-48213"


@pytest.mark.parametrize("data", [
    orjson.dumps([5, *orjson.loads(codec.dumps(CustomerState(customer_id="x")))[1:]]),
    orjson.dumps([3, 7, *orjson.loads(codec.dumps(CustomerState(customer_id="x")))[2:]]),
    # a v3 record with v4's fields: no writer made one
    orjson.dumps([3, *orjson.loads(codec.dumps(CustomerState(customer_id="x")))[1:]]),
    orjson.dumps(["L", 5, {}]), orjson.dumps(["E", "x", 0]), orjson.dumps(["C"]),
    orjson.dumps([]),
    orjson.dumps({"customer_id": "x"}),
    orjson.dumps([1, "x"]),  # too few fields
    orjson.dumps([*orjson.loads(codec.dumps(CustomerState(customer_id="x"))), "extra"]),
])
def test_unsupported_layouts_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        codec.loads(data)


def test_state_codec_reads_a_tombstone_as_absent() -> None:
    c = faust_codecs.StateCodec()
    state = typical_customer()
    assert c.loads(c.dumps(state)) == state
    assert c.dumps(state) == codec.dumps(state)
    assert c.loads(b"") is None


def test_key_and_json_codecs() -> None:
    keys = faust_codecs.Utf8Codec()
    assert keys.dumps("ü-1") == "ü-1".encode() and keys.loads("ü-1".encode()) == "ü-1"
    assert keys.dumps(b"raw") == b"raw" and keys.loads(b"") is None
    js = faust_codecs.JsonCodec()
    assert js.loads(js.dumps({"a": [1, 2.5, None]})) == {"a": [1, 2.5, None]}


def test_typical_customer_is_a_few_hundred_bytes() -> None:
    assert len(codec.dumps(typical_customer())) < 800


def test_busy_customer_stays_under_one_kib() -> None:
    size = len(codec.dumps(busy_customer()))
    assert size < 1024, f"{size} bytes"


def v1_bytes(state: CustomerState) -> bytes:
    """The v1 layout (nothing packed), as workers before codec v2 wrote it: never with the
    purchase summary, which came with v4."""
    return orjson.dumps([1, *(getattr(state, name) for name in FIELD_NAMES
                              if name != "purchases")])


@pytest.mark.parametrize("make", [busy_customer, typical_customer,
                                  lambda: CustomerState(customer_id="x")])
def test_v1_states_are_still_read(make) -> None:  # type: ignore[no-untyped-def]
    state = make()
    back = codec.loads(v1_bytes(state))
    assert dataclasses.replace(back, purchases=state.purchases) == state
    # the summary is rebuilt from recent_orders, as for a v3 record
    assert back.purchases == codec.loads(_as_v3(state)).purchases
    assert faust_codecs.StateCodec().loads(v1_bytes(state)) == back


def test_large_states_are_compressed() -> None:
    """Over COMPRESS_OVER the stored form is ``Z`` + zlib; smaller ones stay readable JSON,
    and the JSON form (what routed absorb operations carry as text) reads back too."""
    busy, typical = busy_customer(), typical_customer()
    assert len(codec.dumps_json(busy)) > codec.COMPRESS_OVER
    data = codec.dumps(busy)
    assert data[:1] == b"Z" and len(data) < len(codec.dumps_json(busy))
    assert codec.loads(data) == busy
    assert codec.loads(codec.dumps_json(busy).decode().encode()) == busy
    assert codec.dumps(typical)[:1] == b"[" and len(codec.dumps(typical)) < len(v1_bytes(typical))
    with pytest.raises(ValueError):
        codec.loads(b"z" + data[5:])


def test_packings_fall_back_when_they_would_not_read_back_exactly() -> None:
    """Sub-millisecond order times and odd digests are kept as in v1, exactly."""
    state = typical_customer()
    state.recent_orders = [[T0 + 0.0001234, 10.0], [T0 + 5.5, 12.25]]
    state.seen = [0, (1 << 48) - 1, 12345]
    state.segments = {"rfm": "champions", "age_band": "a25"}
    state.segment_aux = {"_sampled_at": T0, "rfm": 123456789, "behavior": {"c": "b2", "n": 1}}
    back = codec.loads(codec.dumps(state))
    assert back == state and codec.dumps(back) == codec.dumps(state)
    state.seen = [1 << 48]  # wider than a digest: kept as a list
    assert codec.loads(codec.dumps(state)) == state
    row = orjson.loads(codec.dumps(typical_customer()))
    assert isinstance(row[1 + FIELD_NAMES.index("seen")], str)
    assert isinstance(row[1 + FIELD_NAMES.index("recent_orders")], dict)


def test_state_codec_is_the_v2_codec() -> None:
    state = busy_customer()
    c = faust_codecs.StateCodec()
    assert c.dumps(state) == codec.dumps(state) and c.loads(c.dumps(state)) == state


def test_a_v2_record_reads_with_the_new_fields_defaulted() -> None:
    state = typical_customer()
    row = orjson.loads(codec.dumps(state))
    v2 = [2, *row[1:-5]]  # without v3's four fields and v4's purchase summary
    back = codec.loads(orjson.dumps(v2))
    assert type(back) is CustomerState and back.orders == state.orders
    assert (back.stamps, back.epoch, back.change_seq, back.evaluated_at) == ({}, "", {}, 0.0)
    assert back.purchases == state.purchases  # 3 orders: rebuilt exactly from recent_orders
    with pytest.raises(ValueError, match="number of fields"):
        codec.loads(orjson.dumps([2, *row[1:-4]]))  # no version had 4 of the 5


def test_links_markers_and_clocks_round_trip() -> None:
    from stream_app.core.state.customer import Clock, Erased, Link

    for entry in (Link("u1", {"0:3": [7, 0]}), Erased({"1:2": [9, 1025]}, 1.7e9), Clock(1.6e9)):
        assert codec.loads(codec.dumps(entry)) == entry


# --- v4: the purchase summary of the predictive models ----------------------------------------

def test_purchase_summary_is_stored_and_read_back() -> None:
    state = busy_customer()
    assert state.purchases is not None and state.purchases.repeats > 0
    row = orjson.loads(codec.dumps_json(state))
    assert row[1 + FIELD_NAMES.index("purchases")] == list(state.purchases)
    back = codec.loads(codec.dumps(state))
    assert back.purchases == state.purchases and type(back.purchases) is type(state.purchases)


def _as_v3(state: CustomerState) -> bytes:
    row = orjson.loads(codec.dumps_json(state))
    return orjson.dumps([3, *row[1:-1]])  # v3: the same without the last field


def test_v3_state_gets_its_summary_from_recent_orders_exactly_when_they_are_all() -> None:
    # 3 orders, 40 minutes apart, the third after midnight UTC (T0 is 22:13 UTC): two days
    state = typical_customer()
    assert len(state.recent_orders) == state.orders < MAX_RECENT_ORDERS
    back = codec.loads(_as_v3(state))
    assert back.purchases == state.purchases
    assert back.purchases.repeats == 1 and back.purchases.last_day == back.purchases.first_day + 1
    assert (back.purchases.first_value, back.purchases.repeat_value) == (2 * 42.5, 42.5)


def test_v3_state_with_more_orders_than_kept_gets_an_estimate_from_its_totals() -> None:
    state = busy_customer()  # 60 orders over ~12 days, 12 kept
    assert state.orders > len(state.recent_orders) == MAX_RECENT_ORDERS
    back = codec.loads(_as_v3(state))
    p, exact = back.purchases, state.purchases
    assert p.first_day == exact.first_day and p.last_day == exact.last_day
    # the 48 older orders are taken for a day each: an over-count, never an under-count
    assert exact.repeats <= p.repeats <= exact.repeats + 48
    assert p.first_value + p.repeat_value == pytest.approx(state.revenue)


def test_v3_state_without_orders_has_no_summary() -> None:
    assert codec.loads(_as_v3(CustomerState(customer_id="x"))).purchases is None
