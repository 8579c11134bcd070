"""Fail-safe (``stale_ttl``): a value is kept past its logical expiry, is a miss for every
read, and is served by ``get_or_set`` when its factory fails: from Redis, or, with Redis
away, from this process's near-cache copy. Against real redis-servers (and the memory store),
with Redis cut off through a real ChaosProxy."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from conftest import Blocking, Harness, listener_has_read_all, wait_near_ready
from kvcache import (
    FOREVER,
    AsyncCache,
    Cache,
    ConfigurationError,
    InvalidTTLError,
    KVCacheSettings,
    State,
)
from kvcache._core.codec import TIMED
from kvcache.stores import open_store
from kvcache.testing import ChaosProxy

SHORT = 0.25  # seconds: a TTL that runs out within the test
FAST = {"op_timeout": 0.2, "connect_timeout": 0.2, "retry_base": 0.05, "retry_max": 0.5}


class Down(Exception):
    """The factory's data source failed."""


def failing() -> Any:
    raise Down("database unavailable")


def expire(cache: Any, key: str, value: Any) -> None:
    """``key`` holds ``value`` past its logical expiry."""
    assert cache.set(key, value, ttl=SHORT)
    time.sleep(SHORT + 0.1)


def test_a_value_past_its_ttl_is_a_miss_but_stays_stored(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    assert cache.set("k", {"v": 1}, ttl=SHORT)
    assert cache.get("k") == {"v": 1}
    assert cache.has("k")
    assert 0 < cache.ttl("k") <= SHORT  # the logical TTL, not the kept one
    time.sleep(SHORT + 0.1)
    assert cache.get("k") is None
    assert cache.get_many(["k"]) == {}
    assert not cache.has("k")
    assert cache.ttl("k") is None
    assert not cache.touch("k", 10)  # a stale value is absent: nothing to touch
    kept = harness.raw_get(b"fs:k")
    assert kept is not None
    assert kept[:1] == TIMED  # still there for the fail-safe
    assert cache.stats.stale_hits == 0


def test_get_or_set_serves_the_stale_value_when_the_factory_fails(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    expire(cache, "k", {"v": 1})
    assert cache.get_or_set("k", failing, ttl=60) == {"v": 1}
    assert cache.stats.stale_hits == 1
    assert cache.get("k") is None  # served, not stored again as fresh
    assert cache.get_or_set("k", lambda: {"v": 2}, ttl=60) == {"v": 2}  # the factory is back
    assert cache.get("k") == {"v": 2}
    assert cache.stats.stale_hits == 1


def test_the_factory_error_reaches_the_caller_without_a_stale_value(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    with pytest.raises(Down):
        cache.get_or_set("never-set", failing)
    plain = harness.make(namespace="plain")  # fail-safe off: an expired value is gone
    expire(plain, "k", "old")
    assert harness.raw_get(b"plain:k") is None
    with pytest.raises(Down):
        plain.get_or_set("k", failing)
    assert cache.stats.stale_hits == plain.stats.stale_hits == 0


def test_the_stale_value_lives_stale_ttl_and_no_longer(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=SHORT)
    expire(cache, "k", "old")  # fresh SHORT, then kept SHORT more: it is gone now
    time.sleep(0.2)
    assert harness.raw_get(b"fs:k") is None
    with pytest.raises(Down):
        cache.get_or_set("k", failing)


def test_ints_stay_plain_and_expire_on_time(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    assert cache.set("n", 5, ttl=10)
    assert harness.raw_get(b"fs:n") == b"5"  # INCRBY still works on it
    assert cache.incr("n") == 6
    assert cache.ttl("n") <= 10
    assert cache.set_many({"i": 1, "s": "text"}, ttl=SHORT)
    time.sleep(SHORT + 0.1)
    assert harness.raw_get(b"fs:i") is None  # the int expired for real...
    stored = harness.raw_get(b"fs:s")
    assert stored is not None
    assert stored[:1] == TIMED  # ...the other value is kept
    assert cache.get_many(["i", "s"]) == {}


def test_add_treats_a_stale_value_as_absent_and_is_never_kept_longer(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    assert cache.set("lock", "fresh", ttl=30)
    assert not cache.add("lock", "mine")  # a fresh value is there
    expire(cache, "lock", "old")
    assert cache.add("lock", "mine", ttl=SHORT)
    assert cache.get("lock") == "mine"
    assert not cache.add("lock", "theirs")
    time.sleep(SHORT + 0.1)  # a lock expires on time: add's values are never kept stale
    assert harness.raw_get(b"fs:lock") is None
    assert cache.add("lock", "theirs")


def test_touch_moves_the_logical_expiry(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    assert cache.set("k", "v", ttl=SHORT)
    assert cache.touch("k", 5)
    time.sleep(SHORT + 0.1)
    assert cache.get("k") == "v"  # fresh still: touch moved the expiry inside the value
    assert 3 < cache.ttl("k") <= 5
    assert cache.touch("k", FOREVER)
    assert cache.ttl("k") == FOREVER
    assert harness.raw_get(b"fs:k") == b'\x00"v"'  # unwrapped: it never goes stale
    assert cache.set("n", 1, ttl=SHORT)
    assert cache.touch("n", 5)  # an int: plain, its TTL moved
    assert 4 < cache.ttl("n") <= 5


def test_an_async_factory_that_fails_gets_the_stale_value(
    redis_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    cache = Blocking(AsyncCache.from_url(redis_url, namespace="fs", stale_ttl=30), loop)
    try:
        assert cache.connect(timeout=5) is State.READY
        expire(cache, "k", [1, 2])

        async def failing_later() -> Any:
            await asyncio.sleep(0)
            raise Down

        assert cache.get_or_set("k", failing_later) == [1, 2]
        assert cache.stats.stale_hits == 1
    finally:
        cache.close()


def test_settings_and_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_STALE_TTL", "120")
    assert KVCacheSettings(url="memory://").cache_options()["stale_ttl"] == 120
    with pytest.raises(ConfigurationError, match="stale_ttl"):
        Cache(stale_ttl=FOREVER)
    with pytest.raises(InvalidTTLError, match="stale_ttl"):
        Cache(stale_ttl=0)


# -- Redis away: the near cache's copy ---------------------------------------------------


def test_with_redis_away_the_near_cache_copy_is_served(
    open_cache: Any, chaos_proxy: ChaosProxy, redis_url: str
) -> None:
    cache = open_cache(chaos_proxy.url, namespace="fs", stale_ttl=30, near_cache=True, **FAST)
    wait_near_ready(cache)
    assert cache.set("k", "last known", ttl=SHORT)
    assert cache.get("k") == "last known"  # read from Redis: the near cache keeps a copy
    assert cache.get("k") == "last known"
    assert cache.stats.near_hits == 1
    time.sleep(SHORT + 0.1)
    assert cache.get("k") is None  # the copy is fresh no longer than the value

    chaos_proxy.blackhole()
    assert cache.get_or_set("k", failing) == "last known"
    assert cache.state is State.DEGRADED
    assert cache.stats.stale_hits == 1
    assert cache.get_or_set("k", lambda: "computed") == "computed"  # the factory works


def test_with_redis_away_and_no_copy_the_factory_error_reaches_the_caller(
    open_cache: Any, chaos_proxy: ChaosProxy, redis_url: str
) -> None:
    cache = open_cache(chaos_proxy.url, namespace="fs", stale_ttl=30, **FAST)  # no near cache
    expire(cache, "k", "in redis only")
    chaos_proxy.blackhole()
    with pytest.raises(Down):
        cache.get_or_set("k", failing)
    chaos_proxy.up()
    deadline = time.monotonic() + 10
    while cache.state is not State.READY:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert cache.get_or_set("k", failing) == "in redis only"  # Redis back: its stale value


def test_redis_keeps_a_wrapped_value_ttl_plus_stale_ttl(redis_url: str) -> None:
    with Cache.from_url(redis_url, namespace="fs", stale_ttl=30) as cache:
        assert cache.connect(timeout=5) is State.READY
        assert cache.set("k", "v", ttl=10)
        with redis.Redis.from_url(redis_url) as admin:
            assert 39_000 < admin.pttl("fs:k") <= 40_000


# -- review fixes ------------------------------------------------------------------------


def test_a_key_deleted_elsewhere_is_not_served_from_the_near_cache(redis_url: str) -> None:
    """Redis answered "no such key": the factory's error reaches the caller, whatever copy
    this process still holds (its listener away, the copy was never evicted)."""
    options = {"namespace": f"fs{uuid.uuid4().hex[:6]}", "stale_ttl": 30, "near_cache": True}
    reader, writer = Cache.from_url(redis_url, **options), Cache.from_url(redis_url, **options)
    try:
        for cache in (reader, writer):
            assert cache.connect(timeout=5) is State.READY
        near = reader._near
        assert near is not None
        wait_near_ready(reader)
        writer.set("k", "secret", ttl=60)
        with redis.Redis.from_url(redis_url) as admin:  # the write's entry read: no late
            deadline = time.monotonic() + 10  # eviction to come
            while not listener_has_read_all(reader, admin):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert reader.get("k") == "secret"
        assert reader.get("k") == "secret"
        assert reader.stats.near_hits == 1  # the copy
        reader._listener.stop(wait=5)  # its listener away: the copy stays
        writer.delete("k")
        with pytest.raises(Down):
            reader.get_or_set("k", failing)
        assert reader.stats.stale_hits == 0
    finally:
        reader.close()
        writer.close()


def test_a_near_copy_lives_no_longer_than_redis_keeps_the_key(redis_url: str) -> None:
    namespace = f"fs{uuid.uuid4().hex[:6]}"
    with Cache.from_url(redis_url, namespace=namespace, stale_ttl=30, near_cache=True) as cache:
        assert cache.connect(timeout=5) is State.READY
        wait_near_ready(cache)
        assert cache.set("k", "v", ttl=300)
        with redis.Redis.from_url(redis_url) as admin:
            admin.pexpire(f"{namespace}:k", 300)  # from elsewhere: Redis drops it sooner
        assert cache.get("k") == "v"  # read from Redis, copied
        assert cache.ttl("k") <= 0.3
        time.sleep(0.4)
        assert cache.get("k") is None


def test_concurrent_adds_over_a_stale_value_have_one_winner(redis_url: str) -> None:
    """add's compare-and-set: of several caches racing to replace one stale value, exactly
    one gets it (a plain SET would let every one of them win)."""
    namespace = f"fs{uuid.uuid4().hex[:6]}"
    caches = [Cache.from_url(redis_url, namespace=namespace, stale_ttl=30) for _ in range(4)]
    try:
        for cache in caches:
            assert cache.connect(timeout=5) is State.READY
        for trial in range(15):
            assert caches[0].set("lock", "old", ttl=0.05)
            time.sleep(0.08)
            start = threading.Barrier(8)

            def race(
                cache: Cache, n: int, start: threading.Barrier = start, t: int = trial
            ) -> bool:
                start.wait()
                return cache.add("lock", f"{t}-{n}", ttl=30)

            with ThreadPoolExecutor(8) as pool:
                won = list(pool.map(race, caches * 2, range(8)))
            assert won.count(True) == 1, won
            assert caches[0].get("lock") == f"{trial}-{won.index(True)}"
    finally:
        for cache in caches:
            cache.close()


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_replace_is_a_compare_and_set(backend: str, redis_url: str) -> None:
    store: Any = open_store(KVCacheSettings(url=redis_url if backend == "redis" else "memory://"))
    try:
        store.set(b"k", b"new", None)
        assert not store.replace(b"k", b"old", b"mine", 5000)  # not what it holds: untouched
        assert store.get(b"k") == b"new"
        assert not store.replace(b"absent", b"old", b"mine", 5000)
        assert store.get(b"absent") is None
        assert store.replace(b"k", b"new", b"mine", 5000)
        assert store.get(b"k") == b"mine"
        assert 0 < store.pttl(b"k") <= 5000
        assert store.replace(b"k", b"mine", b"forever", None)
        assert store.pttl(b"k") == -1
    finally:
        store.close()


def test_touch_leaves_a_value_stored_by_add_unwrapped(harness: Harness) -> None:
    cache = harness.make(namespace="fs", stale_ttl=30)
    assert cache.add("lock", "mine", ttl=SHORT)
    assert cache.touch("lock", SHORT)
    time.sleep(SHORT + 0.1)
    assert harness.raw_get(b"fs:lock") is None  # a lock still expires on time
    assert not cache.touch("gone", 5)
