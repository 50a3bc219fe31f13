"""The one evaluator of rule conditions: each segmentation's rules as generated Python.

From the validated definitions, two functions are generated once per segmentation (no other
code evaluates a condition). ``first_match`` tests the segments in order and returns the
index of the first match (``-1``: none): the worker's call after every applied event::

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

One call instead of two or three per comparison (closures per condition cost about five
times as much). A value of the wrong type never matches (a number test needs a number, a text
test a string, ``contains`` a list), except that the type test is left out where the value is
a float by construction (number features: ``features()`` gives them as floats, always; window
sums; not the predictions, which may be None).

``explain(i, s, f, now)`` says *why* segment ``i`` matched, the text of what matched (for an
``or``, its first matching branch), needed only when a customer's segment changes: it is the
change's ``reason``. ``tests/unit/test_rules_language.py`` checks every operator through these
functions and ``tests/unit/test_rules_compiled.py`` checks both against a plain interpreter of
the language on simulated customers. Nothing from a definitions file is pasted into the
source: names and operands are bound as globals of the generated functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...state.customer import CustomerState
from .fields import NULLABLE_FEATURES
from .language import _NUMBER, And, Compare, Condition, Not, Or, _fixed_text, _present

FirstMatch = Callable[[CustomerState, Mapping[str, Any], float], int]
Explain = Callable[[int, CustomerState, Mapping[str, Any], float], str]

_SYMBOL = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _any_casefolded_in(items: Any, wanted: frozenset[str]) -> bool:
    return any(isinstance(item, str) and item.casefold() in wanted for item in items)


class _Source:
    """Collects the globals and hoisted reads of one generated function."""

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {
            "_NUMBER": _NUMBER, "_SEQUENCE": (list, tuple), "_present": _present,
            "_any_in": _any_casefolded_in, "_join": " and ".join,
            "__builtins__": {"isinstance": isinstance, "str": str, "IndexError": IndexError},
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
    """A Python expression, true exactly when ``cond`` matches."""
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
    ``v`` appears once in it. Same results as :func:`_test` on floats."""
    if op in _SYMBOL:
        return f"({v} {_SYMBOL[op]} {src.const(value)})"
    if op == "between":
        low, high = value
        return f"({src.const(low)} <= {v} <= {src.const(high)})"
    return f"({v} {'in' if op == 'in' else 'not in'} {src.const(frozenset(value))})"


def _test(kind: str, op: str, value: Any, v: str, src: _Source, bind: str) -> str:
    """The test of one operator on subject ``v`` (``bind`` reads it first), its operand
    prepared once (case-folded, in a set)."""
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


def _text(cond: Condition, src: _Source) -> str:
    """A Python expression for what matched of ``cond``, evaluated only when it matches:
    the condition's text, or for an ``or`` the text of its first matching branch (joined
    with ``and`` for an ``and`` holding one)."""
    if isinstance(cond, And) and not _fixed_text(cond):
        return "_join((" + "".join(_text(c, src) + ", " for c in cond.all_of) + "))"
    if isinstance(cond, Or):
        *first, last = cond.any_of
        expr = _text(last, src)  # the last branch: the one left when the others did not match
        for c in reversed(first):
            expr = f"({_text(c, src)} if {_expr(c, src)} else {expr})"
        return expr
    return src.const(cond.text)


def _generate(name: str, args: str, body: list[str], src: _Source, label: str) -> Any:
    lines = [f"def {name}({args}):", *src.prologue(), *body]
    exec(compile("\n".join(lines) + "\n", f"<segmentation {label}>", "exec"), src.globals)
    fn = src.globals[name]
    fn.__doc__ = "\n".join(lines)  # the generated source, for whoever debugs it
    return fn


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A segmentation's conditions, compiled (see the module's docstring)."""

    first_match: FirstMatch  # (state, features, now) -> index of the first match, or -1
    explain: Explain  # (index, state, features, now) -> what matched of that condition


def compile_rules(conditions: Sequence[Condition], label: str = "rules") -> CompiledRules:
    """The generated ``first_match`` and ``explain`` of ``conditions``, tested in order."""
    src = _Source()
    body: list[str] = []
    for i, cond in enumerate(conditions):
        body += [f"    if {_expr(cond, src)}:", f"        return {i}"]
    first_match = _generate("first_match", "s, f, now", [*body, "    return -1"], src, label)
    src = _Source()
    body = []
    for i, cond in enumerate(conditions):
        body += [f"    if i == {i}:", f"        return {_text(cond, src)}"]
    explain = _generate("explain", "i, s, f, now", [*body, "    raise IndexError(i)"], src,
                        label)
    return CompiledRules(first_match, explain)


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
