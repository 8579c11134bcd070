"""get_or_set single-flight: concurrent callers for one key run the factory once."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvcache import AsyncCache, Cache, MemoryStore

CALLERS = 16


@pytest.fixture(params=["memory", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


def test_threads_share_one_factory_call(url: str) -> None:
    calls: list[int] = []
    barrier = threading.Barrier(CALLERS)

    def slow_factory() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.3)
        return {"n": len(calls)}

    def caller(cache: Cache) -> Any:
        barrier.wait()
        return cache.get_or_set("hot", slow_factory, ttl=60)

    with Cache.from_url(url, namespace="sf") as cache, ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(lambda _: caller(cache), range(CALLERS)))
        assert cache.get("hot") == {"n": 1}
    assert calls == [1]
    assert results == [{"n": 1}] * CALLERS


def test_threads_all_see_the_factory_error_and_the_next_call_retries(url: str) -> None:
    calls: list[int] = []
    barrier = threading.Barrier(CALLERS)

    def failing() -> int:
        calls.append(1)
        time.sleep(0.2)
        raise LookupError("upstream down")

    def caller(cache: Cache) -> str:
        barrier.wait()
        try:
            cache.get_or_set("hot", failing)
        except LookupError as exc:
            return str(exc)
        return "no error"

    with Cache.from_url(url, namespace="sf") as cache, ThreadPoolExecutor(CALLERS) as pool:
        assert (
            list(pool.map(lambda _: caller(cache), range(CALLERS))) == ["upstream down"] * CALLERS
        )
        assert calls == [1]
        assert cache.get_or_set("hot", lambda: 5) == 5


def test_different_keys_do_not_wait_for_each_other() -> None:
    cache = Cache(MemoryStore())
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: cache.get_or_set(f"k{i}", lambda: time.sleep(0.3) or i), range(4)))
    assert time.perf_counter() - started < 1.0  # 4 x 0.3 s if they were serialized


def test_tasks_share_one_factory_call(url: str) -> None:
    calls: list[int] = []

    async def slow_factory() -> list[int]:
        calls.append(1)
        await asyncio.sleep(0.3)
        return [len(calls)]

    async def main() -> list[Any]:
        async with AsyncCache.from_url(url, namespace="sf") as cache:
            results = await asyncio.gather(
                *(cache.get_or_set("hot", slow_factory, ttl=60) for _ in range(50))
            )
            assert await cache.get("hot") == [1]
            assert await cache.get_or_set("hot", slow_factory) == [1]
            return results

    assert asyncio.run(main()) == [[1]] * 50
    assert calls == [1]


def test_a_cancelled_task_does_not_cancel_the_fill_for_the_others() -> None:
    calls: list[int] = []

    async def slow_factory() -> str:
        calls.append(1)
        await asyncio.sleep(0.2)
        return "filled"

    async def main() -> tuple[Any, ...]:
        cache = AsyncCache(MemoryStore())
        first = asyncio.ensure_future(cache.get_or_set("k", slow_factory))
        second = asyncio.ensure_future(cache.get_or_set("k", slow_factory))
        await asyncio.sleep(0.05)
        first.cancel()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError)
    assert second == "filled"
    assert calls == [1]


def test_async_get_or_set_accepts_a_plain_factory() -> None:
    async def main() -> Any:
        cache = AsyncCache(MemoryStore())
        return await cache.get_or_set("k", lambda: {"plain": True})

    assert asyncio.run(main()) == {"plain": True}
