"""Compact, versioned, pickle-free serialisation of :class:`CustomerState`.

Format v4 (written): a JSON array ``[4, field0, field1, ...]`` in declaration order. v3 is
the same without the last field, ``purchases`` (the predictive models' purchase summary,
written as ``[first_day, first_value, last_day, repeats, repeat_value]`` or null); a v3 state
is read with the summary rebuilt from ``recent_orders`` (:func:`_backfilled_purchases`:
exact for a customer with at most 12 orders, an estimate above). v2 lacks also the four
before it (stamps, epoch, change_seq, evaluated_at; read with their defaults). The
bulky fields are packed (each packing is checked to read back exactly, else the field is
written as in v1):

- ``seen`` (the dedupe window, 32 48-bit digests; up to twice that after a merge): one base64 string of 6 bytes each
  (~260 characters instead of ~500 as decimal numbers; base64 rather than the denser
  base85, which Python encodes in pure Python, ~20x slower);
- ``recent_orders`` (``[[ts, amount], ...]``): one flat list ``[ts0_ms, amount0, dt1_ms,
  amount1, ...]``, times in integer milliseconds, each after the first relative to the one
  before (spec timestamps have millisecond precision);
- ``segments`` and ``segment_aux``: one dict ``{segmentation: [segment or null, aux?]}``
  (the names once), in the ``segments`` slot; the ``segment_aux`` slot is null.

A state still over :data:`COMPRESS_OVER` bytes (a long-lived customer with every bounded
part full) is stored as ``Z`` + its zlib-deflated JSON (binary; routed JSON operations carry
:func:`dumps_json` instead). Format v1 (plain JSON array ``[1, ...]``) is read as before.

The table holds two other kinds of entry (:mod:`..state.customer`): a link ``["L", target,
stamps]`` for an id merged into another customer, and an erasure marker ``["E", stamps,
erased_at, generation]``, and one clock per partition ``["C", tick_at]``.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson

from ..predictive.summary import PurchaseSummary, from_orders, utc_day
from .customer import FIELD_NAMES, MAX_RECENT_ORDERS, Clock, CustomerState, Entry, Erased, Link

VERSION = 4
_V3_FIELDS = 1  # fields added in v4, at the end
_V2_FIELDS = 4 + _V3_FIELDS  # fields added in v3 and v4
COMPRESS_OVER = 960  # bytes; compressing costs ~20 µs, so only states that need it
_DIGEST_BYTES = 6
_MAX_DIGEST = 1 << (8 * _DIGEST_BYTES)
_SEEN = FIELD_NAMES.index("seen")
_ORDERS = FIELD_NAMES.index("recent_orders")
_SEGMENTS = FIELD_NAMES.index("segments")
_AUX = FIELD_NAMES.index("segment_aux")
_PURCHASES = FIELD_NAMES.index("purchases")
_N = len(FIELD_NAMES)


def dumps(state: Entry) -> bytes:
    """The stored form: v4 JSON, compressed when large."""
    if type(state) is Link:
        return orjson.dumps(["L", state.target, state.stamps])
    if type(state) is Erased:
        return orjson.dumps(["E", state.stamps, state.erased_at, state.generation])
    if type(state) is Clock:
        return orjson.dumps(["C", state.tick_at])
    data = dumps_json(state)  # type: ignore[arg-type]
    if len(data) > COMPRESS_OVER:
        packed = b"Z" + zlib.compress(data, 6)
        if len(packed) < len(data):
            return packed
    return data


def dumps_json(state: CustomerState) -> bytes:
    """The v4 JSON form, never compressed (UTF-8 text: for routed operations)."""
    row: list[Any] = [VERSION, *(getattr(state, name) for name in FIELD_NAMES)]
    row[1 + _SEEN] = _pack_seen(state.seen)
    row[1 + _ORDERS] = _pack_orders(state.recent_orders)
    row[1 + _SEGMENTS] = _pack_segments(state.segments, state.segment_aux)
    row[1 + _AUX] = None
    if state.purchases is not None:
        row[1 + _PURCHASES] = list(state.purchases)
    return orjson.dumps(row)


def loads(data: bytes) -> Entry:
    if data[:1] == b"Z":
        try:
            data = zlib.decompress(data[1:])
        except zlib.error as exc:
            raise ValueError(f"unreadable compressed customer state: {exc}") from exc
    row = orjson.loads(data)
    if isinstance(row, list) and row and row[0] in ("L", "E", "C"):
        return _entry(row)
    if not isinstance(row, list) or not row or row[0] not in (1, 2, 3, VERSION):
        raise ValueError(
            f"unsupported customer-state format {row[:1] if isinstance(row, list) else type(row)}")
    values = row[1:]
    # v1 and v2 were written with the v2 fields and, later, with v3's; v3 with v3's; none
    # before v4 with the purchase summary (filled in below, from recent_orders)
    if row[0] in (1, 2) and len(values) == _N - _V2_FIELDS:
        values += [{}, "", {}, 0.0, None]
    elif row[0] != VERSION and len(values) == _N - _V3_FIELDS:
        values.append(None)
    elif row[0] != VERSION:
        values = []
    if len(values) != _N:
        raise ValueError("customer-state record has the wrong number of fields")
    if not isinstance(values[0], str) or not isinstance(values[FIELD_NAMES.index("stamps")], dict):
        raise ValueError("customer-state record has fields of the wrong type")
    if row[0] != 1:
        values[_SEEN] = _unpack_seen(values[_SEEN])
        values[_ORDERS] = _unpack_orders(values[_ORDERS])
        values[_SEGMENTS], values[_AUX] = _unpack_segments(values[_SEGMENTS], values[_AUX])
    if row[0] != VERSION:
        values[_PURCHASES] = _backfilled_purchases(values)
    elif values[_PURCHASES] is not None:
        values[_PURCHASES] = _purchases(values[_PURCHASES])
    return CustomerState(*values)


def _purchases(value: Any) -> PurchaseSummary:
    if not isinstance(value, list) or len(value) != 5:
        raise ValueError("customer-state purchase summary has the wrong shape")
    first, first_value, last, repeats, repeat_value = value
    return PurchaseSummary(int(first), float(first_value), int(last), int(repeats),
                           float(repeat_value))


def _backfilled_purchases(values: list[Any]) -> PurchaseSummary | None:
    """A state written before v4: the summary from its ``recent_orders``, the newest 12.
    Exact when they are all of the customer's orders; otherwise the older orders are taken
    as one purchase day each (their days are not kept), from ``first_order_at``."""
    orders = values[_ORDERS]
    n = values[FIELD_NAMES.index("orders")]
    if not orders or not isinstance(n, int):
        return None
    summary = from_orders(orders)
    assert summary is not None
    older = n - len(orders)
    first_at = values[FIELD_NAMES.index("first_order_at")]
    if len(orders) < MAX_RECENT_ORDERS or older <= 0 or not isinstance(first_at, int | float):
        return summary
    revenue = values[FIELD_NAMES.index("revenue")]
    older_value = max(float(revenue) - sum(a for _, a in orders), 0.0)
    day = utc_day(first_at)
    if day >= summary.first_day:
        return summary
    # the oldest kept day becomes a repeat; the older orders: a first day and older - 1 repeats
    share = older_value / older
    return PurchaseSummary(day, share, summary.last_day, summary.repeats + older,
                           summary.repeat_value + summary.first_value + share * (older - 1))


def _entry(row: list[Any]) -> Entry:
    if row[0] == "C" and len(row) == 2 and isinstance(row[1], int | float):
        return Clock(float(row[1]))
    if row[0] == "L" and len(row) == 3 and isinstance(row[1], str) and isinstance(row[2], dict):
        return Link(row[1], row[2])
    if (row[0] == "E" and len(row) == 4 and isinstance(row[1], dict)
            and isinstance(row[2], int | float) and type(row[3]) is int):
        return Erased(row[1], float(row[2]), row[3])
    raise ValueError(f"malformed table entry of kind {row[0]}")


# --- packings (each falls back to the v1 form when it would not read back exactly) -------------

def _pack_seen(seen: list[int]) -> Any:
    if not all(type(d) is int and 0 <= d < _MAX_DIGEST for d in seen):
        return seen
    return base64.b64encode(b"".join(d.to_bytes(_DIGEST_BYTES, "big") for d in seen)).decode()


def _unpack_seen(value: Any) -> list[int]:
    if not isinstance(value, str):
        return list(value)
    raw = base64.b64decode(value, validate=True)
    if len(raw) % _DIGEST_BYTES:
        raise ValueError("customer-state dedupe digests have the wrong length")
    return [int.from_bytes(raw[i:i + _DIGEST_BYTES], "big")
            for i in range(0, len(raw), _DIGEST_BYTES)]


def _pack_orders(orders: list[list[float]]) -> Any:
    if not orders:
        return orders
    flat: list[Any] = []
    prev = 0
    for order in orders:
        if len(order) != 2 or type(order[0]) is not float:
            return orders
        ts, amount = order
        ms = round(ts * 1000)
        if ms / 1000 != ts:
            return orders
        flat += (ms - prev, amount)
        prev = ms
    return {"ms": flat}


def _unpack_orders(value: Any) -> list[list[float]]:
    if isinstance(value, list):
        return value
    flat = value["ms"]
    out: list[list[float]] = []
    ms = 0
    for i in range(0, len(flat), 2):
        ms += flat[i]
        out.append([ms / 1000, flat[i + 1]])
    return out


def _pack_segments(segments: dict[str, str], aux: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, segment in segments.items():
        out[name] = [segment, aux[name]] if name in aux else [segment]
    for name, value in aux.items():
        if name not in segments:
            out[name] = [None, value]
    return out


def _unpack_segments(packed: Any, aux_slot: Any) -> tuple[dict[str, str], dict[str, Any]]:
    if aux_slot is not None:  # not packed
        return packed, aux_slot
    segments: dict[str, str] = {}
    aux: dict[str, Any] = {}
    for name, entry in packed.items():
        if entry[0] is not None:
            segments[name] = entry[0]
        if len(entry) > 1:
            aux[name] = entry[1]
    return segments, aux


def to_json(state: CustomerState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in FIELD_NAMES}
