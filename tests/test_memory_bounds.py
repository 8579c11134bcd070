"""Memory is bounded in bytes, not only in entries (issue 17.4): the fallback's byte bound,
shared by a cache's cluster shards, expiry without waiting for a write, and
``max_value_size`` on writes and on reads (a zlib bomb planted in Redis)."""

from __future__ import annotations

import gc
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from kvcache import (
    Cache,
    ErrorEvent,
    KVCacheSettings,
    MemoryStore,
    SerializationError,
    State,
    ValueTooLargeError,
)
from kvcache._core.codec import DEFAULT_MAX_VALUE_SIZE, PLAIN, ZLIB, Codec
from kvcache.stores.memory import ENTRY_OVERHEAD
from kvcache.testing.cluster import RedisClusterServer

MiB = 1024 * 1024
DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1: the first connect is refused


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def degraded(open_cache: Callable[..., Any], **options: Any) -> Any:
    """A cache whose Redis refused its first connect: every call is served from memory."""
    cache = open_cache(DEAD, connect=False, connect_attempts=1, **options)
    cache.get("first")  # (AsyncCache connects on its first call)
    deadline = time.monotonic() + 10
    while cache.state is not State.DEGRADED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return cache


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """What ``work()`` answers, and the most memory Python held meanwhile above the start."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = work()
        return result, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


# -- the fallback's byte bound -------------------------------------------------------------


def test_the_byte_bound_holds_and_the_newest_values_stay() -> None:
    store = MemoryStore(10_000, max_bytes=MiB)
    value = b"v" * (100 * 1024)
    for i in range(100):
        store.set(b"k%d" % i, value, None)
        assert store.size_bytes <= MiB
    kept = [i for i in range(100) if store.get(b"k%d" % i) is not None]
    assert kept == list(range(100 - len(kept), 100))  # least recently used went first
    assert len(kept) == MiB // (len(value) + 3 + ENTRY_OVERHEAD)


def test_the_entry_count_bound_stays() -> None:
    store = MemoryStore(3, max_bytes=MiB)
    for i in range(10):
        store.set(b"k%d" % i, b"v", None)
    assert sorted(store.scan(b"")) == [b"k7", b"k8", b"k9"]
    store.set(b"k9", b"again", None)  # an update evicts nothing
    assert sorted(store.scan(b"")) == [b"k7", b"k8", b"k9"]


def test_a_value_larger_than_the_whole_bound_is_not_kept_nor_is_its_older_value() -> None:
    store = MemoryStore(10, max_bytes=10_000)
    store.set(b"k", b"old", None)
    store.set(b"other", b"x", None)
    store.set(b"k", b"v" * 20_000, None)
    assert store.get(b"k") is None  # never the older value
    assert store.get(b"other") == b"x"
    assert store.add(b"k", b"v" * 20_000, None) is False


def test_cluster_shards_share_one_bound_and_keep_their_own_keys() -> None:
    """``fresh()`` (a shard's own fallback) is a view on the same pool: six shards are not
    allowed six times the bound, and one shard's recovery empties only its own keys."""
    root = MemoryStore(10_000, max_bytes=MiB)
    shards = [root.fresh() for _ in range(6)]
    value = b"v" * (50 * 1024)
    for i in range(40):
        for shard in shards:
            shard.set(b"ns:k%d" % i, value, None)
    assert root.size_bytes <= MiB
    assert all(shard.size_bytes == root.size_bytes for shard in shards)
    shards[0].set(b"ns:mine", b"0", None)
    shards[1].set(b"ns:mine", b"1", None)
    assert (shards[0].get(b"ns:mine"), shards[1].get(b"ns:mine")) == (b"0", b"1")
    assert root.get(b"ns:mine") is None
    assert shards[0].clear(b"ns:") >= 1
    assert shards[0].get(b"ns:mine") is None
    assert shards[1].get(b"ns:mine") == b"1"
    assert b"ns:mine" in list(shards[1].scan(b"ns:"))


def test_the_settings_bound_the_fallback_and_its_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_FALLBACK_MAX_BYTES", str(2 * MiB))
    fallback = KVCacheSettings(url=DEAD).cache_options()["fallback"]
    assert isinstance(fallback, MemoryStore)
    assert fallback.max_bytes == fallback.fresh().max_bytes == 2 * MiB
    with Cache.from_url(DEAD) as cache:
        assert "max_bytes=2097152," in (cache.health().fallback or "")
    monkeypatch.delenv("KVCACHE_FALLBACK_MAX_BYTES")
    assert f"max_bytes={64 * MiB}," in repr(KVCacheSettings().cache_options()["fallback"])


def test_large_values_written_while_redis_is_away_stay_within_the_bound(
    open_cache: Callable[..., Any],
) -> None:
    cache = degraded(open_cache, fallback_max_bytes=2 * MiB, compress_threshold=None)
    fallback = cache._adapter.fallback
    big = "x" * (256 * 1024)
    for i in range(40):
        assert cache.set(f"k{i}", big) is True
        assert fallback.size_bytes <= 2 * MiB
    assert cache.get("k39") == big  # the newest are served from memory
    assert cache.get("k0") is None
    assert (cache.stats.fallback_hits, cache.stats.fallback_misses) == (1, 2)


# -- expiry without a write ----------------------------------------------------------------


def test_expired_values_are_freed_by_reads_without_waiting_for_a_write() -> None:
    clock = Clock()
    store = MemoryStore(100, clock, max_ttl=5, max_bytes=64 * MiB)

    def fill() -> None:
        for i in range(8):
            store.set(b"k%d" % i, bytes(MiB) + b"%d" % i, None)

    def held() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        start = held()
        fill()
        assert held() - start > 7 * MiB
        clock.now += 6  # past the TTL cap; no write follows
        assert store.get(b"another") is None
        assert held() - start < MiB  # the eight values are gone, not just unreadable
        assert store.size_bytes == 0
    finally:
        tracemalloc.stop()


# -- threads -------------------------------------------------------------------------------


def test_reading_the_size_from_another_thread_never_breaks_a_write() -> None:
    """cachetools' ``currsize`` and ``len()`` expire entries (they pop the expiry heap): read
    without the store's lock, from a health check or a watcher thread, they broke a write
    made at the same moment ('list changed size during iteration' reached the caller of
    ``AsyncCache.set``, soak seed 123, 600 s)."""
    store = MemoryStore(1000, max_ttl=60)
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            while not stop.is_set():
                assert store.size_bytes >= 0
                assert "MemoryStore(" in repr(store)
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race, every run
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        deadline = time.monotonic() + 2
        n = 0
        while time.monotonic() < deadline and not errors:
            n += 1
            # Each write expires the last ones (1 ms TTLs) and pushes onto the heap.
            store.set(b"k%d" % (n % 200), b"v", 1)
    except BaseException as exc:
        errors.append(exc)
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(interval)
    assert errors == []


# -- max_value_size ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 64 KiB zlib payload that inflates to 64 MiB."""
    return ZLIB + zlib.compress(bytes(64 * MiB), 9)


def test_a_zlib_bomb_stops_at_the_limit_quickly(bomb: bytes) -> None:
    for codec in (Codec(), Codec(max_value_size=MiB)):
        started = time.perf_counter()
        with pytest.raises(SerializationError, match="max_value_size"):
            codec.decode(bomb)
        assert time.perf_counter() - started < 5  # generous (docs/benchmarks.md has figures)


@pytest.mark.parametrize(("limit", "bound"), [(MiB, 4 * MiB), (DEFAULT_MAX_VALUE_SIZE, 24 * MiB)])
def test_a_zlib_bomb_never_holds_more_than_the_limit(bomb: bytes, limit: int, bound: int) -> None:
    codec = Codec(max_value_size=limit)

    def decode() -> None:
        with pytest.raises(SerializationError):
            codec.decode(bomb)

    _, peak = traced_peak(decode)
    assert limit < peak < bound  # inflated to the limit, no further, no second copy


def test_values_up_to_the_limit_round_trip_compressed_or_not() -> None:
    codec = Codec(max_value_size=100_000)
    for value in ["x" * (100_000 - 2), "é" * 10, list(range(1000))]:
        assert codec.decode(codec.encode(value)) == value
    assert codec.encode("x" * 99_998)[:1] == ZLIB  # (the bound is the serialized size)
    with pytest.raises(SerializationError, match="truncated"):
        codec.decode(codec.encode("x" * 99_998)[:-4])
    assert Codec(max_value_size=10).decode(PLAIN + b'"' + b"x" * 8 + b'"') == "x" * 8
    with pytest.raises(SerializationError, match="max_value_size"):
        Codec(max_value_size=10).decode(PLAIN + b'"' + b"x" * 9 + b'"')


def test_a_planted_bomb_is_a_quick_miss_that_never_inflates_whole(
    harness: Any, bomb: bytes
) -> None:
    cache = harness.make(namespace="n", max_value_size=MiB)
    events: list[ErrorEvent] = []
    cache.on("error", events.append)
    harness.raw_set(b"n:bomb", bomb)
    started = time.perf_counter()
    got, peak = traced_peak(lambda: cache.get("bomb", default="dflt"))
    assert time.perf_counter() - started < 5  # generous; a few ms (docs/benchmarks.md)
    assert got == "dflt"
    assert peak < 8 * MiB  # (it inflates to 64 MiB)
    assert [type(event.error) for event in events] == [SerializationError]
    assert (cache.stats.misses, cache.stats.errors) == (1, 1)
    assert cache.get_many(["bomb"]) == {}


def test_writes_over_max_value_size_raise_before_any_io(harness: Any) -> None:
    cache = harness.make(namespace="n", max_value_size=1000)
    fits = "x" * 998  # 1000 bytes as JSON
    assert cache.set("fits", fits) is True
    assert cache.get("fits") == fits
    for call in (
        lambda: cache.set("k", fits + "x"),
        lambda: cache.set_many({"ok": 1, "k": fits + "x"}),
        lambda: cache.add("k", fits + "x"),
        lambda: cache.get_or_set("k", lambda: fits + "x"),
    ):
        with pytest.raises(ValueTooLargeError, match=r"max_value_size \(KVCACHE_MAX_VALUE_SIZE\)"):
            call()
    assert cache.has("k") is False
    assert cache.has("ok") is False
    assert cache.stats.errors == 0


def test_a_too_large_write_is_refused_while_redis_is_away_too(
    open_cache: Callable[..., Any],
) -> None:
    cache = degraded(open_cache, max_value_size=1000)
    with pytest.raises(ValueTooLargeError):
        cache.set("k", "x" * 1000)
    assert cache.health().journal_keys == 0  # never journaled: nothing was written


def test_a_cluster_cache_s_shards_share_its_fallback_bound() -> None:
    with RedisClusterServer(primaries=3) as cluster:
        settings = KVCacheSettings(url=cluster.url, mode="cluster", fallback_max_bytes=MiB)
        with Cache.from_settings(settings) as cache:
            cache.connect(timeout=10, raise_on_failure=True)
            cache.set_many({f"k{i}": i for i in range(100)})  # a shard for every primary
            adapter: Any = cache._adapter
            shards = list(adapter.shards.values())
            assert len(shards) == 3
            pools = {id(shard.fallback._pool) for shard in [adapter.root, *shards]}
            assert len(pools) == 1  # one bound for the cache, not one per shard
            assert shards[0].fallback.max_bytes == MiB
