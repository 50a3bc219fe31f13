"""A segmentation's rules as one generated Python function: which segment matches first.

The closures of :meth:`Compare.compile` and friends say *why* a segment matched; that text is
needed only when a customer's segment changes. After every applied event the worker only
needs to know *which* segment matches, so each segmentation also gets a single function,
generated once from the validated definitions, that tests its segments in order and returns
the index of the first match (``-1``: none)::

    def first_match(s, f, now):
        x0 = f.get('recency_days')
        x1 = f.get('orders')
        x2 = traits.get('age')
        if (x0 <= _c0) and (x1 >= _c1):
            return 0
        if (isinstance(x2, _NUMBER) and _c3 <= x2 <= _c4):
            return 1
        ...
        return -1

One call instead of two or three per comparison: about five times cheaper. Every test is the
same expression as in :func:`.language._test` (same operands, same order, same short
circuits), except that the type test is left out where the value is a float by construction
(number features: ``features()`` gives them as floats, always; window sums; not the
predictions, which may be None).
``tests/unit/test_rules_compiled.py`` checks the two against each other on simulated
customers. Nothing from a definitions file is pasted into the source: names and
operands are bound as globals of the generated function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...state.customer import CustomerState
from .fields import NULLABLE_FEATURES
from .language import _NUMBER, And, Compare, Condition, Not, Or, _present

FirstMatch = Callable[[CustomerState, Mapping[str, Any], float], int]

_SYMBOL = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _any_casefolded_in(items: Any, wanted: frozenset[str]) -> bool:
    return any(isinstance(item, str) and item.casefold() in wanted for item in items)


class _Source:
    """Collects the globals and hoisted reads of one generated function."""

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {
            "_NUMBER": _NUMBER, "_SEQUENCE": (list, tuple), "_present": _present,
            "_any_in": _any_casefolded_in, "__builtins__": {"isinstance": isinstance, "str": str},
        }
        self.reads: dict[tuple[str, str], str] = {}  # (feature|trait, name) -> local name

    def const(self, value: Any) -> str:
        name = f"_c{len(self.globals)}"
        self.globals[name] = value
        return name

    def read(self, source: str, name: str) -> str:
        """A local holding ``f.get(name)`` (features) or ``traits.get(name)`` (traits)."""
        key = (source, name)
        if key not in self.reads:
            self.reads[key] = f"x{len(self.reads)}"
        return self.reads[key]

    def prologue(self) -> list[str]:
        lines = ["    traits = s.traits"]
        for (source, name), local in self.reads.items():
            mapping = "f" if source == "feature" else "traits"
            lines.append(f"    {local} = {mapping}.get({self.const(name)})")
        return lines


def _expr(cond: Condition, src: _Source) -> str:
    """A Python expression, true exactly when ``cond.compile()`` returns a text."""
    if isinstance(cond, And):
        return "(" + " and ".join(_expr(c, src) for c in cond.all_of) + ")"
    if isinstance(cond, Or):
        return "(" + " or ".join(_expr(c, src) for c in cond.any_of) + ")"
    if isinstance(cond, Not):
        return f"(not {_expr(cond.negated, src)})"
    assert isinstance(cond, Compare)
    kind = cond._resolve()[0]
    op, value = cond._operator()
    if cond.window is not None:
        v = f"{src.const(cond.window.getter())}(s, f, now)"
        if op != "exists":  # a window is a float sum, always: no type test, read once
            return _test_number(op, value, v, src)
    elif cond.feature is not None:
        v = src.read("feature", cond.feature)
        if kind == "number" and op != "exists" and cond.feature not in NULLABLE_FEATURES:
            # features() gives every number feature as a float, always: no type test
            # (predictions may be None: tested as traits are)
            return _test_number(op, value, v, src)
    else:
        assert cond.trait is not None
        v = src.read("trait", cond.trait)
    return _test(kind, op, value, v, src, bind=v)


def _test_number(op: str, value: Any, v: str, src: _Source) -> str:
    """The comparison of a value known to be a float (a window's sum, a number feature);
    ``v`` appears once in it. Same results as :func:`.language._test` on floats."""
    if op in _SYMBOL:
        return f"({v} {_SYMBOL[op]} {src.const(value)})"
    if op == "between":
        low, high = value
        return f"({src.const(low)} <= {v} <= {src.const(high)})"
    return f"({v} {'in' if op == 'in' else 'not in'} {src.const(frozenset(value))})"


def _test(kind: str, op: str, value: Any, v: str, src: _Source, bind: str) -> str:
    """The expression of :func:`.language._test` for subject ``v`` (``bind`` reads it first)."""
    if op == "exists":
        return f"_present({bind})" if value else f"(not _present({bind}))"
    if kind == "number":
        if op in _SYMBOL:
            return f"(isinstance({bind}, _NUMBER) and {v} {_SYMBOL[op]} {src.const(value)})"
        if op == "between":
            low, high = value
            return (f"(isinstance({bind}, _NUMBER) and "
                    f"{src.const(low)} <= {v} <= {src.const(high)})")
        numbers = src.const(frozenset(value))
        return f"(isinstance({bind}, _NUMBER) and ({v} {'in' if op == 'in' else 'not in'} {numbers}))"
    if kind == "text":
        texts = src.const(frozenset(x.casefold() for x in (value if isinstance(value, list)
                                                            else [value])))
        inside = "in" if op in ("==", "in") else "not in"
        return f"(isinstance({bind}, str) and ({v}.casefold() {inside} {texts}))"
    wanted = src.const(frozenset(x.casefold() for x in (value if isinstance(value, list)
                                                         else [value])))
    return f"(isinstance({bind}, _SEQUENCE) and _any_in({v}, {wanted}))"


def compile_first_match(conditions: Sequence[Condition], label: str = "rules") -> FirstMatch:
    """One function ``(state, features, now) -> index of the first matching condition``."""
    src = _Source()
    body: list[str] = []
    for i, cond in enumerate(conditions):
        body += [f"    if {_expr(cond, src)}:", f"        return {i}"]
    lines = ["def first_match(s, f, now):", *src.prologue(), *body, "    return -1"]
    namespace = src.globals
    exec(compile("\n".join(lines) + "\n", f"<segmentation {label}>", "exec"), namespace)
    fn: FirstMatch = namespace["first_match"]
    fn.__doc__ = "\n".join(lines)  # the generated source, for whoever debugs it
    return fn


def subjects(cond: Condition) -> set[tuple[str, str]]:
    """What a condition reads: ``("feature", name)``, ``("trait", name)`` or ``("window", text)``."""
    if isinstance(cond, And):
        return set().union(*(subjects(c) for c in cond.all_of))
    if isinstance(cond, Or):
        return set().union(*(subjects(c) for c in cond.any_of))
    if isinstance(cond, Not):
        return subjects(cond.negated)
    assert isinstance(cond, Compare)
    if cond.window is not None:
        return {("window", cond.window.text)}
    if cond.feature is not None:
        return {("feature", cond.feature)}
    assert cond.trait is not None
    return {("trait", cond.trait)}
