"""Rule-segment definitions: the file format, loading with errors that point into the file,
and versions.

A definitions file (YAML, or JSON when its name ends in ``.json``) holds a list of named
segmentations; each is an ordered list of segments, and the first segment whose ``when``
matches a customer wins::

    segmentations:
      - name: geographic
        description: Market, from the country trait
        segments:
          - id: dach
            name: DACH
            when: {trait: country, in: [DE, AT, CH]}

Everything is checked at load, and every problem is reported with where it is, as a line
number and a path through the file (``segments.yaml:14: segmentations[2] (geographic) ->
segments[1] (dach) -> when.and[0]: unknown feature 'ordrs_30d' (did you mean
'orders_30d'?)``), because a rule that loads but can never match is found much later, by
someone else.

Versions are short stable hashes of the *normalised* definitions (parsed, defaults filled in,
keys sorted, numbers as numbers): comments, layout, key order and YAML-versus-JSON do not
change them; any edit that can change a membership or a name does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import AfterValidator, BaseModel, Field, StrictStr, ValidationError, model_validator

from .language import TAGS, Condition, StrictModel, fail

# The learned clustering's segmentation (clustering.trainer.SEGMENTATION); not imported from
# there because that pulls in the whole clustering stack. A test keeps the two in step.
RESERVED_NAMES = frozenset({"behavior"})
DEFAULTS = "defaults/segments.yaml"
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,39}")
Loc = tuple[str | int, ...]  # a place in the document: keys and list indices


def _identifier(value: str) -> str:
    # Names and ids end up in topic payloads, metric labels and URLs: keep them plain.
    if not _IDENTIFIER.fullmatch(value):
        raise fail(f"{value!r} is not a valid id: use lower-case letters, digits and _,"
                   " starting with a letter, at most 40 characters")
    return value


Identifier = Annotated[StrictStr, AfterValidator(_identifier)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=80)]


def version_of(model: BaseModel) -> int:
    """32-bit hash of the normalised model: the same definitions give the same version."""
    doc = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(raw.encode(), digest_size=4).digest(), "big")


class SegmentDef(StrictModel):
    expects: ClassVar[str] = "a segment has: id, name, description, when"
    id: Identifier
    name: Label
    description: StrictStr = ""
    when: Condition


class SegmentationDef(StrictModel):
    expects: ClassVar[str] = "a segmentation has: name, description, segments"
    name: Identifier
    description: StrictStr = ""
    segments: Annotated[list[SegmentDef], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> SegmentationDef:
        if self.name in RESERVED_NAMES:
            raise fail(f"the name {self.name!r} is reserved for the learned clustering;"
                       " choose another")
        _unique([seg.id for seg in self.segments], "segment id", "segments")
        return self

    @property
    def version(self) -> int:
        return version_of(self)

    @property
    def time_sensitive(self) -> bool:
        """True when a segment depends on time passing (recency, days since, windows)."""
        return any(seg.when.time_sensitive for seg in self.segments)


class Definitions(StrictModel):
    expects: ClassVar[str] = "the file has: segmentations"
    segmentations: list[SegmentationDef]

    @model_validator(mode="after")
    def _check(self) -> Definitions:
        _unique([s.name for s in self.segmentations], "segmentation name", "segmentations")
        return self

    @property
    def version(self) -> int:
        return version_of(self)


class DefinitionsError(Exception):
    """The definitions cannot be used; the message says where in the file and why."""


def load_definitions(path: str | Path | None = None) -> Definitions:
    """Read and check a definitions file; ``None`` loads the shipped defaults."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULTS).read_text(encoding="utf-8")
        return parse_definitions(text, DEFAULTS)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionsError(f"{path}: cannot read the definitions: {exc}") from None
    return parse_definitions(text, str(path))


def parse_definitions(text: str, source: str) -> Definitions:
    """Check definitions given as text; ``source`` names it in errors (and ``.json`` = JSON)."""
    lines: dict[Loc, int]
    if source.lower().endswith(".json"):
        data, lines = _read_json(text, source), {}  # json gives no positions after parsing
    else:
        data, lines = _read_yaml(text, source)
    if not isinstance(data, Mapping):
        raise DefinitionsError(f"{source}: expected a mapping with a 'segmentations' list")
    try:
        return Definitions.model_validate(data)
    except ValidationError as exc:
        raise DefinitionsError("\n".join(
            _describe(source, data, lines, err) for err in exc.errors())) from None


def _unique(values: list[str], what: str, where: str) -> None:
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            raise fail(f"duplicate {what} {value!r} ({where}[{first[value]}] and {where}[{i}])")
        first[value] = i


def _read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionsError(f"{source}{at}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    if node is not None:
        _index(node, (), lines, data, source)
    return data, lines


def _index(node: yaml.Node, path: Loc, lines: dict[Loc, int], data: Any, source: str,
           inside: frozenset[int] = frozenset()) -> None:
    """Map each path in the document to its line; refuse duplicate keys.

    PyYAML keeps the last of two equal keys without a word: a second ``when`` would
    silently replace the first.
    """
    if id(node) in inside:  # an alias to an enclosing node: a cycle, already indexed
        return
    inside |= {id(node)}
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = key_node.value
            if key in seen:
                where = _where(data, path)
                raise DefinitionsError(f"{source}:{key_node.start_mark.line + 1}: "
                                       f"{where + ': ' if where else ''}duplicate key {key!r}")
            seen.add(key)
            _index(value_node, (*path, key), lines, data, source, inside)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, data, source, inside)


def _read_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DefinitionsError(f"{source}: duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise DefinitionsError(
            f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def _describe(source: str, data: Any, lines: Mapping[Loc, int], err: Any) -> str:
    path = tuple(key for key in err["loc"] if key not in TAGS)
    line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), None)
    where = _where(data, path)
    message = err["msg"]
    value = err.get("input")
    if err["type"] != "definitions" and isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    head = f"{source}:{line}" if line is not None else source
    return f"{head}: {where}: {message}" if where else f"{head}: {message}"


def _where(data: Any, path: Loc) -> str:
    """``segmentations[2] (geographic) -> segments[1] (dach) -> when.and[0]``."""
    sections: list[str] = []
    current = ""
    node = data
    for key in path:
        if isinstance(key, int):
            current += f"[{key}]"
            node = node[key] if isinstance(node, list) and 0 <= key < len(node) else None
            label = _label(node)
            if label:
                sections.append(f"{current} ({label})")
                current = ""
        else:
            current = f"{current}.{key}" if current else key
            node = node.get(key) if isinstance(node, Mapping) else None
    if current:
        sections.append(current)
    return " -> ".join(sections)


def _label(node: Any) -> str | None:
    """A list item's id or name (segments and segmentations), to say which one is meant."""
    if isinstance(node, Mapping):
        for key in ("id", "name"):
            value = node.get(key)
            if isinstance(value, str) and value:
                return value
    return None
