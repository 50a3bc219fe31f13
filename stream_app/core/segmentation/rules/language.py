"""The condition language of rule segments: declarative, checked at load, compiled once.

A condition is a mapping. A *comparison* tests one subject with one operator::

    {feature: orders_30d, ">=": 3}
    {trait: country, in: [DE, AT, CH]}
    {trait: interests, contains: running}
    {window: {metric: revenue, days: 7}, ">": 100}

and ``and`` / ``or`` / ``not`` combine conditions. Subjects are the customer's features (as
computed at event time), profile traits, and order windows computed from the customer's
recent orders at event time. Every name is checked against :mod:`.fields` when the
definitions load, and so is every operator against the subject's kind (number, text, list),
so that a typo is an error rather than a rule that silently never matches.

Semantics worth knowing:

* Text is compared case-insensitively (traits arrive as ``DE`` from one source, ``de`` from
  another).
* A missing value (a trait never given, ``top_category`` with no categories, a value of the
  wrong type) fails every comparison except ``exists: false``, like NULL in SQL: to include
  customers without a country in a "not in" test, write ``not: {trait: country, in: [...]}``.

Conditions are evaluated by the code :mod:`.compiled` generates from them, once, at load:
the one evaluator of this language.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ...state.customer import DAY, CustomerState
from .fields import FEATURE_KINDS, TIME_FEATURES, TRAIT_KINDS, Kind, did_you_mean

Value = StrictBool | StrictFloat | StrictStr

# Operators, by the alias written in files; the model attribute is the value.
OPERATORS: dict[str, str] = {
    "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge",
    "between": "between", "in": "in_", "not in": "not_in",
    "contains": "contains", "contains any": "contains_any", "exists": "exists",
}
OPERATORS_BY_KIND: dict[Kind, tuple[str, ...]] = {
    "number": ("==", "!=", "<", "<=", ">", ">=", "between", "in", "not in", "exists"),
    "text": ("==", "!=", "in", "not in", "exists"),
    "list": ("contains", "contains any", "exists"),
}
SUBJECTS = ("feature", "trait", "window")


def fail(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as written (no "Value error, " prefix)."""
    return PydanticCustomError("definitions", message)


class StrictModel(BaseModel):
    """Frozen, and an unknown key is an error that names the keys allowed there."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    expects: ClassVar[str] = ""  # what a mapping of this kind holds, for error messages

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            allowed = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    hint = did_you_mean(str(key), allowed) if isinstance(key, str) else ""
                    raise fail(f"unexpected key {key!r}{hint}; {cls.expects}")
        return data


class Window(StrictModel):
    """An aggregate of the customer's orders within ``days`` before event time."""

    expects: ClassVar[str] = "a window has: metric (orders or revenue), days"
    metric: Literal["orders", "revenue"]
    days: Annotated[int, Field(strict=True, gt=0, le=3650)]

    @property
    def text(self) -> str:
        return f"{self.metric} in the last {self.days} days"

    def getter(self) -> Callable[[CustomerState, Mapping[str, Any], float], float]:
        span = self.days * DAY
        take_amount = self.metric == "revenue"

        def window(s: CustomerState, f: Mapping[str, Any], now: float) -> float:
            # the same "now" as features(): never before the customer's own latest event
            at = max(now, s.last_seen)
            return float(sum(amount if take_amount else 1.0
                             for ts, amount in s.recent_orders if at - ts <= span))
        return window


class Compare(StrictModel):
    """One subject (feature, trait or window) tested with one operator."""

    expects: ClassVar[str] = (
        "a comparison has one of feature / trait / window and one operator: "
        + ", ".join(OPERATORS) + " (or use and / or / not)")
    feature: StrictStr | None = None
    trait: StrictStr | None = None
    window: Window | None = None
    eq: Value | None = Field(None, alias="==")
    ne: Value | None = Field(None, alias="!=")
    lt: StrictFloat | None = Field(None, alias="<")
    le: StrictFloat | None = Field(None, alias="<=")
    gt: StrictFloat | None = Field(None, alias=">")
    ge: StrictFloat | None = Field(None, alias=">=")
    between: tuple[StrictFloat, StrictFloat] | None = None
    in_: Annotated[list[Value], Field(min_length=1)] | None = Field(None, alias="in")
    not_in: Annotated[list[Value], Field(min_length=1)] | None = Field(None, alias="not in")
    contains: Value | None = None
    contains_any: Annotated[list[Value], Field(min_length=1)] | None = Field(
        None, alias="contains any")
    exists: StrictBool | None = None

    @model_validator(mode="after")
    def _check(self) -> Compare:
        subjects = [name for name in SUBJECTS if getattr(self, name) is not None]
        if len(subjects) != 1:
            got = f" (got {' and '.join(subjects)})" if subjects else ""
            raise fail(f"a comparison needs exactly one of feature, trait or window{got}")
        kind, label = self._resolve()
        ops = [alias for alias, attr in OPERATORS.items() if attr in self.model_fields_set]
        if len(ops) != 1:
            raise fail(f"{label}: give exactly one operator"
                       + (f", not {len(ops)} ({', '.join(ops)}); combine them with and"
                          if ops else f": {', '.join(OPERATORS_BY_KIND[kind])}"))
        op, value = ops[0], getattr(self, OPERATORS[ops[0]])
        if value is None:
            raise fail(f"{label} {op} null: test for a missing value with exists: false")
        if op not in OPERATORS_BY_KIND[kind]:
            raise fail(f"{op!r} does not apply to {label}, which holds {_KIND_WORDS[kind]};"
                       f" use one of: {', '.join(OPERATORS_BY_KIND[kind])}")
        if op == "between" and value[0] > value[1]:
            raise fail(f"{label} between {_show(value[0])} and {_show(value[1])}:"
                       " the lower bound comes first")
        if op != "exists":  # its operand is a flag, not a value of the subject
            for item in value if isinstance(value, list) else [value]:
                _check_operand(kind, label, op, item)
        return self

    def _resolve(self) -> tuple[Kind, str]:
        """The subject's kind, and how to name it in messages; unknown names raise."""
        if self.window is not None:
            return "number", f"window {self.window.text!r}"
        if self.feature is not None:
            return _lookup("feature", self.feature, FEATURE_KINDS, "trait", TRAIT_KINDS)
        assert self.trait is not None
        return _lookup("trait", self.trait, TRAIT_KINDS, "feature", FEATURE_KINDS)

    def _operator(self) -> tuple[str, Any]:
        for alias, attr in OPERATORS.items():
            value = getattr(self, attr)
            if value is not None:
                return alias, value
        raise AssertionError("validated comparisons have an operator")

    @property
    def subject(self) -> str:
        return self.window.text if self.window is not None else str(self.feature or self.trait)

    @property
    def text(self) -> str:
        op, value = self._operator()
        if op == "exists":
            return f"{self.subject} {'exists' if value else 'is missing'}"
        if op == "between":
            return f"{self.subject} between {_show(value[0])} and {_show(value[1])}"
        if op == "contains any":
            op = "contains any of"
        return f"{self.subject} {op} {_show(value)}"

    @property
    def time_sensitive(self) -> bool:
        return self.window is not None or self.feature in TIME_FEATURES


class And(StrictModel):
    expects: ClassVar[str] = ("a mapping with and / or / not holds nothing else:"
                              " nest the other conditions inside it")
    all_of: Annotated[list[Condition], Field(min_length=1)] = Field(alias="and")

    @property
    def text(self) -> str:
        return " and ".join(f"({c.text})" if isinstance(c, Or) else c.text for c in self.all_of)

    @property
    def time_sensitive(self) -> bool:
        return any(c.time_sensitive for c in self.all_of)


class Or(StrictModel):
    expects: ClassVar[str] = And.expects
    any_of: Annotated[list[Condition], Field(min_length=1)] = Field(alias="or")

    @property
    def text(self) -> str:
        return " or ".join(f"({c.text})" if isinstance(c, And) else c.text for c in self.any_of)

    @property
    def time_sensitive(self) -> bool:
        return any(c.time_sensitive for c in self.any_of)


class Not(StrictModel):
    expects: ClassVar[str] = And.expects
    negated: Condition = Field(alias="not")

    @property
    def text(self) -> str:
        return f"not ({self.negated.text})"

    @property
    def time_sensitive(self) -> bool:
        return self.negated.time_sensitive


def _fixed_text(condition: BaseModel) -> bool:
    """True when a match always reads as the whole condition: no ``or`` to pick a branch of."""
    if isinstance(condition, Or):
        return False
    if isinstance(condition, And):
        return all(_fixed_text(c) for c in condition.all_of)
    return True  # a comparison, or a not (whose match is the text of what did not match)


_TAGS: dict[type[BaseModel], str] = {And: "<and>", Or: "<or>", Not: "<not>", Compare: "<compare>"}
TAGS = frozenset(_TAGS.values())  # appear in validation-error locations, never in files


def _tag(data: Any) -> str | None:
    """Which model a condition is, from its keys (tags in <> never clash with file keys)."""
    if isinstance(data, BaseModel):  # conditions assembled from already validated parts
        return _TAGS.get(type(data))
    if not isinstance(data, Mapping):
        return None
    for key, tag in (("and", "<and>"), ("or", "<or>"), ("not", "<not>")):
        if key in data:
            return tag
    return "<compare>"


Condition = Annotated[
    Annotated[And, Tag("<and>")] | Annotated[Or, Tag("<or>")] | Annotated[Not, Tag("<not>")]
    | Annotated[Compare, Tag("<compare>")],
    Discriminator(_tag, custom_error_type="definitions",
                  custom_error_message="a condition is a mapping: a comparison such as "
                  "{feature: orders, '>=': 1}, or and / or / not"),
]
for _model in (And, Or, Not):
    _model.model_rebuild()

_KIND_WORDS: dict[Kind, str] = {"number": "a number", "text": "text", "list": "a list of text"}


def _lookup(what: str, name: str, kinds: Mapping[str, Kind], other: str,
            other_kinds: Mapping[str, Kind]) -> tuple[Kind, str]:
    if name in kinds:
        return kinds[name], f"{what} {name!r}"
    if name in other_kinds:
        raise fail(f"unknown {what} {name!r}: it is a {other}, write {other}: {name}")
    raise fail(f"unknown {what} {name!r}{did_you_mean(name, kinds)}")


def _check_operand(kind: Kind, label: str, op: str, value: Any) -> None:
    if kind == "number" and isinstance(value, str):
        raise fail(f"{label} {op} {value!r}: {label} holds a number, compare it with numbers")
    if kind != "number" and isinstance(value, bool):
        raise fail(f"{label} {op} {_show(value)}: {label} holds {_KIND_WORDS[kind]}; YAML reads"
                   " unquoted yes/no/on/off/true/false as booleans, so quote the value"
                   " (for example 'NO' for Norway)")
    if kind != "number" and not isinstance(value, str):
        raise fail(f"{label} {op} {_show(value)}: {label} holds {_KIND_WORDS[kind]}, so quote"
                   f" the value ('{_show(value)}')")


def _show(value: Any) -> str:
    """Values as written in the file: 3 not 3.0, true not True, lists in brackets."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str | list | tuple) and not value)


_NUMBER = (int, float)
