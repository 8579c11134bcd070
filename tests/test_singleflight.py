"""get_or_set single-flight: concurrent callers for one key run the factory once."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvcache import AsyncCache, Cache, CacheClosedError, MemoryStore

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


def test_a_factory_asking_for_its_own_key_does_not_deadlock(url: str) -> None:
    with Cache.from_url(url, namespace="sf") as cache, ThreadPoolExecutor(1) as pool:
        nested = pool.submit(cache.get_or_set, "r", lambda: cache.get_or_set("r", lambda: 1) + 1)
        assert nested.result(timeout=10) == 2  # a deadlock would time out here
        assert cache.get("r") == 2

    async def main() -> Any:
        async with AsyncCache.from_url(url, namespace="sf2") as acache:

            async def outer() -> int:
                inner = await acache.get_or_set("r", lambda: 1)
                spawned = await asyncio.ensure_future(acache.get_or_set("r", lambda: 10))
                return inner + spawned + 1

            return await asyncio.wait_for(acache.get_or_set("r", outer), timeout=10)

    assert asyncio.run(main()) == 3  # the inner calls found their own stored value


def collect_twice() -> None:
    """The first collection runs the dropped cache's finalizer (``adapter.close``), which
    only then lets go of the adapter and its store: the second one collects those (Python
    3.13 may not run another until a later test, whose warning filters then fail it)."""
    gc.collect()
    gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_one_async_cache_serves_several_event_loops_in_turn(url: str) -> None:
    cache = AsyncCache.from_url(url, namespace="loops")

    async def use(n: int) -> Any:
        await cache.connect(timeout=5, raise_on_failure=True)
        await cache.set(f"k{n}", n)
        return await cache.get_or_set("shared", lambda: n), await cache.get(f"k{n}")

    assert asyncio.run(use(1)) == (1, 1)
    assert asyncio.run(use(2)) == (1, 2)
    assert asyncio.run(use(3)) == (1, 3)
    assert cache.stats.errors == 0
    assert cache.stats.fallback_hits + cache.stats.fallback_misses == 0

    async def close_then_use() -> None:
        await cache.close()  # terminal: a closed cache refuses calls instead of reconnecting
        with pytest.raises(CacheClosedError):
            await cache.get("k1")

    asyncio.run(close_then_use())
    cache = None  # type: ignore[assignment]  # (the closures above share this cell)
    collect_twice()  # let the earlier loops' connections warn inside this test's filters


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_that_ends_without_close_does_not_break_the_next(url: str) -> None:
    # redis-py warns about the dead loop's unclosed connections; the cache must still work.
    cache = AsyncCache.from_url(url, namespace="loops")
    assert asyncio.run(cache.set("k", 1)) is True
    assert asyncio.run(cache.get("k")) == 1
    assert asyncio.run(cache.get("k")) == 1
    assert cache.stats.errors == 0
    del cache
    collect_twice()  # let the dead loops' connections warn inside this test's filters


def test_a_flight_left_by_a_closed_loop_does_not_block_later_loops() -> None:
    cache = AsyncCache(MemoryStore())
    loop = asyncio.new_event_loop()

    abandoned: list[asyncio.Future[Any]] = []

    async def start_and_abandon() -> None:
        abandoned.append(asyncio.ensure_future(cache.get_or_set("k", lambda: asyncio.sleep(60))))
        await asyncio.sleep(0.01)

    loop.run_until_complete(start_and_abandon())
    loop.set_exception_handler(lambda _loop, _context: None)  # no "Task was destroyed" log
    loop.close()  # the fill task never finishes

    async def later() -> Any:
        return await asyncio.wait_for(cache.get_or_set("k", lambda: "fresh"), timeout=5)

    assert asyncio.run(later()) == "fresh"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_cache_used_by_loop_after_loop_keeps_no_client_of_a_closed_one(redis_url: str) -> None:
    """Each loop's client references its loop, so the store's weak keys never let one go:
    an AsyncCache used by one ``asyncio.run`` after another kept a client and its sockets
    per loop for as long as it lived (on 3.13 their warnings then surfaced in later tests)."""
    cache = AsyncCache.from_url(redis_url, namespace="loops")
    for n in range(5):
        assert asyncio.run(cache.set(f"k{n}", n)) is True
    clients = cache.store._clients  # type: ignore[union-attr]
    assert len(clients) <= 1  # the last loop's at most: every earlier one was closed
    asyncio.run(cache.close())
    assert len(clients) == 0
    del cache, clients
    collect_twice()  # the dropped clients' warnings, inside this test's filters
