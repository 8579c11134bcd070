"""Key rules: validation at the boundary and the namespace prefix. Pure, no I/O."""

from __future__ import annotations

import re
from typing import TypeVar

from kvcache.errors import ConfigurationError, InvalidKeyError

Key = str | bytes
K = TypeVar("K", bound=Key)  # the caller's key type: get_many(list[str]) -> dict[str, Any]

DEFAULT_MAX_KEY_LENGTH = 1024  # bytes, after UTF-8 encoding; Redis allows 512 MB, no cache needs it

_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")


class KeySpace:
    """Maps user keys to Redis keys ``<namespace><separator><key>`` and back."""

    __slots__ = ("_max_length", "_prefix", "_prefix_len", "namespace", "separator")

    def __init__(
        self,
        namespace: str = "kvcache",
        separator: str = ":",
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            # An empty namespace would make clear() wipe every key in the database.
            raise ConfigurationError("namespace must be a non-empty string")
        if not isinstance(separator, str) or not separator:
            raise ConfigurationError("separator must be a non-empty string")
        if separator in namespace:
            # "app" would then SCAN (and clear) the keys of "app:sessions" as its own.
            raise ConfigurationError(
                f"namespace {namespace!r} must not contain the separator {separator!r}: "
                "it would overlap another namespace's keys"
            )
        if not isinstance(max_key_length, int) or max_key_length < 1:
            raise ConfigurationError("max_key_length must be a positive integer")
        try:
            prefix = (namespace + separator).encode()
        except UnicodeEncodeError:
            raise ConfigurationError("namespace and separator must be valid Unicode") from None
        self.namespace = namespace
        self.separator = separator
        self._prefix = prefix
        self._prefix_len = len(self._prefix)
        self._max_length = max_key_length

    def build(self, key: Key) -> bytes:
        """Validate a user key and return the full Redis key."""
        if isinstance(key, str):
            try:
                raw = key.encode()
            except UnicodeEncodeError:
                raise InvalidKeyError("key is not valid Unicode (lone surrogate)") from None
        elif isinstance(key, bytes):
            raw = key
        else:
            raise InvalidKeyError(f"key must be str or bytes, not {type(key).__name__}")
        if not raw:
            raise InvalidKeyError("key must not be empty")
        if len(raw) > self._max_length:
            raise InvalidKeyError(
                f"key is {len(raw)} bytes long; the limit is {self._max_length} (max_key_length)"
            )
        return self._prefix + raw

    def strip(self, full_key: bytes) -> Key:
        """The user key of a full Redis key: str when it is UTF-8, else the raw bytes."""
        raw = full_key[self._prefix_len :]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw

    @property
    def prefix(self) -> bytes:
        return self._prefix


def scan_pattern(prefix: bytes) -> bytes:
    """A SCAN MATCH pattern for every key starting with ``prefix`` (glob characters escaped)."""
    return _GLOB_SPECIAL.sub(rb"\\\1", prefix) + b"*"
