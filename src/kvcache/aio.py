"""``AsyncCache``: the asyncio Keyv-style facade. Same operations as ``Cache`` (``ops.py``)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from .errors import KVCacheError, StoreError
from .facade import CacheBase
from .keys import Key
from .ops import MISSING, Op
from .settings import KVCacheSettings
from .singleflight import AsyncSingleFlight
from .stores import AsyncStore, MemoryStore, Store, open_async_store

T = TypeVar("T")


class AsyncCache(CacheBase[Store | AsyncStore]):
    """The asyncio twin of ``Cache``. It also accepts a non-blocking sync store (MemoryStore)."""

    _takes_async_store = True

    def __init__(self, store: Store | AsyncStore | None = None, **options: Any) -> None:
        super().__init__(store if store is not None else MemoryStore(), **options)
        self._flights = AsyncSingleFlight()

    @classmethod
    def _open_store(cls, settings: KVCacheSettings) -> Store | AsyncStore:
        return open_async_store(settings)

    async def _run(self, op: Op[T]) -> T:
        """Drive one operation, awaiting each store call when the store is asynchronous."""
        store = self._store
        awaits = store.is_async
        try:
            call = next(op)
            while True:
                try:
                    result = getattr(store, call[0])(*call[1:])
                    if awaits:
                        result = await result
                except KVCacheError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def get(self, key: Key, default: Any = None) -> Any:
        return await self._run(self._ops.get(key, default))

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return await self._run(self._ops.get_many(keys))

    async def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._run(self._ops.set(key, value, ttl))

    async def set_many(self, mapping: Mapping[Key, Any], ttl: float | None = None) -> bool:
        return await self._run(self._ops.set_many(mapping, ttl))

    async def delete(self, key: Key) -> bool:
        return await self._run(self._ops.delete(key))

    async def delete_many(self, keys: Iterable[Key]) -> int:
        return await self._run(self._ops.delete_many(keys))

    async def has(self, key: Key) -> bool:
        return await self._run(self._ops.has(key))

    async def incr(self, key: Key, amount: int = 1) -> int | None:
        return await self._run(self._ops.incr(key, amount))

    async def decr(self, key: Key, amount: int = 1) -> int | None:
        return await self._run(self._ops.decr(key, amount))

    async def ttl(self, key: Key) -> float | None:
        return await self._run(self._ops.ttl(key))

    async def touch(self, key: Key, ttl: float | None = None) -> bool:
        return await self._run(self._ops.touch(key, ttl))

    async def clear(self) -> int:
        return await self._run(self._ops.clear())

    async def get_or_set(
        self, key: Key, factory: Callable[[], T | Awaitable[T]], ttl: float | None = None
    ) -> T:
        """Like ``Cache.get_or_set``; ``factory`` may be a plain or an async callable."""
        self._ops.ttl_ms(ttl)  # bad input fails before any I/O
        value = await self.get(key, MISSING)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]

        async def fill() -> T:
            fresh = factory()
            if inspect.isawaitable(fresh):
                fresh = await fresh
            await self.set(key, fresh, ttl)
            return fresh

        return await self._flights.run(self._ops.keys.build(key), fill)

    async def __aiter__(self) -> AsyncIterator[Key]:
        keys = self._ops.keys
        try:
            found = self._store.scan(keys.prefix)
            if isinstance(found, AsyncIterator):
                async for full in found:
                    yield keys.strip(full)
            else:
                for full in found:
                    yield keys.strip(full)
        except StoreError as exc:
            self._ops.failed("iter", exc, None, None)

    async def close(self) -> None:
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
