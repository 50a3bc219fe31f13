"""A plain interpreter of the rule language, the reference the generated evaluator is checked
against (``stream_app/core/segmentation/rules/compiled.py`` is the only evaluator the service has).

Written for reading, not speed: each condition kind says what it means in a few lines, on the
language's documented semantics (case-insensitive text, a missing or wrongly typed value
fails every test but ``exists: false``, an ``or`` reads as its first matching branch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream_app.core.segmentation.rules.language import And, Compare, Condition, Not, Or
from stream_app.core.state.customer import CustomerState

ORDER = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
         "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float)


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, str | list | tuple) and not v)


def _folded(value: Any) -> set[str]:
    return {x.casefold() for x in (value if isinstance(value, list) else [value])}


def passes(kind: str, op: str, value: Any, v: Any) -> bool:
    if op == "exists":
        return _present(v) == bool(value)
    if kind == "number":
        if not _is_number(v):
            return False
        if op in ORDER:
            return bool(ORDER[op](v, value))
        if op == "between":
            return value[0] <= v <= value[1]
        return (v in set(value)) == (op == "in")
    if kind == "text":
        if not isinstance(v, str):
            return False
        return (v.casefold() in _folded(value)) == (op in ("==", "in"))
    if not isinstance(v, list | tuple):
        return False
    return any(isinstance(item, str) and item.casefold() in _folded(value) for item in v)


def matched(cond: Condition, s: CustomerState, f: Mapping[str, Any], now: float) -> str | None:
    """The text of what matched of ``cond``, or None when it does not match."""
    if isinstance(cond, And):
        texts = [matched(c, s, f, now) for c in cond.all_of]
        if any(t is None for t in texts):
            return None
        return cond.text if all(not isinstance(c, Or) and _fixed(c) for c in cond.all_of) \
            else " and ".join(t for t in texts if t is not None)
    if isinstance(cond, Or):
        return next((t for c in cond.any_of if (t := matched(c, s, f, now)) is not None), None)
    if isinstance(cond, Not):
        return cond.text if matched(cond.negated, s, f, now) is None else None
    assert isinstance(cond, Compare)
    kind = cond._resolve()[0]
    op, value = cond._operator()
    if cond.window is not None:
        v: Any = cond.window.getter()(s, f, now)
    elif cond.feature is not None:
        v = f.get(cond.feature)
    else:
        v = s.traits.get(cond.trait or "")
    return cond.text if passes(kind, op, value, v) else None


def _fixed(cond: Condition) -> bool:
    if isinstance(cond, Or):
        return False
    if isinstance(cond, And):
        return all(_fixed(c) for c in cond.all_of)
    return True


def first_match(conditions: list[Condition], s: CustomerState, f: Mapping[str, Any],
                now: float) -> tuple[int, str | None]:
    for i, cond in enumerate(conditions):
        text = matched(cond, s, f, now)
        if text is not None:
            return i, text
    return -1, None
