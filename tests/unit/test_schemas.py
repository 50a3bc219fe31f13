"""The JSON Schema files in schemas/ are generated from the pydantic models and kept in sync."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from stream_app.core.events.parse import decode
from stream_app.schemas import generate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NOW = 1_700_000_000.0


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_committed_schemas_match_the_models() -> None:
    docs = generate()
    assert sorted(docs) == sorted(p.name for p in SCHEMAS.glob("*.json"))
    for name, doc in docs.items():
        expected = json.dumps(doc, indent=2, sort_keys=True) + "\n"  # as `segmenter schemas`
        assert (SCHEMAS / name).read_text() == expected, f"{name} is stale: run segmenter schemas"


def test_schemas_identify_themselves() -> None:
    for name, doc in generate().items():
        assert doc["$id"].endswith("/" + name)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"


SAMPLES = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": "a1",
     "messageId": "m-1", "timestamp": "2023-11-14T22:13:20.123Z",
     "context": {"channel": "browser", "campaign": {"source": "newsletter"}},
     "properties": {"order_id": "o-9", "total": 42.5, "currency": "EUR",
                    "products": [{"product_id": "p1", "category": "Shoes", "price": 42.5,
                                  "quantity": 1}]}},
    {"type": "identify", "userId": "u1", "traits": {
        "age": 34, "gender": "female", "address": {"country": "DE", "postalCode": "80331"},
        "interests": ["golf"], "email": "kept@out.example"}},
    {"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"category": "Docs"}},
    {"type": "screen", "userId": "u1", "name": "Cart"},
    {"type": "alias", "userId": "u1", "previousId": "a1"},
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e["type"])
def test_valid_events_validate_against_the_schema(event: dict[str, Any]) -> None:
    validator("customer-interaction.schema.json").validate(event)
    recs, rejects = decode(orjson.dumps(event), now=NOW, fallback_ts=NOW)  # and the service agrees
    assert rejects == [] and len(recs) == 1


def test_batch_envelope_validates() -> None:
    validator("customer-interaction-batch.schema.json").validate({"batch": SAMPLES})


@pytest.mark.parametrize("event", [
    {"type": "purchase", "userId": "u1"},
    {"type": "track", "userId": "u1"},  # no event name
    {"type": "track", "event": "X", "userId": "u1", "properties": {"currency": "euro"}},
    {"type": "identify", "userId": "u1", "traits": {"age": 300}},
    {"type": "alias", "userId": "u1"},
    {"type": "track", "event": "X", "userId": ""},
])
def test_invalid_events_fail_the_schema(event: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator("customer-interaction.schema.json").validate(event)


def test_segment_change_schema_forbids_unknown_fields() -> None:
    change = {"change_id": "c", "customer_id": "u1", "segmentation": "behavior",
              "previous_segment": None, "segment": "s1", "segment_name": "Loyal",
              "model_version": 3, "occurred_at": "2023-11-14T22:13:20Z", "reason": "nearest"}
    v = validator("segment-change.schema.json")
    v.validate(change)
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**change, "extra": 1})
