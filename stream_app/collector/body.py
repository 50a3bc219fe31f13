"""A request body, read and decompressed within a bound.

The bound holds for the bytes on the wire and for what gunzip makes of them: decompression
asks zlib for at most the bytes still allowed, so a gzip bomb (a few KiB inflating to GiBs)
costs at most the bound in memory and the time to inflate that much, never more.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable

ENCODINGS = ("identity", "gzip", "x-gzip")


class TooLarge(Exception):
    """The body, or what it decompresses to, exceeds the limit."""


class BadEncoding(Exception):
    """A content encoding other than gzip, or a broken gzip stream."""


def _gunzipper() -> zlib._Decompress:
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer required


async def read_body(chunks: AsyncIterable[bytes], encoding: str | None, limit: int) -> bytes:
    """The body of ``chunks`` (the request stream), gunzipped if ``encoding`` says gzip.

    Raises :class:`TooLarge` as soon as more than ``limit`` bytes arrived or would come out
    of the decompressor, :class:`BadEncoding` for an unknown encoding or a corrupt stream.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise BadEncoding(f"Content-Encoding {encoding[:40]!r} is not supported (gzip is)")
    gz = _gunzipper() if encoding != "identity" else None
    received = 0
    out: list[bytes] = []
    size = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"body over {limit} bytes")
        if gz is None:
            out.append(chunk)
            continue
        size += _inflate(gz, chunk, out, limit - size)
    if gz is not None:
        if not gz.eof:
            raise BadEncoding("gzip stream truncated")
        if gz.unused_data:
            raise BadEncoding("data after the end of the gzip stream")
    return b"".join(out)


def gunzip(data: bytes, limit: int) -> bytes:
    """``data`` gunzipped, at most ``limit`` bytes (:class:`TooLarge` beyond)."""
    gz = _gunzipper()
    out: list[bytes] = []
    _inflate(gz, data, out, limit)
    if not gz.eof:
        raise BadEncoding("gzip stream truncated")
    return b"".join(out)


def _inflate(gz: zlib._Decompress, data: bytes, out: list[bytes], room: int) -> int:
    """Feed ``data``; append what comes out; return its size. Never more than ``room`` + 1
    bytes are produced: one more than allowed is enough to know the limit is exceeded."""
    produced = 0
    while data:
        try:
            piece = gz.decompress(data, room - produced + 1)
        except zlib.error as exc:
            raise BadEncoding(f"not a valid gzip stream: {exc}") from None
        produced += len(piece)
        if produced > room:
            raise TooLarge("body over the limit once decompressed")
        out.append(piece)
        data = gz.unconsumed_tail
        if gz.eof:
            break
    return produced
