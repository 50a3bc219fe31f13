"""The input contract: Segment / RudderStack spec events, as pydantic models.

These models are the source of truth; ``schemas/*.json`` is generated from them
(``segmenter schemas``) and a test keeps the files in sync.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

# pattern: not only whitespace (stripped, it would be empty), and no control characters
# (ids are table keys and Kafka keys); says so in the JSON Schema too
Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256,
                                     pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")]
ANON_PREFIX = "anonymous_id:"  # reserved: see events/interaction.py
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                        pattern=r"\S")]

MAX_AMOUNT = 1e9


def _amount(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError("amount must be a finite number")
    if value < 0:
        raise ValueError("negative amount")
    if value > MAX_AMOUNT:
        raise ValueError(f"amount above {MAX_AMOUNT:g}")
    return value


Amount = Annotated[float | None, AfterValidator(_amount)]


class _Open(BaseModel):
    """Spec objects carry many optional fields; unknown ones are ignored, known ones checked."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Campaign(_Open):
    name: ShortText | None = None
    source: ShortText | None = None
    medium: ShortText | None = None
    term: ShortText | None = None
    content: ShortText | None = None


class Context(_Open):
    channel: Label | None = Field(None, description="browser, mobile, server, email, store, ...")
    campaign: Campaign | None = None
    locale: Label | None = None
    timezone: Label | None = None
    ip: Label | None = None
    userAgent: Annotated[str, StringConstraints(max_length=1024)] | None = None


class Product(_Open):
    product_id: Label | None = None
    sku: Label | None = None
    category: ShortText | None = None
    name: ShortText | None = None
    price: Amount = None
    quantity: Annotated[float, Field(ge=0, le=1e6)] | None = None


class Properties(_Open):
    """Track / page properties. E-commerce fields are checked; others are kept out of state."""

    order_id: Label | None = None
    total: Amount = None
    revenue: Amount = None
    subtotal: Amount = None
    value: Amount = None
    price: Amount = None
    quantity: Annotated[float, Field(ge=0, le=1e6)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")] | None = None
    category: ShortText | None = None
    channel: Label | None = None
    products: Annotated[list[Product], Field(max_length=200)] = Field(default_factory=list)


class Address(_Open):
    country: ShortText | None = None
    region: ShortText | None = Field(None, validation_alias="region")
    state: ShortText | None = None
    city: ShortText | None = None
    postal_code: ShortText | None = Field(None, alias="postalCode")


class Traits(_Open):
    """Profile traits kept for segmentation (demographic, geographic, psychographic).

    Contact details (email, name, phone) are deliberately not kept.
    """

    age: Annotated[int, Field(ge=0, le=130)] | None = None
    gender: Label | None = None
    income: Amount = None
    address: Address | None = None
    country: ShortText | None = None
    region: ShortText | None = None
    city: ShortText | None = None
    interests: Annotated[list[Label], Field(max_length=32)] | None = None
    lifestyle: Annotated[list[Label], Field(max_length=32)] | None = None
    values: Annotated[list[Label], Field(max_length=32)] | None = None

    @field_validator("interests", "lifestyle", "values", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class _Event(_Open):
    messageId: Id | None = Field(
        None, description="Unique per message; used to apply a redelivered message once. "
        "When absent a digest of the message content stands in (with the Kafka record "
        "timestamp when the event has no timestamp of its own)."
    )
    userId: Id | None = None
    anonymousId: Id | None = None
    timestamp: datetime | None = Field(
        None, description="ISO 8601 event time (UTC when no offset is given)."
    )
    originalTimestamp: datetime | None = None
    context: Context = Field(default_factory=Context)

    @model_validator(mode="after")
    def _check_common(self, info: ValidationInfo) -> _Event:
        if not self.userId and not self.anonymousId:
            raise ValueError("missing_id: one of userId or anonymousId is required")
        if self.userId and self.userId.startswith(ANON_PREFIX):
            raise ValueError(f"userId: the prefix {ANON_PREFIX!r} is reserved for anonymous "
                             "customers (send the id as anonymousId)")
        when = self.event_time
        if when is not None and info.context:
            now = info.context.get("now")
            skew = info.context.get("max_future_skew_s")
            if now is not None and skew is not None and when.timestamp() > now + skew:
                raise ValueError("future_timestamp: timestamp is too far in the future")
        if when is not None and when.year < 1990:
            raise ValueError("ancient_timestamp: timestamp before 1990")
        return self

    @property
    def event_time(self) -> datetime | None:
        when = self.timestamp or self.originalTimestamp
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when

    @property
    def customer_id(self) -> str:
        """The customer's key: the user id, else ``anonymous_id:<anonymous id>``."""
        return self.userId or ANON_PREFIX + self.anonymousId  # type: ignore[operator]


class Track(_Event):
    type: Literal["track"]
    event: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                            pattern=r"\S")]
    properties: Properties = Field(default_factory=Properties)


class Identify(_Event):
    type: Literal["identify"]
    traits: Traits = Field(default_factory=Traits)


class Page(_Event):
    type: Literal["page"]
    name: ShortText | None = None
    category: ShortText | None = None
    properties: Properties = Field(default_factory=Properties)


class Screen(_Event):
    type: Literal["screen"]
    name: ShortText | None = None
    category: ShortText | None = None
    properties: Properties = Field(default_factory=Properties)


class Alias(_Event):
    type: Literal["alias"]
    previousId: Id

    @model_validator(mode="after")
    def _needs_user(self) -> Alias:
        if not self.userId:
            raise ValueError("missing_id: alias needs userId (the new id) and previousId")
        return self


SpecEvent = Annotated[Track | Identify | Page | Screen | Alias, Field(discriminator="type")]


class Batch(_Open):
    """Many events in one Kafka message: ``{"batch": [event, ...]}``."""

    batch: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Output contract: dead letters and segment changes


class DeadLetterSource(BaseModel):
    topic: str
    partition: int
    offset: int
    batch_index: int | None = Field(None, description="Index inside a batch envelope, if any")


class DeadLetter(BaseModel):
    """Headers and JSON description of a rejected message (value: the original bytes)."""

    reason: str = Field(description="Machine-readable reason code, e.g. not_json, missing_id")
    detail: str = Field(description="Human-readable explanation")
    source: DeadLetterSource
    rejected_at: datetime


class SegmentChange(BaseModel):
    """Published on ``segment-changes``, keyed by customer id."""

    model_config = ConfigDict(extra="forbid")

    change_id: str = Field(description="Deterministic and unique: consumers dedupe on it")
    customer_id: str
    segmentation: str = Field(description="'behavior' for the clustering, or a rule segmentation")
    previous_segment: str | None = Field(description="null on first assignment")
    segment: str | None = Field(description="null when the customer leaves every segment")
    segment_name: str | None
    model_version: int | None = Field(
        description="Clustering model version, or definitions version for rule segmentations"
    )
    occurred_at: datetime = Field(description="Event time of what caused the change")
    reason: str


class SegmentMembership(BaseModel):
    """Published on ``segment-memberships`` (compacted), keyed by customer id: the
    customer's current segments, written after each change of that customer, in the same
    delivery as the change records; a tombstone (no value) when the customer is erased or
    merged into another one."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str
    segments: dict[str, str | None] = Field(
        description="Every segmentation in force: the customer's segment id, or null")
    updated_at: datetime = Field(
        description="Event time of the customer's latest change (the occurred_at of its last "
                    "segment-change): the same value when re-written after a crash")
