"""The wire format of a cached value. Pure, no I/O.

* An ``int`` (not ``bool``) is stored as plain decimal text, so INCRBY/DECRBY work on it.
* Anything else is one header byte and the serializer's bytes:
  ``0x00`` plain, ``0x01`` zlib-compressed (used when it saves space above a size threshold).

A payload that fits neither shape (written by another program, truncated, tampered with)
raises ``SerializationError``; the facade turns that into a miss plus an ``error`` event.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from .errors import ConfigurationError, SerializationError
from .serializers import JsonSerializer, Serializer

PLAIN = b"\x00"
ZLIB = b"\x01"
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

    def encode(self, value: Any) -> bytes:
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
            if _INTEGER.fullmatch(data):
                return int(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"stored payload is not a kvcache value ({type(exc).__name__})"
            ) from exc
        raise SerializationError("stored payload is not a kvcache value (unknown format)")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    body = inflater.decompress(data, MAX_DECOMPRESSED)
    if inflater.unconsumed_tail or not inflater.eof:
        raise SerializationError("compressed payload is truncated or too large")
    return body
