"""History files -> Segment-spec event dicts, in file order, for ``segmenter replay``.

Pure: text in, dicts out. The CLI produces the events to the input topic (at a rate), where
they take the same path as live traffic; the worker validates them fully.

* JSON lines (``.jsonl``, ``.ndjson``): one spec event per line, passed through after a light
  check (an object of a known type, with a customer id and an event time).
* CSV (``.csv``): one transaction per row -> an ``Order Completed`` track event (``Order
  Refunded`` for a negative amount). Columns are named by a mapping such as
  ``customer=cust_id,timestamp=ts,amount=total``; the messageId is a digest of the row, so
  replaying a file twice is deduplicated by the worker.

Either may be gzip-compressed (``.gz``). A bad row raises :class:`ReplayError` naming its line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from .core.events.parse import KNOWN_TYPES

Format = Literal["jsonl", "csv"]

# CSV mapping: event field -> column, with these column names unless the mapping says otherwise.
DEFAULT_COLUMNS: dict[str, str] = {
    "customer": "customer_id",
    "timestamp": "timestamp",
    "amount": "amount",
    "quantity": "quantity",
    "category": "category",
    "channel": "channel",
    "order_id": "order_id",
}
REQUIRED_FIELDS = ("customer", "timestamp", "amount")

# Epoch figures at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_EPOCH_MS_FROM = 1e11


class ReplayError(ValueError):
    """A row of a history file cannot be replayed; the message names file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


def parse_mapping(text: str | None) -> dict[str, str]:
    """``"customer=cust_id,timestamp=ts"`` -> ``{"customer": "cust_id", "timestamp": "ts"}``."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        field, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not column:
            raise ValueError(f"mapping entry {part.strip()!r} is not FIELD=COLUMN")
        if field not in DEFAULT_COLUMNS:
            raise ValueError(f"unknown mapping field {field!r}: use {', '.join(DEFAULT_COLUMNS)}")
        if field in mapping:
            raise ValueError(f"mapping field {field!r} given twice")
        mapping[field] = column
    return mapping


def file_format(path: Path) -> Format:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise ValueError(f"{path}: unknown history format: expected .jsonl, .ndjson or .csv "
                     "(optionally .gz)")


def read_events(path: Path, mapping: str | None = None) -> Iterator[dict[str, Any]]:
    """The events of a history file, in file order. Format and mapping are checked now."""
    fmt = file_format(path)
    if mapping and fmt != "csv":
        raise ValueError("a column mapping applies to CSV files only")
    columns = parse_mapping(mapping)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return _read_file(path, fmt, columns)


def _read_file(path: Path, fmt: Format, columns: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        if fmt == "csv":
            yield from read_csv(handle, columns, source=str(path))
        else:
            yield from read_jsonl(handle, source=str(path))


def read_jsonl(lines: Iterable[str], *, source: str = "-") -> Iterator[dict[str, Any]]:
    """Spec events, one JSON object a line; blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ReplayError(source, number, f"not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise ReplayError(source, number, "expected a JSON object")
        if event.get("type") not in KNOWN_TYPES:
            raise ReplayError(source, number, f"type {event.get('type')!r} is not one of "
                                              f"{', '.join(sorted(KNOWN_TYPES))}")
        if not event.get("userId") and not event.get("anonymousId"):
            raise ReplayError(source, number, "needs userId or anonymousId")
        # Without its own time an event would be dated at replay time, not in its history.
        if not event.get("timestamp") and not event.get("originalTimestamp"):
            raise ReplayError(source, number, "needs timestamp or originalTimestamp")
        yield event


def read_csv(lines: Iterable[str], mapping: Mapping[str, str] | None = None, *,
             source: str = "-") -> Iterator[dict[str, Any]]:
    """Transactions, one CSV row each under a header row, as order track events."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    columns = _resolve_columns([h.strip().lstrip("\ufeff") for h in header], mapping or {},
                               source)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        try:
            yield _transaction(row, len(header), columns)
        except ValueError as exc:
            raise ReplayError(source, reader.line_num, str(exc)) from None


def _resolve_columns(header: list[str], mapping: Mapping[str, str], source: str
                     ) -> dict[str, int]:
    index = {name: i for i, name in enumerate(header)}
    columns: dict[str, int] = {}
    for field, default in DEFAULT_COLUMNS.items():
        column = mapping.get(field, default)
        if column in index:
            columns[field] = index[column]
        elif field in mapping or field in REQUIRED_FIELDS:
            raise ReplayError(source, 1, f"no column {column!r} for {field} in the header "
                                         f"({', '.join(header)}); map it with {field}=COLUMN")
    return columns


def _transaction(row: list[str], width: int, columns: Mapping[str, int]) -> dict[str, Any]:
    if len(row) != width:
        raise ValueError(f"{len(row)} fields where the header has {width}")

    def cell(field: str) -> str:
        return row[columns[field]].strip() if field in columns else ""

    customer = cell("customer")
    if not customer:
        raise ValueError("empty customer id")
    amount = _number(cell("amount"), "amount")
    properties: dict[str, Any] = {"total": abs(amount)}
    if cell("quantity"):
        properties["quantity"] = abs(_number(cell("quantity"), "quantity"))
    for field in ("order_id", "category", "channel"):
        if cell(field):
            properties[field] = cell(field)
    digest = hashlib.sha1("\x1f".join(row).encode(), usedforsecurity=False).hexdigest()
    return {
        "type": "track",
        "event": "Order Refunded" if amount < 0 else "Order Completed",
        "userId": customer,
        "messageId": f"csv-sha1:{digest}",
        "timestamp": _timestamp(cell("timestamp")),
        "properties": properties,
    }


def _number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{field} {text!r} is not a finite number")
    return value


def _timestamp(text: str) -> str:
    """ISO 8601 (UTC when no offset is given) or epoch seconds / milliseconds -> ISO UTC."""
    if not text:
        raise ValueError("empty timestamp")
    try:
        epoch = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {text!r} is neither ISO 8601 nor epoch seconds or "
                             "milliseconds") from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    else:
        if not math.isfinite(epoch):
            raise ValueError(f"timestamp {text!r} is not a finite number")
        seconds = epoch / 1000 if abs(epoch) >= _EPOCH_MS_FROM else epoch
        try:
            when = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"timestamp {text!r} is out of range") from None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
