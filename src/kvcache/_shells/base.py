"""What ``Cache`` and ``AsyncCache`` share: construction, settings, state, events, stats."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

from kvcache._cluster.sharded import ShardedAdapter
from kvcache._core.breaker import Adapter
from kvcache._core.codec import DEFAULT_COMPRESS_THRESHOLD, DEFAULT_MAX_VALUE_SIZE, Codec
from kvcache._core.events import Emitter, Handler
from kvcache._core.journal import Journal, Overflow
from kvcache._core.keys import DEFAULT_MAX_KEY_LENGTH, KeySpace
from kvcache._core.operations import Operations
from kvcache._core.protocols import is_sharded, is_streaming
from kvcache._core.resilience import Health, ResilientAdapter
from kvcache._core.state import Policy, State, StateChange
from kvcache._core.stats import Stats
from kvcache._core.ttl import FOREVER
from kvcache._near.cache import Feed, NearCache, NearCacheConfig
from kvcache._near.listener import ListenerThread
from kvcache._telemetry import Telemetry
from kvcache.errors import ConfigurationError
from kvcache.serializers import Serializer
from kvcache.settings import KVCacheSettings
from kvcache.stores import MemoryStore
from kvcache.stores.memory import (
    DEFAULT_FALLBACK_MAX_BYTES,
    DEFAULT_FALLBACK_MAXSIZE,
    DEFAULT_FALLBACK_TTL,
)

S = TypeVar("S")
Self = TypeVar("Self", bound="CacheBase[Any]")

DEFAULT_FALLBACK: Any = object()  # "an in-memory fallback with the default bounds"


def _flush_others_on_recovery(cache: weakref.ref[CacheBase[Any]]) -> Callable[[StateChange], None]:
    """A ``state`` listener: going READY after keys written while Redis was away (STARTING
    or DEGRADED) were deleted there, every process's near cache may hold them: all are told
    to flush (in the background)."""

    def recovered(change: StateChange) -> None:
        alive = cache()
        if alive is None or change.current is not State.READY or not change.journal_applied:
            return
        supervisor = alive._adapter.supervisor
        if supervisor is not None:
            supervisor.spawn(alive._ops.flush_everywhere())

    return recovered


def _stream_reader(store: Any, adapter: ResilientAdapter, near: NearCache) -> Any:
    """The listener's connection: in cluster mode, to whichever primary serves the stream
    (the router's slot map says which)."""
    if isinstance(adapter, ShardedAdapter):
        return store.stream_reader(near.config.block, partial(adapter.owner_of, near.stream))
    return store.stream_reader(near.config.block)


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
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        throw_on_errors: bool = False,
        fallback: Any = DEFAULT_FALLBACK,
        non_blocking: bool = True,
        policy: Policy | None = None,
        journal_size: int = 10_000,
        journal_overflow: Overflow = "clear",
        telemetry: bool = True,
        near_cache: NearCacheConfig | bool = False,
        stale_ttl: float | None = None,
    ) -> None:
        is_async = getattr(store, "is_async", None)
        if not isinstance(is_async, bool):
            raise ConfigurationError(f"{store!r} is not a kvcache store (no is_async flag)")
        if is_async and not self._takes_async_store:
            raise ConfigurationError(f"{store!r} is asynchronous: use it with AsyncCache")
        if fallback is DEFAULT_FALLBACK:
            fallback = MemoryStore(
                DEFAULT_FALLBACK_MAXSIZE,
                max_ttl=DEFAULT_FALLBACK_TTL,
                max_bytes=DEFAULT_FALLBACK_MAX_BYTES,
            )
        elif fallback is not None and getattr(fallback, "is_async", None) is not False:
            raise ConfigurationError("fallback must be a non-blocking sync store (MemoryStore)")
        self._store = store
        keys = KeySpace(namespace, separator, max_key_length)
        instruments = Telemetry(keys.namespace, store, enabled=telemetry)
        # A cluster-aware store gets one breaker per primary (_cluster/sharded.py).
        adapter_class = ShardedAdapter if is_sharded(store) else Adapter
        self._adapter = adapter = adapter_class(
            store,
            fallback,
            keys=keys,
            stats=Stats(),
            events=Emitter(),
            policy=policy,
            journal=Journal(journal_size, journal_overflow),
            throw_on_errors=bool(throw_on_errors),
            non_blocking=non_blocking,
            instruments=instruments,
        )
        codec = Codec(serializer, compress_threshold, max_value_size)
        self._near = self._near_cache(near_cache, store, keys.namespace)
        if stale_ttl == FOREVER:
            raise ConfigurationError("stale_ttl must be a finite number of seconds, or None")
        self._ops = Operations(
            keys, codec, adapter, default_ttl, instruments, self._near, stale_ttl
        )
        self._listener: ListenerThread | None = None
        if self._near is not None:  # a thread for AsyncCache too: it needs no event loop
            reader = _stream_reader(store, adapter, self._near)
            self._listener = ListenerThread(Feed(self._near, reader))
            self._near.on_pending = self._listener.ensure_running
            self._listener.ensure_running()
            weakref.finalize(self, self._listener.stop)
            # Not a bound method: the adapter (kept by this cache's finalizer) must not keep
            # the cache alive through its listeners.
            self.on("state", _flush_others_on_recovery(weakref.ref(self)))
        # A cache dropped without close() must not leave its prober probing forever.
        weakref.finalize(self, adapter.close)

    def _near_cache(
        self, config: NearCacheConfig | bool, store: Any, namespace: str
    ) -> NearCache | None:
        if config is False:
            return None
        if not is_streaming(store):
            raise ConfigurationError(f"near_cache needs a Redis store, not {store!r}")
        return NearCache(NearCacheConfig() if config is True else config, namespace)

    def _near_miss(self) -> None:
        """A get the near cache could not answer: if that is for want of a listener (a
        forked worker's), start this process's own."""
        if self._near is not None and not self._near.ready and self._listener is not None:
            self._listener.ensure_running()

    def _stop_listening(self) -> None:
        """On close: the L1 answers nothing more, and the listener ends."""
        if self._near is not None:
            self._near.close()
        if self._listener is not None:
            self._listener.stop()

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

    @property
    def state(self) -> State:
        """STARTING, READY, DEGRADED or CLOSED (see ``kvcache.State``)."""
        return self._adapter.state

    def health(self) -> Health:
        """The state, for how long, the last failure, the probe schedule, the journal."""
        return self._adapter.health()

    def _not_ready(self, waited: float) -> str:
        health = self.health()
        reason = f"; last error: {health.last_error}" if health.last_error else ""
        return f"{self!r} is not ready after {waited} s{reason}"

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(event)`` on each ``"error"`` (an ``ErrorEvent``), ``"state"`` (a
        ``StateChange``) or ``"connect_error"`` (the first connect failed; once)."""
        self._ops.events.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        self._ops.events.off(event, handler)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(namespace={self.namespace!r}, store={self._store!r}, "
            f"state={self.state.value})"
        )
