"""The wire format of a cached value. Pure, no I/O.

* An ``int`` (not ``bool``) is stored as plain decimal text, so INCRBY/DECRBY work on it.
* Anything else is one header byte and the serializer's bytes:
  ``0x00`` plain, ``0x01`` zlib-compressed (used when it saves space above a size threshold).
* A value kept past its logical expiry for fail-safe (``stale_ttl``) is wrapped: ``0x02``,
  the expiry as 8 bytes (Unix ms, big-endian), then one of the shapes above. Every reader
  knows from the value alone whether it is fresh, whatever its own settings.

A payload that fits neither shape (written by another program, truncated, tampered with)
raises ``SerializationError``; the facade turns that into a miss plus an ``error`` event.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from .errors import ConfigurationError, SerializationError
from .serializers import JsonSerializer, Serializer

PLAIN = b"\x00"
ZLIB = b"\x01"
TIMED = b"\x02"
_EXPIRY = struct.Struct(">q")
_TIMED_HEADER = 1 + _EXPIRY.size
DEFAULT_COMPRESS_THRESHOLD = 1024  # bytes; smaller values rarely shrink enough to pay for zlib
MAX_DECOMPRESSED = 256 * 1024 * 1024  # refuse zlib bombs planted in Redis
_INTEGER = re.compile(rb"-?[0-9]+")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # Redis counters (INCRBY) are signed 64-bit


class Codec:
    __slots__ = ("_threshold", "serializer")

    def __init__(
        self,
        serializer: Serializer | None = None,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
    ) -> None:
        if serializer is None:
            serializer = JsonSerializer()
        elif not isinstance(serializer, Serializer):
            raise ConfigurationError("serializer must have dumps(value) and loads(data) methods")
        if compress_threshold is not None and (
            not isinstance(compress_threshold, int) or compress_threshold < 0
        ):
            raise ConfigurationError("compress_threshold must be an integer >= 0, or None")
        self.serializer = serializer
        self._threshold = compress_threshold

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
        if self._threshold is not None and len(body) >= self._threshold:
            packed = zlib.compress(body)
            if len(packed) < len(body):
                return ZLIB + packed
        return PLAIN + body

    def decode(self, data: bytes) -> Any:
        head = data[:1]
        try:
            if head == PLAIN:
                return self.serializer.loads(data[1:])
            if head == ZLIB:
                return self.serializer.loads(_inflate(data[1:]))
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


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    body = inflater.decompress(data, MAX_DECOMPRESSED)
    if inflater.unconsumed_tail or not inflater.eof:
        raise SerializationError("compressed payload is truncated or too large")
    return body
