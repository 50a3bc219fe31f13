"""One request of the Tracking API -> Kafka records, or the reasons it is refused. Pure.

Every event gets the worker's check (:func:`~stream_app.core.events.parse.decode`) of the
very bytes that go to Kafka - their size, then the event models (run on the completed event,
which is what those bytes parse back to) - so what the collector accepts the worker accepts
too, and what it refuses carries the worker's reason code.

Before that each event is completed as Segment's API does it:

- ``type`` from the endpoint (``/v1/track`` -> ``track``); in a batch each event names its own.
- batch-level ``context`` merged under each event's own (the event's keys win).
- ``writeKey`` removed (it authenticated the request; it is not event data).
- an ``identify`` without ``traits`` takes ``context.traits``: where RudderStack's SDKs put
  them (the event models read the top-level ``traits`` only).
- ``messageId``, when missing: ``api-`` and a digest of the event as sent when it has a
  timestamp (a retried request then carries the same id and is applied once), else a random
  one (a new event, at ``receivedAt``). The SDKs always send one.
- clock skew: the client's ``timestamp`` (or ``originalTimestamp``) is kept as
  ``originalTimestamp`` and ``timestamp = receivedAt - (sentAt - originalTimestamp)`` when
  the request has a ``sentAt`` (an event's own ``sentAt``, else the batch's); without
  ``sentAt`` the client's timestamp stands; without any timestamp it is ``receivedAt``.
  ``receivedAt`` is the collector's clock when the request arrived.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from ..core.events import parse
from ..core.events.models import SpecEvent
from ..core.events.parse import Limits, Rejection

SINGLE = frozenset({"track", "identify", "page", "screen", "group", "alias"})
BATCH = frozenset({"batch", "import"})
# Accepted and answered, not forwarded: the segmentation has no use for groups, and the input
# contract (schemas/) has no group type, so the worker would dead-letter every one.
IGNORED = frozenset({"group"})

_parse_time = TypeAdapter(datetime).validate_python  # the parser the event models use
# The event models, as parse.decode runs them (called directly: the wrapper costs ~1 µs)
_validate = TypeAdapter(SpecEvent).validator.validate_python


@dataclass(frozen=True, slots=True)
class Refusal:
    """The whole request is refused: HTTP ``status`` with a reason ``code``."""

    status: int
    code: str
    message: str


@dataclass(slots=True)
class Intake:
    """What one request becomes: records for the input topic, and refused events (of a
    batch: each with its index) for the dead-letter topic."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    rejected: list[Rejection] = field(default_factory=list)
    rejected_keys: list[bytes | None] = field(default_factory=list)
    ignored: int = 0


# --- authentication -----------------------------------------------------------------------------

def basic_user(authorization: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (Segment: the write key,
    empty password), or None when there is none or it is not Basic."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]  # "key:" and, for old clients, "key"


def authorized(key: Any, keys: tuple[str, ...]) -> bool:
    """Is ``key`` one of ``keys``? Compared in constant time, every key tried."""
    if not isinstance(key, str) or not key:
        return False
    given = key.encode()
    found = False
    for k in keys:
        found |= hmac.compare_digest(given, k.encode())
    return found


# --- the body -----------------------------------------------------------------------------------

def load(body: bytes) -> dict[str, Any] | Refusal:
    """The JSON object of a request body, or a 400 with the parser's reason code."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Refusal(400, parse.NOT_UTF8, f"not UTF-8: {uexc.reason} at byte {uexc.start}")
        return Refusal(400, parse.NOT_JSON, f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Refusal(400, parse.NOT_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def take(route: str, doc: dict[str, Any], *, received_at: float, limits: Limits
         ) -> Intake | Refusal:
    """The records of one request to ``/v1/<route>`` whose body is ``doc``.

    A single event that the worker would refuse refuses the request (400, its reason). In a
    batch, as in Segment's API, the valid events are taken and each invalid one is set
    aside with its reason and index (the request still succeeds).
    """
    if route in SINGLE:
        if route in IGNORED:
            return Intake(ignored=1)
        item = dict(doc)
        item["type"] = route
        out = Intake()
        _Request(None, doc.get("sentAt"), received_at, limits).one(item, None, out)
        if out.rejected:
            rej = out.rejected[0]
            return Refusal(400, rej.reason, rej.detail)
        return out
    items = doc.get("batch")
    if not isinstance(items, list):
        return Refusal(400, parse.NOT_OBJECT, "batch must be a JSON array")
    if len(items) > limits.max_batch_events:
        return Refusal(400, parse.BATCH_TOO_LARGE,
                       f"{len(items)} events > limit {limits.max_batch_events}")
    context = doc.get("context")
    out = Intake()
    one = _Request(context if isinstance(context, dict) else None, doc.get("sentAt"),
                   received_at, limits).one
    for index, item in enumerate(items):
        one(item, index, out)
    return out


class _Request:
    """What the events of one request share, worked out once: the clock, the batch's
    ``sentAt`` as a time, the batch context, the models' validation context."""

    __slots__ = ("context", "ctx", "limits", "received", "received_at", "received_dt",
                 "sent_at", "sent_dt")

    def __init__(self, context: dict[str, Any] | None, sent_at: Any, received_at: float,
                 limits: Limits) -> None:
        self.context = context or None
        self.sent_at = sent_at
        self.sent_dt = None if sent_at is None else _time(sent_at)
        self.received_at = received_at
        self.received_dt = datetime.fromtimestamp(received_at, UTC)
        self.received = _iso_dt(self.received_dt)
        self.limits = limits
        # as parse.decode builds it: the same bound on future timestamps
        self.ctx = {"now": received_at, "max_future_skew_s": limits.max_future_skew_s}

    def one(self, item: Any, index: int | None, out: Intake) -> None:
        if not isinstance(item, dict):
            _reject(out, parse.NOT_OBJECT,
                    f"expected a JSON object, got {type(item).__name__}", item, index)
            return
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in parse.KNOWN_TYPES:
            if isinstance(kind, str) and kind in IGNORED:  # (a list or dict is unhashable)
                out.ignored += 1
                return
            # said here: without a type, a batch element holding "batch" would read as an
            # envelope
            _reject(out, parse.UNKNOWN_TYPE,
                    f"type {str(kind)[:40]!r} is not one of {sorted(parse.KNOWN_TYPES)}",
                    item, index)
            return
        event = self.complete(item)
        value = orjson.dumps(event)
        if len(value) <= self.limits.max_message_bytes:
            # The worker's check (parse.decode) of ``value`` is: its size, then the event
            # models on orjson.loads(value). orjson.loads(value) == event here (the body was
            # read by orjson, which refuses what it could not write back: NaN, infinities,
            # lone surrogates; ints stay ints, floats floats), so the models are run on
            # ``event`` itself, saving a parse. Any event they refuse goes to parse.decode,
            # for the worker's own reason (tests/unit/test_collector.py checks both agree).
            try:
                checked = _validate(event, context=self.ctx)
            except ValidationError:
                pass
            else:
                out.records.append(((checked.userId or checked.anonymousId).encode(), value))
                return
        good, bad = parse.decode(value, now=self.received_at, fallback_ts=self.received_at,
                                 limits=self.limits)
        if bad:
            _reject(out, bad[0].reason, bad[0].detail, item, index)
        else:  # not expected (the models refused it): the worker's verdict stands
            rec = good[0]
            out.records.append(((rec.user_id or rec.anonymous_id or rec.customer_id).encode(),
                                value))

    def complete(self, item: dict[str, Any]) -> dict[str, Any]:
        """:func:`complete`, with what the request's events share computed once."""
        event = dict(item)
        event.pop("writeKey", None)
        batch_context = self.context
        if batch_context is not None:
            own = event.get("context")
            event["context"] = {**batch_context, **own} if isinstance(own, dict) else (
                own if own is not None else dict(batch_context))
        if event.get("type") == "identify" and event.get("traits") is None:
            context = event.get("context")
            if isinstance(context, dict) and isinstance(context.get("traits"), dict):
                event["traits"] = context["traits"]
        client_ts = event.get("timestamp")
        if client_ts is None:
            client_ts = event.get("originalTimestamp")
        if event.get("messageId") is None:
            event["messageId"] = _message_id(item, client_ts is not None)
        sent_at = event.get("sentAt", self.sent_at)
        if sent_at is not None:
            event["sentAt"] = sent_at
        event["receivedAt"] = self.received
        if client_ts is None:
            event["timestamp"] = self.received
            return event
        event.setdefault("originalTimestamp", client_ts)
        corrected = None
        if sent_at is not None:
            sent = self.sent_dt if sent_at is self.sent_at else _time(sent_at)
            if sent is not None:
                corrected = _corrected(_time(client_ts), sent, self.received_dt)
        event["timestamp"] = corrected if corrected is not None else client_ts
        return event


def _reject(out: Intake, reason: str, detail: str, item: Any, index: int | None) -> None:
    if isinstance(item, dict):
        item = {k: v for k, v in item.items() if k != "writeKey"}
        key = item.get("userId") or item.get("anonymousId")
    else:
        key = None
    out.rejected.append(Rejection(reason, detail, orjson.dumps(item), index))
    out.rejected_keys.append(key.encode() if isinstance(key, str) and key else None)


def complete(item: dict[str, Any], batch_context: dict[str, Any] | None, batch_sent_at: Any,
             received_at: float) -> dict[str, Any]:
    """``item`` as Segment's API completes it (module docstring); ``item`` is not changed."""
    return _Request(batch_context, batch_sent_at, received_at, Limits()).complete(item)


def _corrected(when: datetime | None, sent: datetime, received: datetime) -> str | None:
    """``received - (sent - when)`` as ISO 8601, or None when it cannot be worked out (an
    unreadable timestamp, a skew that leaves the calendar)."""
    if when is None:
        return None
    try:
        return _iso_dt(received - (sent - when))
    except (OverflowError, ValueError):  # a skew that leaves the calendar
        return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        # the SDKs' ISO 8601 first (0.3 µs); anything else as the event models read it (2 µs)
        when = datetime.fromisoformat(value) if isinstance(value, str) else _parse_time(value)
    except ValueError:
        try:
            when = _parse_time(value)
        except ValidationError:
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _message_id(item: dict[str, Any], has_time: bool) -> str:
    if not has_time:
        return f"api-{uuid.uuid4()}"
    sent = {k: v for k, v in item.items() if k not in ("writeKey", "sentAt")}
    return "api-" + hashlib.sha1(orjson.dumps(sent, option=orjson.OPT_SORT_KEYS),
                                 usedforsecurity=False).hexdigest()


def _iso_dt(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

