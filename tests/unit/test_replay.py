"""History files -> spec events: the readers behind ``segmenter replay``."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from stream_app.core.events import interaction as ix
from stream_app.core.events.parse import decode
from stream_app.replay import (
    ReplayError,
    file_format,
    parse_mapping,
    read_csv,
    read_events,
    read_jsonl,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC).timestamp()

SALES = """\
cust_id,ts,total,qty,dept,store,invoice
c1,2024-03-01T10:00:00Z,19.90,2,Shoes,store,A-1
c2,2024-03-01 11:30:00,5,1,books,web,A-2

c1,1709290800,-19.90,2,Shoes,store,A-3
"""
SALES_MAPPING = ("customer=cust_id,timestamp=ts,amount=total,quantity=qty,category=dept,"
                 "channel=store,order_id=invoice")


def csv_events(text: str, mapping: str | None = SALES_MAPPING) -> list[dict]:
    return list(read_csv(io.StringIO(text, newline=""), parse_mapping(mapping), source="x.csv"))


def test_mapping_is_parsed_and_checked() -> None:
    assert parse_mapping(" customer = id , amount=total,") == {"customer": "id", "amount": "total"}
    assert parse_mapping(None) == {}
    for bad, message in (("shoe_size=s", "unknown mapping field"), ("customer", "FIELD=COLUMN"),
                         ("customer=", "FIELD=COLUMN"), ("amount=a,amount=b", "given twice")):
        with pytest.raises(ValueError, match=message):
            parse_mapping(bad)


def test_transactions_become_order_events_in_file_order() -> None:
    events = csv_events(SALES)

    assert [e["userId"] for e in events] == ["c1", "c2", "c1"]
    first = events[0]
    assert first["type"] == "track"
    assert first["event"] == "Order Completed"
    assert first["timestamp"] == "2024-03-01T10:00:00.000Z"
    assert first["properties"] == {"total": 19.9, "quantity": 2.0, "order_id": "A-1",
                                   "category": "Shoes", "channel": "store"}
    assert events[1]["timestamp"] == "2024-03-01T11:30:00.000Z"  # no offset: UTC
    assert events[2]["event"] == "Order Refunded"
    assert events[2]["properties"]["total"] == 19.9
    assert events[2]["timestamp"] == "2024-03-01T11:00:00.000Z"  # epoch seconds


def test_events_pass_the_worker_parser() -> None:
    decoded = []
    for event in csv_events(SALES):
        good, bad = decode(orjson.dumps(event), now=NOW, fallback_ts=NOW)
        assert bad == []
        decoded += good
    assert [i.kind for i in decoded] == [ix.ORDER, ix.ORDER, ix.REFUND]
    assert decoded[0].amount == 19.9
    assert decoded[0].categories == ("shoes",)
    assert decoded[0].channel == "store"
    assert decoded[0].ts == datetime(2024, 3, 1, 10, tzinfo=UTC).timestamp()


def test_message_ids_depend_on_row_content_only() -> None:
    once, again = csv_events(SALES), csv_events(SALES)
    assert [e["messageId"] for e in once] == [e["messageId"] for e in again]
    assert len({e["messageId"] for e in once}) == 3
    edited = csv_events(SALES.replace("19.90,2", "19.91,2", 1))
    assert edited[0]["messageId"] != once[0]["messageId"]
    assert edited[1]["messageId"] == once[1]["messageId"]


@pytest.mark.parametrize("stamp", ["2024-03-01T10:00:00+00:00", "2024-03-01T12:00:00+02:00",
                                   "2024-03-01T10:00:00.000Z", "1709287200", "1709287200000",
                                   "1709287200.0"])
def test_time_formats(stamp: str) -> None:
    (event,) = csv_events(f"customer_id,timestamp,amount\nc,{stamp},1\n", mapping=None)
    assert event["timestamp"] == "2024-03-01T10:00:00.000Z"


def test_default_columns_and_a_byte_order_mark() -> None:
    text = "\ufeffcustomer_id,timestamp,amount,category\nc9,2024-01-01,3.5,toys\n"
    (event,) = csv_events(text, mapping=None)
    assert event["userId"] == "c9"
    assert event["properties"] == {"total": 3.5, "category": "toys"}


@pytest.mark.parametrize(("row", "message"), [
    ("c3,2024-03-02T00:00:00Z,twelve,1,x,web,A-9", "x.csv:3: amount 'twelve' is not a number"),
    ("c3,yesterday,1,1,x,web,A-9", "x.csv:3: timestamp 'yesterday' is neither ISO 8601"),
    ("c3,2024-03-02T00:00:00Z,1", "x.csv:3: 3 fields where the header has 7"),
    (",2024-03-02T00:00:00Z,1,1,x,web,A-9", "x.csv:3: empty customer id"),
    ("c3,2024-03-02T00:00:00Z,nan,1,x,web,A-9", "x.csv:3: amount 'nan' is not a finite number"),
    ("c3,1e30,1,1,x,web,A-9", "x.csv:3: timestamp '1e30' is out of range"),
])
def test_a_bad_row_names_its_line(row: str, message: str) -> None:
    lines = SALES.splitlines()
    text = "\n".join([lines[0], lines[1], row, lines[2]]) + "\n"
    with pytest.raises(ReplayError, match=message) as info:
        csv_events(text)
    assert info.value.line == 3


def test_a_missing_column_is_reported_with_the_header() -> None:
    with pytest.raises(ReplayError, match=r"x\.csv:1: no column 'ts' for timestamp.*cust_id"):
        csv_events("cust_id,when,total\nc,2024-01-01,1\n", mapping="customer=cust_id,"
                   "timestamp=ts,amount=total")
    with pytest.raises(ReplayError, match="no column 'amount' for amount"):
        csv_events("customer_id,timestamp\nc,2024-01-01\n", mapping=None)
    with pytest.raises(ReplayError, match="no column 'qty' for quantity"):
        csv_events("customer_id,timestamp,amount\nc,2024-01-01,1\n", mapping="quantity=qty")


SPEC = [
    {"type": "track", "event": "Product Viewed", "userId": "u1",
     "timestamp": "2024-01-01T00:00:00Z", "properties": {"product_id": "p"}},
    {"type": "identify", "anonymousId": "a1", "originalTimestamp": "2024-01-01T00:00:01Z",
     "traits": {"age": 30}},
]


def test_json_lines_pass_through_in_order() -> None:
    lines = [orjson.dumps(SPEC[0]).decode() + "\n", "\n", orjson.dumps(SPEC[1]).decode() + "\r\n"]
    assert list(read_jsonl(lines)) == SPEC


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"type": "purchase", "userId": "u", "timestamp": "2024-01-01"}', "type 'purchase'"),
    ('{"type": "track", "event": "x", "timestamp": "2024-01-01"}', "needs userId or anonymousId"),
    ('{"type": "track", "event": "x", "userId": "u"}', "needs timestamp"),
])
def test_a_bad_json_line_names_its_line(line: str, message: str) -> None:
    lines = [orjson.dumps(SPEC[0]).decode(), line]
    with pytest.raises(ReplayError, match=f"h.jsonl:2: {message}"):
        list(read_jsonl(lines, source="h.jsonl"))


def test_files_by_extension_and_gzip(tmp_path: Path) -> None:
    csv_gz = tmp_path / "sales.csv.gz"
    with gzip.open(csv_gz, "wt", encoding="utf-8", newline="") as handle:
        handle.write(SALES)
    jsonl = tmp_path / "events.ndjson"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in SPEC))

    assert [e["userId"] for e in read_events(csv_gz, SALES_MAPPING)] == ["c1", "c2", "c1"]
    assert list(read_events(jsonl)) == SPEC
    assert file_format(Path("x.JSONL.gz")) == "jsonl"


def test_file_problems_are_reported_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown history format"):
        read_events(tmp_path / "history.parquet")
    with pytest.raises(ValueError, match="CSV files only"):
        read_events(tmp_path / "events.jsonl", "customer=c")
    with pytest.raises(ValueError, match="no such file"):
        read_events(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown mapping field"):
        read_events(tmp_path / "missing.csv", "colour=c")


def test_line_numbers_count_blank_lines_and_multi_line_cells() -> None:
    text = 'customer_id,timestamp,amount\nc,2024-01-01,1\n\n"two\nlines",2024-01-01,1\nc,bad,1\n'
    with pytest.raises(ReplayError, match="x.csv:6: timestamp 'bad'"):
        csv_events(text, mapping=None)
