"""Hostile input: >= 10,000 generated messages, valid and invalid mixed, through the real broker
and a worker. No crash; every invalid message (or batch element) lands in the dead-letter topic
with its reason and origin; every valid event is applied exactly once (repeats included).

How the messages are made, with hypothesis:
- valid events start from templates drawn by hypothesis-jsonschema from the published schema
  (``schemas/customer-interaction.schema.json``, alias left out: it merges customers, which
  would blur per-customer counts). The schema cannot state a few rules the parser enforces
  (an id present, event time between 1990 and now + skew, amounts finite, not negative and at
  most 1e9), so the template's ids, time and amounts are then drawn within those rules.
  hypothesis-jsonschema is slow on this schema (tens of ms an example), so it makes a few
  hundred templates and cheap hypothesis strategies vary them into the 10,000 messages;
- invalid ones are drawn per kind: random bytes, non-UTF-8, JSON that is not an object, lone
  surrogate escapes, unknown types, missing ids, wrong field types, negative amounts, future and
  ancient timestamps, oversized messages and batch envelopes;
- batch envelopes mix valid and invalid elements.
Generation runs up front (no shrinking: the property is checked end to end afterwards, once),
derandomized so a failure reproduces, and the messages are published in bulk. Before anything
is published, each message's expected outcome is checked against the pure parser, so a wrong
expectation fails fast and names the message.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stream_app.core.events.parse import REASONS, Limits, decode

from .conftest import read_topic, wait_for
from .equivalence import final_states

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "customer-interaction.schema.json"
USERS = [f"fz-u{i:03d}" for i in range(240)]
ANONS = [f"fz-a{i:03d}" for i in range(60)]
KNOWN = {"track", "identify", "page", "screen", "alias"}
AMOUNTS = {"total", "revenue", "subtotal", "value", "price", "income"}
T_MIN = 1_577_836_800  # 2020-01-01
T_MAX = 1_767_225_600  # 2026-01-01
LIMITS = Limits()
GENERATE = settings(database=None, phases=[Phase.generate], deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def templates(n: int) -> list[dict[str, Any]]:
    from hypothesis_jsonschema import from_schema

    schema = json.loads(SCHEMA.read_text())
    schema["oneOf"] = [ref for ref in schema["oneOf"] if not ref["$ref"].endswith("/Alias")]
    schema.pop("discriminator", None)
    out: list[dict[str, Any]] = []

    @settings(GENERATE, max_examples=n)
    @given(from_schema(schema))
    def collect(doc: dict[str, Any]) -> None:
        out.append(doc)

    collect()
    return out


def _amounts_within_rules(doc: Any, amount: float) -> Any:
    if isinstance(doc, dict):
        return {k: amount if k in AMOUNTS and isinstance(v, int | float)
                and not isinstance(v, bool) else _amounts_within_rules(v, amount)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_amounts_within_rules(v, amount) for v in doc]
    return doc


# A message: (value, key, its valid events, its rejections: batch indexes, None for the whole)
Msg = tuple[bytes, bytes | None, list[dict[str, Any]], list[int | None]]


def messages_strategy(pool: list[dict[str, Any]]) -> st.SearchStrategy[Msg]:
    """One message, valid or not. Leaf strategies are built once: building them per draw
    cost more than drawing."""
    template = st.integers(0, len(pool) - 1)
    amount = st.floats(0, 1e6, allow_nan=False)
    when = st.integers(T_MIN, T_MAX)
    customer = st.integers(0, len(USERS) + len(ANONS) - 1)  # one draw: which id, which kind
    invalid_kind = st.sampled_from(["type", "ids", "wrong_type", "negative", "future",
                                    "ancient", "bad_time", "no_event"])
    bad_type = st.one_of(st.text(max_size=12).filter(lambda t: t not in KNOWN), st.integers(),
                         st.none(), st.lists(st.integers(), max_size=3))
    blank_id = st.sampled_from(["", "   ", None, "absent"])
    wrong_type = st.sampled_from([("userId", [1]), ("messageId", {"id": 1}),
                                  ("timestamp", [2026]), ("context", [1]), ("context", "web"),
                                  ("userId", 42)])
    future = st.integers(3 * 86400, 10**9)
    ancient = st.integers(-10**9, 631_152_000 - 86400)  # before 1990
    bad_time = st.sampled_from(["yesterday", "2026-13-45", "", "12:00"])
    roll = st.integers(0, 99)
    key_choice = st.integers(0, 2)
    garbage = st.one_of(
        st.binary(max_size=80).filter(lambda b: not b.strip().startswith(b"{")),
        st.binary(max_size=40).map(lambda b: b"\xff\xfe" + b),
        st.one_of(st.integers(), st.text(max_size=20), st.none(), st.booleans(),
                  st.lists(st.integers(), max_size=4), st.floats(allow_nan=False))
        .map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b'{"type":"page","userId":"\\ud800"}', b'{"batch": "x"}',
                         b'{"type":"page","userId":"x"', b"{}", b'{"batch": {}}']))

    @st.composite
    def valid_event(draw: Any) -> dict[str, Any]:
        doc = _amounts_within_rules(pool[draw(template)], draw(amount))
        doc.pop("originalTimestamp", None)
        doc["timestamp"] = iso(draw(when))
        n = draw(customer)
        if n >= len(USERS):
            doc["anonymousId"] = ANONS[n - len(USERS)]
            doc.pop("userId", None)
        else:
            doc["userId"] = USERS[n]
            doc.pop("anonymousId", None)  # with both ids it would be an identity merge
        return doc

    @st.composite
    def invalid_doc(draw: Any) -> dict[str, Any]:
        """A JSON object that is not a valid event (alone or inside a batch)."""
        doc = draw(valid_event())
        kind = draw(invalid_kind)
        if kind == "type":
            doc["type"] = draw(bad_type)
        elif kind == "ids":
            doc.pop("userId", None)
            doc.pop("anonymousId", None)
            blank = draw(blank_id)
            if blank != "absent":
                doc["userId"] = blank
        elif kind == "wrong_type":
            field, bad = draw(wrong_type)
            doc[field] = bad
        elif kind == "negative":
            doc.update(type="track", event="Order Completed",
                       properties={"total": -draw(amount) - 0.01, "currency": "EUR"})
        elif kind == "future":
            doc["timestamp"] = iso(int(time.time()) + draw(future))
        elif kind == "ancient":
            doc["timestamp"] = iso(draw(ancient))
        elif kind == "bad_time":
            doc["timestamp"] = draw(bad_time)
        else:
            doc["type"] = "track"
            doc.pop("event", None)
        return doc

    valid, invalid = valid_event(), invalid_doc()
    element = st.one_of(valid.map(lambda d: (d, True)), invalid.map(lambda d: (d, False)),
                        st.integers().map(lambda i: (i, False)))
    batch = st.lists(element, min_size=1, max_size=12)

    @st.composite
    def message(draw: Any) -> Msg:
        n = draw(roll)
        if n < 55:
            doc = draw(valid)
            key = [(doc.get("userId") or doc["anonymousId"]).encode(), None,
                   b"some-other-key"][draw(key_choice)]
            return json.dumps(doc).encode(), key, [doc], []
        if n < 65:  # a batch envelope, valid and invalid elements
            items = draw(batch)
            return (json.dumps({"batch": [d for d, _ in items]}).encode(), None,
                    [d for d, ok in items if ok],
                    [i for i, (_, ok) in enumerate(items) if not ok])
        if n < 85:
            return json.dumps(draw(invalid)).encode(), b"junk", [], [None]
        return draw(garbage), None, [], [None]

    return message()


def oversized(pool_doc: dict[str, Any]) -> list[Msg]:
    big = dict(pool_doc, padding="x" * (LIMITS.max_message_bytes + 10))
    batch = {"batch": [{"type": "page"}] * (LIMITS.max_batch_events + 1)}
    return [(json.dumps(big).encode(), b"big", [], [None]),
            (json.dumps(batch).encode(), None, [], [None])]


def generate(pool: list[dict[str, Any]], examples: int, per_example: int) -> list[Msg]:
    out: list[Msg] = []

    @settings(GENERATE, max_examples=examples)
    @given(st.lists(messages_strategy(pool), min_size=per_example, max_size=per_example))
    def collect(msgs: list[Msg]) -> None:
        out.extend(msgs)

    collect()
    return out


@pytest.mark.slow(30)
def test_ten_thousand_hostile_messages(broker, worker_factory, tmp_path):
    started = time.monotonic()
    pool = templates(50)
    messages = generate(pool, examples=105, per_example=96)
    messages += oversized(pool[0])
    # Unique message ids for the valid events, assigned after drawing (hypothesis repeats
    # values freely); some valid messages are then sent twice, as a producer retry would.
    serial = repeats = 0
    finished: list[Msg] = []
    for value, key, valid, rejected in messages:
        if valid:
            doc = json.loads(value)
            items = doc.get("batch", [doc])
            for index, item in enumerate(items):
                if index not in rejected:
                    serial += 1
                    item["messageId"] = f"fz-{serial}"
            value = json.dumps(doc).encode()
        finished.append((value, key, valid, rejected))
        if valid and not rejected and key is not None and serial % 37 == 0:
            # right after the original and to the same partition, as a producer retry (the
            # dedupe window holds each customer's last SEGMENTER_DEDUPE_WINDOW message ids)
            finished.append((value, key, valid, rejected))
            repeats += 1
    # Plus, on each of the 8 input partitions, an invalid message without a key and one with
    # a customer's key that our partitioner would put elsewhere (a producer with another
    # partitioner): sent to that partition by number.
    placed: list[int | None] = [None] * len(finished)
    for partition in range(8):
        for key in (None, USERS[partition].encode()):
            finished.append((b'{"type":"track","userId":' + str(partition).encode() + b"}",
                             key, [], [None]))
            placed.append(partition)
    generated_s = time.monotonic() - started

    # The expectation of each message against the pure parser first.
    now = time.time()
    expected_events: Counter[str] = Counter()
    applied_ids: set[str] = set()
    for value, _key, _valid, rejected in finished:
        good, bad = decode(value, now=now, fallback_ts=now, limits=LIMITS)
        assert [r.batch_index for r in bad] == rejected, (value[:300], [b.detail for b in bad])
        for rec in good:
            if rec.message_id not in applied_ids:
                applied_ids.add(rec.message_id)
                expected_events[rec.customer_id] += 1
    invalid = sum(len(m[3]) for m in finished)
    assert len(finished) >= 10_000 and invalid >= 2_000 and len(applied_ids) >= 5_000, (
        len(finished), invalid, len(applied_ids))

    # Output topics that exist already with fewer partitions than the service would make
    # (DLQ 1 of 4, segment-changes 3 of 8) and an input of 8: dead letters and changes
    # from input partitions 1-7 must still find a partition.
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("customer-interactions-dlq", 1, 1),
                         NewTopic("segment-changes", 3, 1)])
    admin.close()
    worker = worker_factory(clustering="false", tick_interval_s="3600", partitions="8").start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20,
                             batch_size=256 * 1024, max_request_size=2 * 1024 * 1024)
    futures = [(producer.send("customer-interactions", value=value, key=key,
                              partition=partition), rejected)
               for (value, key, _valid, rejected), partition in zip(finished, placed, strict=True)]
    producer.flush()
    origins = Counter()
    bad_on: set[tuple[int, bool]] = set()  # (input partition, keyed) of invalid messages
    for (future, rejected), (_v, key, _ok, _r) in zip(futures, finished, strict=True):
        meta = future.get(30)
        for index in rejected:
            origins[(meta.partition, meta.offset, index)] += 1
            bad_on.add((meta.partition, key is not None))
    assert bad_on == {(p, keyed) for p in range(8) for keyed in (True, False)}, bad_on
    producer.close()

    wait_for(lambda: (s := worker.get("/health").json()["stats"]).get("applied", 0)
             + s.get("duplicates", 0) >= len(applied_ids) + repeats
             and s.get("dead_letters", 0) >= invalid and s,
             timeout=120, interval=1, what="every message handled")
    stats = worker.get("/health").json()["stats"]
    assert worker.proc.poll() is None, worker.tail()
    assert (stats["applied"], stats["duplicates"], stats["dead_letters"]) == (
        len(applied_ids), repeats, invalid)

    dead = read_topic(broker, "customer-interactions-dlq", expect=invalid, timeout=60)
    seen = Counter()
    for rec in dead:
        h = {k: v.decode() for k, v in rec.headers}
        assert h["segmenter.dlq.reason"] in REASONS and h["segmenter.dlq.detail"]
        assert h["segmenter.dlq.topic"] == "customer-interactions" and h["segmenter.dlq.rejected_at"]
        index = int(h["segmenter.dlq.batch_index"]) if "segmenter.dlq.batch_index" in h else None
        seen[(int(h["segmenter.dlq.partition"]), int(h["segmenter.dlq.offset"]), index)] += 1
    assert seen == origins  # each invalid message or element exactly once, from where it came

    changed = read_topic(broker, "segment-changes", expect=100, timeout=60)
    assert {r.partition for r in changed} == {0, 1, 2}, "changes reach all 3 partitions"
    states = final_states(broker, worker.env["SEGMENTER_APP_ID"])
    counts = {cid: s["events"] for cid, s in states.items()}
    assert counts == dict(expected_events)
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "crashed" not in log.lower(), worker.tail()
    reasons = Counter(dict(rec.headers)["segmenter.dlq.reason"].decode() for rec in dead)
    print(f"\n{len(finished)} messages: {len(applied_ids)} valid events, {repeats} repeats, "
          f"{invalid} rejections {dict(reasons)}; generated in {generated_s:.1f}s, "
          f"test {time.monotonic() - started:.1f}s")
