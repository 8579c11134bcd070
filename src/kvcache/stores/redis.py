"""Plain Redis stores on redis-py: ``RedisStore`` (sync) and ``AsyncRedisStore`` (asyncio).

The two classes are thin shells around the same commands; what they share (error mapping,
the INCR script, batching) lives once at module level. Every redis-py exception is mapped to
a kvcache one here, so nothing above this module knows redis-py's exception types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import redis
import redis.asyncio

from ..errors import CacheUnavailableError, InvalidValueError, KVCacheError, StoreError
from ..keys import scan_pattern

T = TypeVar("T")

SCAN_COUNT = 1000  # keys per SCAN round trip
UNLINK_BATCH = 500  # keys per UNLINK, so clear() never sends one huge command

# INCRBY that gives a *new* key the cache's TTL and leaves an existing key's TTL alone,
# in one atomic round trip (a counter created by incr must not live forever by accident).
INCR_SCRIPT = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

_FAILURES = (redis.RedisError, OSError)


def translate(exc: BaseException) -> KVCacheError:
    """The kvcache exception for a redis-py (or socket) failure. Messages never hold secrets:
    redis-py's name host:port and the server's reply, not the credentials."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return CacheUnavailableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, redis.ResponseError) and "not an integer" in str(exc):
        return InvalidValueError("the stored value is not an integer")
    return StoreError(f"{type(exc).__name__}: {exc}")


def describe(client: redis.Redis | redis.asyncio.Redis) -> str:
    """Where a client connects, for reprs: address and db, never credentials."""
    where = client.connection_pool.connection_kwargs
    if "path" in where:
        return f"unix://{where['path']}?db={where.get('db', 0)}"
    return f"{where.get('host')}:{where.get('port')}/{where.get('db', 0)}"


def _batches(keys: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == UNLINK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _queue_set_many(pipe: Any, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
    if ttl_ms is None:
        pipe.mset(dict(items))
    else:
        for key, value in items:
            pipe.set(key, value, px=ttl_ms)


class RedisStore:
    is_async: ClassVar[bool] = False

    def __init__(self, client: redis.Redis) -> None:
        self._client: Any = client  # redis-py types replies as Union[Awaitable, Any]
        self._incr = client.register_script(INCR_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisStore({describe(self._client)})"

    @staticmethod
    def _call(command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return command(*args, **kwargs)
        except _FAILURES as exc:
            raise translate(exc) from exc

    def get(self, key: bytes) -> bytes | None:
        return self._call(self._client.get, key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._call(self._client.mget, keys)

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        self._call(self._client.set, key, value, px=ttl_ms)

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        pipe = self._client.pipeline(transaction=False)
        _queue_set_many(pipe, items, ttl_ms)
        self._call(pipe.execute)

    def delete_many(self, keys: Sequence[bytes]) -> int:
        return self._call(self._client.unlink, *keys) if keys else 0

    def exists(self, key: bytes) -> bool:
        return self._call(self._client.exists, key) == 1

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        return self._call(self._incr, keys=[key], args=[amount, ttl_ms or 0])

    def pttl(self, key: bytes) -> int:
        return self._call(self._client.pttl, key)

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        if ttl_ms is not None:
            return bool(self._call(self._client.pexpire, key, ttl_ms))
        pipe = self._client.pipeline(transaction=False)
        pipe.persist(key).exists(key)
        return self._call(pipe.execute)[1] == 1

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        keys = self._client.scan_iter(match=scan_pattern(prefix), count=SCAN_COUNT)
        while True:
            key = self._call(next, keys, None)
            if key is None:
                return
            yield key

    def clear(self, prefix: bytes) -> int:
        # Unlinking while scanning is safe: SCAN still returns every key that stays put.
        return sum(self._call(self._client.unlink, *batch) for batch in _batches(self.scan(prefix)))

    def close(self) -> None:
        self._client.close()


class AsyncRedisStore:
    is_async: ClassVar[bool] = True

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client: Any = client
        self._incr = client.register_script(INCR_SCRIPT)

    def __repr__(self) -> str:
        return f"AsyncRedisStore({describe(self._client)})"

    @staticmethod
    async def _call(pending: Awaitable[T]) -> T:
        try:
            return await pending
        except _FAILURES as exc:
            raise translate(exc) from exc

    async def get(self, key: bytes) -> bytes | None:
        return await self._call(self._client.get(key))

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self._call(self._client.mget(keys))

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        await self._call(self._client.set(key, value, px=ttl_ms))

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        pipe = self._client.pipeline(transaction=False)
        _queue_set_many(pipe, items, ttl_ms)
        await self._call(pipe.execute())

    async def delete_many(self, keys: Sequence[bytes]) -> int:
        return await self._call(self._client.unlink(*keys)) if keys else 0

    async def exists(self, key: bytes) -> bool:
        return await self._call(self._client.exists(key)) == 1

    async def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        return await self._call(self._incr(keys=[key], args=[amount, ttl_ms or 0]))

    async def pttl(self, key: bytes) -> int:
        return await self._call(self._client.pttl(key))

    async def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        if ttl_ms is not None:
            return bool(await self._call(self._client.pexpire(key, ttl_ms)))
        pipe = self._client.pipeline(transaction=False)
        pipe.persist(key).exists(key)
        return (await self._call(pipe.execute()))[1] == 1

    async def scan(self, prefix: bytes) -> AsyncIterator[bytes]:
        keys = self._client.scan_iter(match=scan_pattern(prefix), count=SCAN_COUNT)
        while True:
            key = await self._call(anext(keys, None))
            if key is None:
                return
            yield key

    async def clear(self, prefix: bytes) -> int:
        removed = 0
        batch: list[bytes] = []
        async for key in self.scan(prefix):
            batch.append(key)
            if len(batch) == UNLINK_BATCH:
                removed += await self._call(self._client.unlink(*batch))
                batch = []
        if batch:
            removed += await self._call(self._client.unlink(*batch))
        return removed

    async def close(self) -> None:
        await self._client.aclose()
