"""Shared fixtures. Every facade test runs four times: Cache and AsyncCache, each over a
MemoryStore and over a real redis-server that the tests start on a free port."""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kvcache import AsyncCache, Cache, MemoryStore, State
from kvcache._core.codec import PLAIN
from kvcache.settings import KVCacheSettings
from kvcache.stores import open_async_store, open_store
from kvcache.testing import RedisServerNotFound, find_redis_server

pytest_plugins = ["kvcache.testing.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    try:
        find_redis_server()
    except RedisServerNotFound as exc:  # never skip: the Redis tests are the point
        pytest.exit(f"kvcache tests need redis-server: {exc}", returncode=3)


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop on a background thread, where every AsyncCache under test lives."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


class Blocking:
    """An AsyncCache seen through blocking calls, so one test body covers both facades."""

    def __init__(self, cache: AsyncCache, loop: asyncio.AbstractEventLoop) -> None:
        self._cache = cache
        self._loop = loop

    def _wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._cache, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self._wait(attr(*args, **kwargs))

    def __iter__(self) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [key async for key in self._cache]

        return iter(self._wait(collect()))

    def __contains__(self, key: Any) -> bool:
        return bool(self.has(key))


class Harness:
    """Makes caches of one kind and reaches under them to plant raw payloads."""

    def __init__(self, kind: str, redis_url: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.facade, self.backend = kind.split("-")
        self.redis_url = redis_url
        self.loop = loop
        self.memory = MemoryStore()  # shared by this test's caches, as a server would be
        self._made: list[Any] = []

    def make(self, **options: Any) -> Any:
        facade: type[Cache] | type[AsyncCache] = Cache if self.facade == "sync" else AsyncCache
        if self.backend == "redis":
            assert self.redis_url is not None
            cache: Any = facade.from_url(self.redis_url, **options)
        else:
            cache = facade(self.memory, **options)
        if isinstance(cache, AsyncCache):
            cache = Blocking(cache, self.loop)
        if self.backend == "redis":  # construction never waits: wait for READY here
            cache.connect(timeout=5, raise_on_failure=True)
        self._made.append(cache)
        return cache

    def raw_set(self, full_key: bytes, payload: bytes) -> None:
        if self.backend == "redis":
            with redis.Redis.from_url(self.redis_url) as client:
                client.set(full_key, payload)
        else:
            self.memory.set(full_key, payload, None)

    def raw_get(self, full_key: bytes) -> bytes | None:
        if self.backend == "redis":
            with redis.Redis.from_url(self.redis_url) as client:
                return client.get(full_key)  # type: ignore[no-any-return]
        return self.memory.get(full_key)

    def close(self) -> None:
        for cache in self._made:
            cache.close()


@pytest.fixture(params=["sync-memory", "sync-redis", "async-memory", "async-redis"])
def harness(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[Harness]:
    redis_url = request.getfixturevalue("redis_url") if request.param.endswith("redis") else None
    made = Harness(request.param, redis_url, loop)
    yield made
    made.close()


@pytest.fixture
def cache(harness: Harness) -> Any:
    return harness.make(namespace="test")


@pytest.fixture(params=["sync", "async"])
def open_cache(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., Any]]:
    """Makes Redis caches from URLs, once with ``Cache`` and once with ``AsyncCache``."""
    made: list[Any] = []

    def open_cache(url: str, *, connect: bool = True, **options: Any) -> Any:
        """A cache on ``url``; with ``connect``, READY before it is handed out."""
        if request.param == "sync":
            cache: Any = Cache.from_url(url, **options)
        else:
            cache = Blocking(AsyncCache.from_url(url, **options), loop)
        made.append(cache)
        if connect:
            cache.connect(timeout=5, raise_on_failure=True)
        return cache

    yield open_cache
    for cache in made:
        cache.close()


class Traffic:
    """Sets and gets on ``keys`` from a background thread until stopped; counts calls and
    keeps every exception that reached the caller."""

    def __init__(self, cache: Any, keys: list[str]) -> None:
        self.cache = cache
        self.keys = keys
        self.calls = 0
        self.exceptions: list[BaseException] = []
        self.wrong: list[tuple[str, Any, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            key = self.keys[n % len(self.keys)]
            try:
                self.cache.set(key, n)
                got = self.cache.get(key)
                if got is not None and got != n:  # a miss is allowed, an old value is not
                    self.wrong.append((key, n, got))
                if n % 10 == 0:
                    self.cache.get_many(self.keys[:20])
                    self.cache.set_many({k: n for k in self.keys[20:30]})
            except BaseException as exc:
                self.exceptions.append(exc)
            self.calls += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def run_for(self, seconds: float, stall: float = 10.0) -> None:
        """Let the traffic run ``seconds``, and on until it made one more call: on a busy
        machine one call (a reconnect, an op_timeout) may outlast ``seconds``; stalled only
        if none ends within ``stall`` more."""
        before = self.calls
        time.sleep(seconds)
        deadline = time.monotonic() + stall
        while self.calls == before:
            assert time.monotonic() < deadline, "traffic stalled"
            time.sleep(0.01)


def wait_near_ready(cache: Any, timeout: float = 10.0) -> None:
    """Until ``cache``'s near-cache listener is connected and caught up."""
    near = (cache._cache if isinstance(cache, Blocking) else cache)._near
    deadline = time.monotonic() + timeout
    while not near.ready:
        assert time.monotonic() < deadline, "the near cache's listener never got ready"
        time.sleep(0.01)


def listener_has_read_all(cache: Any, admin: redis.Redis) -> bool:
    """Has ``cache``'s near-cache listener read its stream's last entry (``admin``: a client
    of the node that holds it), and is it caught up? Then a copy filled now cannot be evicted
    by an earlier write's entry still on its way. No stream yet: no (a write's announcement
    that met a slow or dropped connection is made later, by the writer's listener)."""
    inner = cache._cache if isinstance(cache, Blocking) else cache
    try:
        last = admin.xinfo_stream(inner._near.stream)["last-generated-id"]
    except redis.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return False
    return bool(inner._near.ready and inner._listener._feed.last_id == last)


def ready_cache(
    kind: str,
    settings: KVCacheSettings,
    loop: asyncio.AbstractEventLoop,
    prepare: Callable[[Any], None] | None = None,
    *,
    expect: State = State.READY,
    timeout: float = 10.0,
    **store_options: Any,
) -> Any:
    """A ``Cache`` ("sync") or ``AsyncCache`` seen through ``Blocking`` ("async") on
    ``settings``, in the state ``expect`` after ``connect(timeout)`` (which waits for READY
    that long); ``prepare(store)`` runs first."""
    store: Any = (open_store if kind == "sync" else open_async_store)(settings, **store_options)
    if prepare is not None:
        prepare(store)
    cache: Any = (Cache if kind == "sync" else AsyncCache)(store, **settings.cache_options())
    if kind == "async":
        cache = Blocking(cache, loop)
    assert cache.connect(timeout=timeout) is expect
    return cache


PAGE_BOUND = 1.0  # seconds: a page while Redis is blackholed (one call pays op_timeout 0.25)


def slowest_page(request: Callable[[int], None], pages: int = 20) -> float:
    """Seconds the slowest of ``request(0)`` … ``request(pages - 1)`` took."""
    slowest = 0.0
    for n in range(pages):
        started = time.monotonic()
        request(n)
        slowest = max(slowest, time.monotonic() - started)
    return slowest


class CodeRan:
    """A real pickle whose loading runs code: it creates ``marker`` (a directory), so a test
    can tell whether a value planted in Redis was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def planted_pickle(marker: Path) -> bytes:
    """The payload as the codec would store a pickled value (unsigned: planted by an attacker)."""
    return PLAIN + pickle.dumps(CodeRan(marker))


CLUSTER_INTERVAL = 0.5  # seconds: the topology check interval of cluster tests


@pytest.fixture(params=["sync", "async"])
def make_cache(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(url: str, remap: Callable[[int], int] | None = None, **options: Any) -> Any:
        """A cluster cache on ``url``, READY; ``remap``: node port -> port to dial instead."""

        def prepare(store: Any) -> None:
            if remap is not None:
                store.remap = lambda where: (where[0], remap(where[1]))

        settings = KVCacheSettings(url=url, topology_interval=CLUSTER_INTERVAL, **options)
        made.append(ready_cache(request.param, settings, loop, prepare))
        return made[-1]

    yield make
    for cache in made:
        cache.close()
