"""``AsyncCache``: the asyncio Keyv-style facade. Same operations as ``Cache``
(``_core/operations/``)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeVar, overload

from kvcache._core.drivers import arun
from kvcache._core.keys import K, Key
from kvcache._core.operations import Stale, check_factory
from kvcache._core.state import State
from kvcache._core.types import MISSING
from kvcache._shells.base import CacheBase
from kvcache._shells.probers import READY_OR_CLOSED, TaskSupervisor
from kvcache._shells.singleflight import AsyncSingleFlight
from kvcache.errors import CacheUnavailableError, StoreError
from kvcache.settings import KVCacheSettings
from kvcache.stores import AsyncRedisClusterStore, AsyncStore, MemoryStore, Store, open_async_store

T = TypeVar("T")


class AsyncCache(CacheBase[Store | AsyncStore | AsyncRedisClusterStore]):
    """The asyncio twin of ``Cache``. It also accepts a non-blocking sync store (MemoryStore).

    Construction does no I/O and needs no event loop: the first connect starts with the
    first call (which waits for it, at most ``op_timeout``) or with ``await
    cache.connect()``."""

    is_async: ClassVar[bool] = True  # for drivers.arun: are its methods coroutines?

    _takes_async_store = True

    def __init__(
        self, store: Store | AsyncStore | AsyncRedisClusterStore | None = None, **options: Any
    ) -> None:
        super().__init__(store if store is not None else MemoryStore(), **options)
        self._flights = AsyncSingleFlight()
        self._prober = self._adapter.supervisor = TaskSupervisor(self._adapter)

    @classmethod
    def _open_store(cls, settings: KVCacheSettings) -> Store | AsyncStore | AsyncRedisClusterStore:
        return open_async_store(settings)

    async def connect(self, timeout: float = 5.0, *, raise_on_failure: bool = False) -> State:
        """Wait until Redis is READY, at most ``timeout`` seconds; answers the state then.
        With ``raise_on_failure`` a state other than READY raises CacheUnavailableError."""
        self._prober.ensure_probing()
        state = await self._prober.wait_for(READY_OR_CLOSED, timeout)
        if raise_on_failure and state is not State.READY:
            raise CacheUnavailableError(self._not_ready(timeout))
        return state

    async def get(self, key: Key, default: Any = None) -> Any:
        return await self._get(key, default, False)

    async def _get(self, key: Key, default: Any, keep_stale: bool) -> Any:
        if self._near is not None:  # a near-cache hit skips the operation machinery
            value = self._ops.near_get(key)
            if value is not MISSING:
                return value
            self._near_miss()
        return await arun(self._ops.get(key, default, keep_stale))

    async def get_many(self, keys: Iterable[K]) -> dict[K, Any]:
        return await arun(self._ops.get_many(keys))

    async def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await arun(self._ops.set(key, value, ttl))

    async def add(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await arun(self._ops.add(key, value, ttl))

    async def set_many(self, mapping: Mapping[K, Any], ttl: float | None = None) -> bool:
        return await arun(self._ops.set_many(mapping, ttl))

    async def delete(self, key: Key) -> bool:
        return await arun(self._ops.delete(key))

    async def delete_many(self, keys: Iterable[Key]) -> int:
        return await arun(self._ops.delete_many(keys))

    async def has(self, key: Key) -> bool:
        return await arun(self._ops.has(key))

    async def incr(self, key: Key, amount: int = 1) -> int | None:
        return await arun(self._ops.incr(key, amount))

    async def decr(self, key: Key, amount: int = 1) -> int | None:
        return await arun(self._ops.decr(key, amount))

    async def ttl(self, key: Key) -> float | None:
        return await arun(self._ops.ttl(key))

    async def touch(self, key: Key, ttl: float | None = None) -> bool:
        return await arun(self._ops.touch(key, ttl))

    async def clear(self) -> int:
        return await arun(self._ops.clear())

    # An async factory's value is what it awaits to (the first overload), not its coroutine.
    @overload
    async def get_or_set(
        self, key: Key, factory: Callable[[], Awaitable[T]], ttl: float | None = None
    ) -> T: ...

    @overload
    async def get_or_set(
        self, key: Key, factory: Callable[[], T], ttl: float | None = None
    ) -> T: ...

    async def get_or_set(
        self, key: Key, factory: Callable[[], T | Awaitable[T]], ttl: float | None = None
    ) -> T:
        """Like ``Cache.get_or_set``; ``factory`` may be a plain or an async callable."""
        check_factory(factory)
        self._ops.ttl_ms(ttl)  # bad input fails before any I/O
        found = await self._get(key, MISSING, True)
        if found is not MISSING and not isinstance(found, Stale):
            return found  # type: ignore[no-any-return]

        async def fill() -> T:
            try:
                fresh = factory()
                if inspect.isawaitable(fresh):
                    fresh = await fresh
            except Exception:
                stale = self._ops.stale_for(key, found)
                if stale is MISSING:
                    raise
                return stale  # type: ignore[no-any-return]
            await arun(self._ops.set(key, fresh, ttl, fill=True))
            return fresh

        return await self._flights.run(self._ops.keys.build(key), fill)

    async def __aiter__(self) -> AsyncIterator[Key]:
        keys = self._ops.keys
        try:
            found = (await arun(self._adapter.scan_store())).scan(keys.prefix)
            if isinstance(found, AsyncIterator):
                async for full in found:
                    yield keys.strip(full)
            else:
                for full in found:
                    yield keys.strip(full)
        except StoreError as exc:
            self._adapter.trips(exc)
            self._ops.failed("iter", exc, None, None)

    async def close(self) -> None:
        """Stop probing and close this event loop's connections (those of other loops go
        with their loops); the cache is CLOSED for good. Near-cache invalidations still
        pending are announced first (bounded by ``op_timeout``)."""
        await arun(self._ops.announce_pending())
        self._stop_listening()
        self._adapter.close()
        self._prober.stop()
        closed = self._store.close()
        if inspect.isawaitable(closed):
            await closed

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
