"""Lossless compression of an update body, with decompression that cannot be bombed.

The declared size of the body is checked against the shapes before anything is inflated, and
inflation stops one byte past it, so a tiny malicious blob cannot expand into gigabytes.
"""

import io
import zlib
from typing import Literal

import zstandard

Compression = Literal["none", "zlib", "zstd"]


class CompressionError(ValueError):
    """The compressed body is corrupt or inflates to another size than declared."""


def compress(body: bytes, method: Compression) -> bytes:
    """Compress `body` with `method`."""
    if method == "zlib":
        return zlib.compress(body, 6)
    if method == "zstd":
        return zstandard.ZstdCompressor(level=6).compress(body)
    return body


def decompress(data: bytes, method: Compression, expected_bytes: int) -> bytes:
    """Inflate `data`; it must come to exactly `expected_bytes`."""
    try:
        if method == "zlib":
            inflater = zlib.decompressobj()
            body = inflater.decompress(data, expected_bytes + 1)
            if not inflater.eof and len(body) <= expected_bytes:
                raise CompressionError("zlib stream is truncated")
        elif method == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
            body = reader.read(expected_bytes + 1)
        else:
            body = data
    except (zlib.error, zstandard.ZstdError) as exc:
        raise CompressionError(f"{method} body is corrupt ({exc})") from None
    if len(body) != expected_bytes:
        raise CompressionError(
            f"body inflates to {'more than ' if len(body) > expected_bytes else ''}"
            f"{len(body)} bytes, header declares {expected_bytes}"
        )
    return body


def inflate_bounded(data: bytes, limit: int) -> bytes:
    """Inflate a zstd frame of unknown size, refusing one that comes to more than `limit`."""
    try:
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(limit + 1)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"zstd frame is corrupt ({exc})") from None
    if len(body) > limit:
        raise CompressionError(f"inflates to more than {limit} bytes")
    return body
