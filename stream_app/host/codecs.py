"""The Faust codecs of the worker's tables and internal topics (registered by name): the
core's own serialisation (:mod:`stream_app.core.state.codec`, pickle-free) under Faust's codec
interface, so that the core imports nothing of Faust."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs

from ..core.state.codec import dumps, loads


class StateCodec(codecs.Codec):
    """Faust codec for the customer table (changelog and rocksdb values).

    Faust writes a deleted key's tombstone through its raw codec as ``b""``, so an empty
    value reads back as None (absent).
    """

    def _dumps(self, obj: Any) -> bytes:
        return dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return loads(s) if s else None


class JsonCodec(codecs.Codec):
    """orjson for internal topics and small tables (no pickle anywhere)."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


class Utf8Codec(codecs.Codec):
    """Table keys: customer ids as plain UTF-8, so key bytes match the producers' keys."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return s.decode() if s else None


def register() -> None:
    codecs.register("customer-state", StateCodec())
    codecs.register("orjson", JsonCodec())
    codecs.register("utf8", Utf8Codec())
