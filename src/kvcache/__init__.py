"""kvcache: a Keyv-style cache for Python web apps that stays fast and correct when Redis is not."""

from importlib import metadata as _metadata

from kvcache._core.events import ErrorEvent
from kvcache._core.resilience import Health
from kvcache._core.state import Policy, State, StateChange
from kvcache._core.stats import Stats
from kvcache._core.ttl import FOREVER
from kvcache._shells.async_cache import AsyncCache
from kvcache._shells.cache import Cache
from kvcache.errors import (
    CacheClosedError,
    CacheUnavailableError,
    ConfigurationError,
    ConfigurationWarning,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    KVCacheError,
    NoFreeConnectionError,
    SerializationError,
    StoreError,
    ValueTooLargeError,
)
from kvcache.serializers import JsonSerializer, PickleSerializer, Serializer
from kvcache.settings import KVCacheSettings
from kvcache.stores import AsyncRedisStore, AsyncStore, MemoryStore, RedisStore, Store

try:
    __version__ = _metadata.version("kvcache")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "FOREVER",
    "AsyncCache",
    "AsyncRedisStore",
    "AsyncStore",
    "Cache",
    "CacheClosedError",
    "CacheUnavailableError",
    "ConfigurationError",
    "ConfigurationWarning",
    "ErrorEvent",
    "Health",
    "InvalidKeyError",
    "InvalidTTLError",
    "InvalidValueError",
    "JsonSerializer",
    "KVCacheError",
    "KVCacheSettings",
    "MemoryStore",
    "NoFreeConnectionError",
    "PickleSerializer",
    "Policy",
    "RedisStore",
    "SerializationError",
    "Serializer",
    "State",
    "StateChange",
    "Stats",
    "Store",
    "StoreError",
    "ValueTooLargeError",
    "__version__",
]
