"""``Cache``: the synchronous Keyv-style facade."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from kvcache._core.drivers import run
from kvcache._core.keys import K, Key
from kvcache._core.operations import Stale, check_factory
from kvcache._core.state import State
from kvcache._core.types import MISSING
from kvcache._shells.base import CacheBase
from kvcache._shells.probers import READY_OR_CLOSED, ThreadSupervisor
from kvcache._shells.singleflight import SingleFlight
from kvcache.errors import CacheUnavailableError, StoreError
from kvcache.settings import KVCacheSettings
from kvcache.stores import MemoryStore, RedisClusterStore, Store, open_store

T = TypeVar("T")


class Cache(CacheBase[Store | RedisClusterStore]):
    """A namespaced key-value cache over a ``Store`` (Redis, memory, …).

    Construction does no I/O: a Redis cache starts in STARTING and connects in the
    background. A call made while that first attempt is in flight waits for it (at most
    ``op_timeout``); once it failed (and whenever Redis is away) calls are served by the
    in-memory fallback at once. ``connect()`` waits for READY. Store failures never reach the caller
    unless ``throw_on_errors=True``: reads answer the default, writes answer False, and an
    ``error`` event is emitted. Bad input (keys, TTLs, unserializable values) always raises
    a ``kvcache`` exception before any I/O.
    """

    is_async: ClassVar[bool] = False  # for drivers.arun: are its methods coroutines?

    def __init__(self, store: Store | RedisClusterStore | None = None, **options: Any) -> None:
        super().__init__(store if store is not None else MemoryStore(), **options)
        self._flights = SingleFlight()
        self._prober = self._adapter.supervisor = ThreadSupervisor(self._adapter)
        self._prober.ensure_probing()  # the first connect starts now, in the background

    @classmethod
    def _open_store(cls, settings: KVCacheSettings) -> Store | RedisClusterStore:
        return open_store(settings)

    def connect(self, timeout: float = 5.0, *, raise_on_failure: bool = False) -> State:
        """Wait until Redis is READY, at most ``timeout`` seconds; answers the state then.
        With ``raise_on_failure`` a state other than READY raises CacheUnavailableError."""
        self._prober.ensure_probing()
        state = self._prober.wait_for(READY_OR_CLOSED, timeout)
        if raise_on_failure and state is not State.READY:
            raise CacheUnavailableError(self._not_ready(timeout))
        return state

    def get(self, key: Key, default: Any = None) -> Any:
        return self._get(key, default, False)

    def _get(self, key: Key, default: Any, keep_stale: bool) -> Any:
        if self._near is not None:  # a near-cache hit skips the operation machinery (~1 µs)
            value = self._ops.near_get(key)
            if value is not MISSING:
                return value
            self._near_miss()
        return run(self._ops.get(key, default, keep_stale))

    def get_many(self, keys: Iterable[K]) -> dict[K, Any]:
        """The found keys and their values; missing keys are left out."""
        return run(self._ops.get_many(keys))

    def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value``; ``ttl`` in seconds (None: the default TTL, FOREVER: no expiry)."""
        return run(self._ops.set(key, value, ttl))

    def add(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (atomic, SET NX); True if stored. While
        Redis is away it answers False: only Redis knows whether another process holds the
        key (``add`` is often a lock), so the fallback never claims it."""
        return run(self._ops.add(key, value, ttl))

    def set_many(self, mapping: Mapping[K, Any], ttl: float | None = None) -> bool:
        return run(self._ops.set_many(mapping, ttl))

    def delete(self, key: Key) -> bool:
        """True when the key existed."""
        return run(self._ops.delete(key))

    def delete_many(self, keys: Iterable[Key]) -> int:
        """How many of the keys existed."""
        return run(self._ops.delete_many(keys))

    def has(self, key: Key) -> bool:
        return run(self._ops.has(key))

    def incr(self, key: Key, amount: int = 1) -> int | None:
        """Add to an integer value (a missing key starts at 0 and gets the default TTL).
        Answers None when the store failed; raises InvalidValueError on a non-integer."""
        return run(self._ops.incr(key, amount))

    def decr(self, key: Key, amount: int = 1) -> int | None:
        return run(self._ops.decr(key, amount))

    def ttl(self, key: Key) -> float | None:
        """Seconds left; FOREVER when the key does not expire; None when it does not exist."""
        return run(self._ops.ttl(key))

    def touch(self, key: Key, ttl: float | None = None) -> bool:
        """Reset the key's expiry (None: the default TTL); False when it does not exist."""
        return run(self._ops.touch(key, ttl))

    def clear(self) -> int:
        """Remove every key of this namespace (SCAN + UNLINK, never FLUSHDB); how many."""
        return run(self._ops.clear())

    def get_or_set(self, key: Key, factory: Callable[[], T], ttl: float | None = None) -> T:
        """The cached value, or ``factory()`` stored with ``ttl``. Concurrent callers in this
        process share one call of ``factory`` per key. With ``stale_ttl`` (fail-safe), a
        factory that raises is answered with the last value, if one is still kept."""
        check_factory(factory)
        self._ops.ttl_ms(ttl)  # bad input fails before any I/O
        found = self._get(key, MISSING, True)
        if found is not MISSING and not isinstance(found, Stale):
            return found  # type: ignore[no-any-return]

        def fill() -> T:
            try:
                fresh = factory()
            except Exception:
                stale = self._ops.stale_for(key, found)
                if stale is MISSING:
                    raise
                return stale  # type: ignore[no-any-return]
            run(self._ops.set(key, fresh, ttl, fill=True))
            return fresh

        return self._flights.run(self._ops.keys.build(key), fill)

    def __iter__(self) -> Iterator[Key]:
        """This namespace's keys (SCAN), in no particular order; the fallback's while Redis
        is away."""
        keys = self._ops.keys
        try:
            for full in run(self._adapter.scan_store()).scan(keys.prefix):
                yield keys.strip(full)
        except StoreError as exc:
            self._adapter.trips(exc)
            self._ops.failed("iter", exc, None, None)

    def __contains__(self, key: Key) -> bool:
        return self.has(key)

    def close(self) -> None:
        """Stop probing and release the connections; the cache is CLOSED for good. Near-cache
        invalidations still pending are announced first (bounded by ``op_timeout``)."""
        run(self._ops.announce_pending())
        self._stop_listening()
        self._adapter.close()
        self._prober.stop()
        self._store.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
