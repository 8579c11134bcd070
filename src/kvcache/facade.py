"""What ``Cache`` and ``AsyncCache`` share: construction, settings, events, stats."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .codec import DEFAULT_COMPRESS_THRESHOLD, Codec
from .errors import ConfigurationError
from .events import Handler
from .keys import DEFAULT_MAX_KEY_LENGTH, KeySpace
from .ops import Operations
from .serializers import Serializer
from .settings import KVCacheSettings
from .stats import Stats

S = TypeVar("S")
Self = TypeVar("Self", bound="CacheBase[Any]")


class CacheBase(Generic[S]):
    _takes_async_store = False  # AsyncCache: True (it also takes non-blocking sync stores)

    def __init__(
        self,
        store: S,
        *,
        namespace: str = "kvcache",
        separator: str = ":",
        default_ttl: float | None = None,
        serializer: Serializer | None = None,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        throw_on_errors: bool = False,
    ) -> None:
        is_async = getattr(store, "is_async", None)
        if not isinstance(is_async, bool):
            raise ConfigurationError(f"{store!r} is not a kvcache store (no is_async flag)")
        if is_async and not self._takes_async_store:
            raise ConfigurationError(f"{store!r} is asynchronous: use it with AsyncCache")
        self._store = store
        self._ops = Operations(
            KeySpace(namespace, separator, max_key_length),
            Codec(serializer, compress_threshold),
            default_ttl,
            throw_on_errors,
        )

    @classmethod
    def from_settings(cls: type[Self], settings: KVCacheSettings | None = None) -> Self:
        """A cache as the settings describe (by default: from ``KVCACHE_*`` variables)."""
        settings = settings if settings is not None else KVCacheSettings()
        return cls(cls._open_store(settings), **settings.cache_options())

    @classmethod
    def from_url(cls: type[Self], url: str, **settings: Any) -> Self:
        """``Cache.from_url("redis://…", namespace="app", default_ttl=60)``; other settings
        come from ``KVCACHE_*`` variables or their defaults."""
        return cls.from_settings(KVCacheSettings(url=url, **settings))

    @classmethod
    def _open_store(cls, settings: KVCacheSettings) -> S:
        raise NotImplementedError

    @property
    def store(self) -> S:
        return self._store

    @property
    def namespace(self) -> str:
        return self._ops.keys.namespace

    @property
    def stats(self) -> Stats:
        return self._ops.stats

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(event)`` on each ``"error"`` (an ``ErrorEvent``)."""
        self._ops.events.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        self._ops.events.off(event, handler)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, store={self._store!r})"
