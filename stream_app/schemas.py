"""JSON Schemas generated from the pydantic models (the single source of truth)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from .core.events.models import Batch, DeadLetter, SegmentChange, SegmentMembership, SpecEvent

BASE = "https://segmenter.dev/schemas/"


def generate() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {
        "customer-interaction.schema.json": TypeAdapter(SpecEvent).json_schema(),
        "customer-interaction-batch.schema.json": Batch.model_json_schema(),
        "segment-change.schema.json": SegmentChange.model_json_schema(),
        "segment-membership.schema.json": SegmentMembership.model_json_schema(),
        "dead-letter.schema.json": DeadLetter.model_json_schema(),
    }
    for name, doc in docs.items():
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        doc["$id"] = BASE + name
    docs["customer-interaction.schema.json"]["title"] = "CustomerInteraction"
    return docs
