"""The exceptions kvcache raises. Callers never see redis-py's own exception types."""

from __future__ import annotations

__all__ = [
    "BreakerOpenError",
    "CacheClosedError",
    "CacheUnavailableError",
    "ConfigurationError",
    "ConfigurationWarning",
    "InvalidKeyError",
    "InvalidTTLError",
    "InvalidValueError",
    "KVCacheError",
    "NoFreeConnectionError",
    "RedirectError",
    "SerializationError",
    "SlowReplyError",
    "StoreError",
    "ValueTooLargeError",
]


class KVCacheError(Exception):
    """Base class of every kvcache exception."""


class ConfigurationError(KVCacheError, ValueError):
    """A setting or constructor argument is invalid."""


class ConfigurationWarning(UserWarning):
    """A setting looks mistaken but is not an error (e.g. a ``KVCACHE_`` variable that names
    no setting)."""


class InvalidKeyError(KVCacheError, TypeError, ValueError):
    """A key is not str/bytes, is empty, or is too long. Raised before any I/O."""


class InvalidTTLError(KVCacheError, TypeError, ValueError):
    """A TTL is not a positive number of seconds (or None / FOREVER). Raised before any I/O."""


class SerializationError(KVCacheError, TypeError, ValueError):
    """A value cannot be serialized, or a stored payload cannot be read back."""


class ValueTooLargeError(SerializationError):
    """A value is larger, serialized, than ``max_value_size``. Raised before any I/O."""


class InvalidValueError(KVCacheError, ValueError):
    """The stored value does not support the operation (e.g. ``incr`` on a non-integer)."""


NOT_A_COUNTER = "the stored value is not a 64-bit integer, or the result would overflow"


class StoreError(KVCacheError):
    """The backing store failed to carry out a command."""


class CacheUnavailableError(StoreError):
    """The backing store cannot be reached (connection refused, timed out, reset, auth failed)."""


class SlowReplyError(CacheUnavailableError):
    """Redis answered a probe, but slower than a call may wait (``op_timeout``): as good as
    unavailable, since every call would time out."""


class NoFreeConnectionError(CacheUnavailableError):
    """Every connection was busy for ``op_timeout``: local overload, not an outage, so it
    fails the one call and never opens the breaker."""


class BreakerOpenError(CacheUnavailableError):
    """A call waited for a free connection and Redis was found away meanwhile: it is served
    like any call made while the breaker is open, and says nothing new about Redis."""


class CacheClosedError(KVCacheError, RuntimeError):
    """The cache was closed; a closed cache cannot be used again."""


class RedirectError(StoreError):
    """A cluster node answered MOVED, ASK or TRYAGAIN: the key is served elsewhere (or is
    being moved). The router follows it; callers never see it."""

    def __init__(self, kind: str, slot: int, address: str) -> None:
        super().__init__(f"{kind} {slot} {address}")
        self.kind = kind  # "MOVED", "ASK" or "TRYAGAIN"
        self.slot = slot
        self.address = address  # "host:port" ("" for TRYAGAIN)
