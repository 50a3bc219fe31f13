"""Definitions that change while the service runs: checked in full, versioned, encoded for
the definitions topic. No I/O here (the worker's side is :mod:`stream_app.host.redefinition`).

A :class:`DefinitionSet` is one accepted text of the definitions (YAML or JSON, as a file or
``PUT /admin/segmentations`` gives it) with its rule segmentations built. Its ``version`` is
the 32-bit content hash of the *normalised* definitions (:func:`.definitions.version_of`): no
timestamp and no counter, so every worker names the same definitions the same, whether it
read them from its file or from the topic, and re-applying them is a no-op. When and where
they came from travel beside it (``source``, ``published_at``) in the topic record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from .definitions import Definitions, DefinitionsError, parse_definitions
from .segmentation import RuleSegmentation

# The largest definitions accepted (a PUT body, the file, a topic record): the shipped
# defaults are ~6 KB; a Kafka record stays far below the usual 1 MB message limit.
MAX_DEFINITIONS_BYTES = 256 * 1024
RECORD_KEY = b"definitions"
SOURCES = ("file", "api", "defaults")


def text_hash(text: str) -> int:
    """32-bit hash of the raw text: tells whether a file was edited at all (layout too)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


@dataclass(frozen=True)
class DefinitionSet:
    definitions: Definitions
    text: str
    format: str  # "yaml" or "json"
    source: str  # "file", "api" or "defaults"
    segmentations: list[RuleSegmentation] = field(compare=False)

    @property
    def version(self) -> int:
        return self.definitions.version

    def describe(self) -> dict[str, Any]:
        """For GET /segmentations: the version in force and each segmentation's."""
        return {"version": self.version, "version_hex": f"{self.version:08x}",
                "source": self.source, "format": self.format,
                "segmentations": [seg.describe() for seg in self.segmentations],
                "text": self.text}


def parse_set(raw: bytes | str, *, format: str, source: str, name: str = "definitions"
              ) -> DefinitionSet:
    """Check definitions in full (the loader's every check) and build their segmentations.

    ``format`` is ``"json"`` or ``"yaml"``; ``name`` is how errors locate them. Raises
    :class:`DefinitionsError` for anything unusable, oversized or not UTF-8."""
    if format not in ("json", "yaml"):
        raise DefinitionsError(f"{name}: unknown format {format!r} (json or yaml)")
    if len(raw) > MAX_DEFINITIONS_BYTES:
        raise DefinitionsError(f"{name}: {len(raw)} bytes, more than the "
                               f"{MAX_DEFINITIONS_BYTES} accepted")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionsError(f"{name}: not UTF-8 text ({exc.reason} at byte "
                                   f"{exc.start})") from None
    else:
        text = raw
    source_name = name if name.endswith(f".{format}") else f"{name}.{format}"
    definitions = parse_definitions(text, source_name)
    segs = [RuleSegmentation(seg) for seg in definitions.segmentations]
    return DefinitionSet(definitions, text, format, source, segs)


def format_of(path_or_type: str) -> str:
    """``json`` for a ``.json`` file name or a JSON content type, else ``yaml``."""
    lowered = path_or_type.lower()
    return "json" if lowered.endswith(".json") or "json" in lowered.split(";")[0] else "yaml"


def encode_record(defs: DefinitionSet, *, file_version: int | None, published_at: float,
                  published_by: str) -> bytes:
    """The definitions topic's value: the text itself (checked again by every reader),
    and ``file_version``: the text hash of the definitions file the publisher had, so a
    worker whose file was edited since does not take older definitions over it."""
    return orjson.dumps({"version": defs.version, "format": defs.format, "text": defs.text,
                         "source": defs.source, "file_version": file_version,
                         "published_at": published_at, "published_by": published_by})


@dataclass(frozen=True)
class Published:
    defs: DefinitionSet
    file_version: int | None
    published_at: float
    published_by: str


def decode_record(value: bytes) -> Published:
    """A definitions topic record, checked in full: :class:`DefinitionsError` otherwise
    (a record from another version or producer is skipped, never applied in part)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DefinitionsError(f"definitions record: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        raise DefinitionsError("definitions record: expected an object with a 'text'")
    source = doc.get("source") if doc.get("source") in SOURCES else "api"
    defs = parse_set(doc["text"], format=str(doc.get("format", "yaml")), source=source,
                     name="definitions record")
    if doc.get("version") not in (None, defs.version):
        raise DefinitionsError(f"definitions record: version {doc.get('version')} does not "
                               f"match its text ({defs.version})")
    fv = doc.get("file_version")
    at = doc.get("published_at")
    return Published(defs, fv if isinstance(fv, int) else None,
                     float(at) if isinstance(at, int | float) else 0.0,
                     str(doc.get("published_by", "")))
