"""kvcache: a Keyv-style cache for Python web apps that stays fast and correct when Redis is not."""

from importlib.metadata import PackageNotFoundError, version

from .adapter import Health
from .aio import AsyncCache
from .cache import Cache
from .errors import (
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
from .events import ErrorEvent
from .serializers import JsonSerializer, PickleSerializer, Serializer
from .settings import KVCacheSettings
from .state import Policy, State, StateChange
from .stats import Stats
from .stores import AsyncRedisStore, AsyncStore, MemoryStore, RedisStore, Store
from .ttl import FOREVER

try:
    __version__ = version("kvcache")
except PackageNotFoundError:  # running from a source tree
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
