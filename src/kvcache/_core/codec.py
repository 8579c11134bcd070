"""The wire format of a cached value. Pure, no I/O.

* An ``int`` (not ``bool``) is stored as plain decimal text, so INCRBY/DECRBY work on it.
* Anything else is one header byte and the serializer's bytes:
  ``0x00`` plain, ``0x01`` zlib-compressed (used when it saves space above a size threshold).
* A value kept past its logical expiry for fail-safe (``stale_ttl``) is wrapped: ``0x02``,
  the expiry as 8 bytes (Unix ms, big-endian), then one of the shapes above. Every reader
  knows from the value alone whether it is fresh, whatever its own settings.

A payload that fits neither shape (written by another program, truncated, tampered with),
or whose serialized value is larger than ``max_value_size`` (a zlib bomb planted in Redis is
inflated only that far), raises ``SerializationError``; the facade turns that into a miss
plus an ``error`` event. Writing a value larger than that raises ``ValueTooLargeError``.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from kvcache.errors import ConfigurationError, SerializationError, ValueTooLargeError
from kvcache.serializers import JsonSerializer, Serializer

PLAIN = b"\x00"
ZLIB = b"\x01"
TIMED = b"\x02"
_EXPIRY = struct.Struct(">q")
_TIMED_HEADER = 1 + _EXPIRY.size
DEFAULT_COMPRESS_THRESHOLD = 1024  # bytes; smaller values rarely shrink enough to pay for zlib
DEFAULT_MAX_VALUE_SIZE = 16 * 1024 * 1024  # bytes of a serialized value, written or read
_INFLATE_CHUNK = 1024 * 1024  # bytes inflated at a time: a bomb stops at the limit
_INTEGER = re.compile(rb"-?[0-9]+")


class Codec:
    __slots__ = ("_threshold", "max_value_size", "serializer")

    def __init__(
        self,
        serializer: Serializer | None = None,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    ) -> None:
        if serializer is None:
            serializer = JsonSerializer()
        elif not isinstance(serializer, Serializer):
            raise ConfigurationError("serializer must have dumps(value) and loads(data) methods")
        if compress_threshold is not None and (
            not isinstance(compress_threshold, int) or compress_threshold < 0
        ):
            raise ConfigurationError("compress_threshold must be an integer >= 0, or None")
        if type(max_value_size) is not int or max_value_size < 1:
            raise ConfigurationError("max_value_size must be a positive integer (bytes)")
        self.serializer = serializer
        self._threshold = compress_threshold
        self.max_value_size = max_value_size

    def encode(self, value: Any, fresh_until: int | None = None) -> bytes:
        """The stored bytes of ``value``; ``fresh_until`` (Unix ms) wraps it with a logical
        expiry, except an int (INCRBY must still work on it)."""
        if fresh_until is not None and type(value) is not int:
            return TIMED + _EXPIRY.pack(fresh_until) + self.encode(value)
        try:
            if type(value) is int:
                return b"%d" % value  # ValueError past sys.get_int_max_str_digits()
            body = self.serializer.dumps(value)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize a value of type {type(value).__name__} "
                f"with {self.serializer!r}: {exc}"
            ) from exc
        if len(body) > self.max_value_size:
            raise ValueTooLargeError(
                f"a value of type {type(value).__name__} is {len(body)} bytes serialized, "
                f"more than max_value_size (KVCACHE_MAX_VALUE_SIZE) = {self.max_value_size}"
            )
        if self._threshold is not None and len(body) >= self._threshold:
            packed = zlib.compress(body)
            if len(packed) < len(body):
                return ZLIB + packed
        return PLAIN + body

    def decode(self, data: bytes) -> Any:
        head = data[:1]
        try:
            if head == PLAIN:
                if len(data) - 1 > self.max_value_size:
                    raise SerializationError(_TOO_LARGE.format(self.max_value_size))
                return self.serializer.loads(data[1:])
            if head == ZLIB:
                return self.serializer.loads(_inflate(data, self.max_value_size))
            if head == TIMED and data[_TIMED_HEADER : _TIMED_HEADER + 1] not in (b"", TIMED):
                return self.decode(data[_TIMED_HEADER:])  # wrapped once, never twice
            if _INTEGER.fullmatch(data):
                return int(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"stored payload is not a kvcache value ({type(exc).__name__})"
            ) from exc
        raise SerializationError("stored payload is not a kvcache value (unknown format)")


def fresh_until(data: bytes) -> int | None:
    """A wrapped value's logical expiry (Unix ms); None for a value without one."""
    if data[:1] != TIMED or len(data) <= _TIMED_HEADER:
        return None
    return int(_EXPIRY.unpack_from(data, 1)[0])


def retime(data: bytes, fresh_until: int | None) -> bytes:
    """A wrapped value with a new logical expiry (None: unwrapped, it never goes stale)."""
    inner = data[_TIMED_HEADER:]
    return inner if fresh_until is None else TIMED + _EXPIRY.pack(fresh_until) + inner


def is_stale(data: bytes, now_ms: int) -> bool:
    """A wrapped value past its logical expiry."""
    return data[:1] == TIMED and (fresh_until(data) or 0) <= now_ms


_TOO_LARGE = "stored value is larger than max_value_size ({} bytes)"


def _inflate(data: bytes, limit: int) -> bytes:
    """The body of a ZLIB payload, inflated a chunk at a time and refused as soon as it
    outgrows ``limit``: a bomb costs ``limit`` bytes and the time to inflate them, never
    its whole size."""
    inflater = zlib.decompressobj()
    chunks: list[bytes] = []
    size, pending = 0, memoryview(data)[1:]
    while not inflater.eof:
        chunk = inflater.decompress(pending, _INFLATE_CHUNK)
        pending = memoryview(inflater.unconsumed_tail)
        size += len(chunk)
        if size > limit:
            raise SerializationError(_TOO_LARGE.format(limit))
        chunks.append(chunk)
        if len(chunk) < _INFLATE_CHUNK and not pending:
            break  # every byte read, nothing held back, and no end: cut short
    if not inflater.eof:
        raise SerializationError("compressed payload is truncated")
    return b"".join(chunks)
