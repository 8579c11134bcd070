"""The near cache against a real redis-server: several processes (spawned), a listener cut
off through a ChaosProxy while others write, a stream trimmed below the last id read, and
events written between "position taken" and "ready"."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from conftest import listener_has_read_all
from kvcache import (
    AsyncCache,
    Cache,
    CacheClosedError,
    CacheUnavailableError,
    ConfigurationError,
    KVCacheSettings,
    State,
)
from kvcache._near.cache import MISSING, Feed, NearCache, NearCacheConfig, stream_key
from kvcache._near.listener import ListenerThread
from kvcache.stores import open_store
from kvcache.testing import ChaosProxy, RedisServer

READERS = 3
VERSIONS = 8


def near_settings(url: str, namespace: str, **near: Any) -> KVCacheSettings:
    return KVCacheSettings(url=url, namespace=namespace, near_cache={"enabled": True, **near})


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.005)


@pytest.fixture
def ns() -> str:
    return f"near{uuid.uuid4().hex[:8]}"


@pytest.fixture
def caches() -> Iterator[Callable[[KVCacheSettings], Cache]]:
    made: list[Cache] = []

    def make(settings: KVCacheSettings) -> Cache:
        cache = Cache.from_settings(settings)
        made.append(cache)
        assert cache.connect(timeout=5) is State.READY
        return cache

    yield make
    for cache in made:
        cache.close()


def near_of(cache: Cache) -> NearCache:
    near = cache._near
    assert near is not None
    return near


# -- several processes -------------------------------------------------------------------


def reader(url: str, namespace: str, ready: Any, results: Any, stop: Any) -> None:
    """A process with a near cache, reading one key as fast as it can; reports when it first
    saw each version, whether it ever went back to an older one, and its near hits."""
    cache = Cache.from_settings(near_settings(url, namespace))
    cache.connect(timeout=5)
    wait_for(lambda: near_of(cache).ready)
    ready.put(True)
    seen: dict[int, float] = {}
    newest = 0
    went_back = 0
    while not stop.is_set():
        value = cache.get("k")
        if value is None:
            continue
        if value < newest:
            went_back += 1
        elif value > newest:
            newest = value
            seen[value] = time.time()
    results.put((seen, went_back, cache.stats.near_hits))
    cache.close()


def test_a_write_in_one_process_evicts_the_copies_in_the_others(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    writer = caches(near_settings(redis_url, ns))
    writer.set("k", 0)
    context = multiprocessing.get_context("spawn")
    ready, results, stop = context.Queue(), context.Queue(), context.Event()
    children = [
        context.Process(target=reader, args=(redis_url, ns, ready, results, stop))
        for _ in range(READERS)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            assert ready.get(timeout=30)
        written: dict[int, float] = {}
        for version in range(1, VERSIONS + 1):
            time.sleep(0.15)  # the readers serve the current version from their L1 meanwhile
            written[version] = time.time()
            writer.set("k", version)
        time.sleep(0.5)
        stop.set()
        reports = [results.get(timeout=30) for _ in children]
    finally:
        stop.set()
        for child in children:
            child.join(10)
    for seen, went_back, near_hits in reports:
        assert went_back == 0  # never an older version after a newer one
        assert near_hits > 100  # they did read from their L1
        assert sorted(seen) == list(range(1, VERSIONS + 1))  # saw every version
        delays = [seen[v] - written[v] for v in seen]
        assert max(delays) < 1.0, delays  # generous: benchmarks/healthy.py measures it


# -- one process, its listener cut off -----------------------------------------------------


def read_to_the_end(cache: Cache, url: str) -> None:
    """Until ``cache``'s listener has read the stream's last entry (so a copy it fills now
    is not evicted by an older write's entry still on its way)."""
    with redis.Redis.from_url(url) as admin:
        wait_for(lambda: listener_has_read_all(cache, admin))


def listen_through(cache: Cache, proxy: ChaosProxy | str, block: float = 0.2) -> Feed:
    """Re-route ``cache``'s listener through ``proxy`` (or a URL), its data path unchanged:
    so the listener alone can be cut off (or alone be spared)."""
    assert cache._listener is not None
    cache._listener.stop(wait=5)  # its thread is gone: it sets nothing on the L1 any more
    near = near_of(cache)
    near.ready = False
    url = proxy if isinstance(proxy, str) else proxy.url
    through = open_store(KVCacheSettings(url=url, connect_timeout=0.2))
    feed = Feed(near, through.stream_reader(block))  # type: ignore[union-attr, call-arg]
    cache._listener = ListenerThread(feed, retry_max=0.2)
    cache._listener.ensure_running()
    wait_for(lambda: near.ready)
    return feed


@pytest.mark.parametrize("cut", ["refuse", "blackhole"])
def test_a_listener_cut_off_while_others_write_resumes_from_its_last_id(
    redis_url: str,
    chaos_proxy: ChaosProxy,
    caches: Callable[[KVCacheSettings], Cache],
    ns: str,
    cut: str,
) -> None:
    reading = caches(near_settings(redis_url, ns))
    writing = caches(near_settings(redis_url, ns))
    keys = [f"k{i}" for i in range(20)]
    writing.set_many(dict.fromkeys(keys, "old"))
    feed = listen_through(reading, chaos_proxy)
    near = near_of(reading)
    for key in keys * 2:
        assert reading.get(key) == "old"
    hits = reading.stats.near_hits
    assert hits >= len(keys)  # the second round came from the L1

    getattr(chaos_proxy, cut)()
    wait_for(lambda: not near.ready)  # no listener: the L1 is bypassed
    for key in keys:
        writing.set(key, "new")  # the reader's L1 still holds "old" for every key
    assert reading.get(keys[0]) == "new"  # bypassed: straight to Redis
    chaos_proxy.up()
    wait_for(lambda: near.ready)
    for key in keys:  # it read what it missed from its last id: nothing stale
        assert reading.get(key) == "new"
    assert feed.flushes == 0  # no gap: a resume, not a flush
    for key in keys:
        reading.get(key)
    assert reading.stats.near_hits > hits  # and the L1 serves again


def test_a_gap_in_the_stream_flushes_the_whole_near_cache(
    redis_url: str, chaos_proxy: ChaosProxy, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    reading = caches(near_settings(redis_url, ns, stream_maxlen=100))
    writing = caches(near_settings(redis_url, ns, stream_maxlen=100))
    writing.set("k", "old")
    feed = listen_through(reading, chaos_proxy)
    near = near_of(reading)
    assert reading.get("k") == "old"
    assert reading.get("k") == "old"
    assert len(near) == 1

    chaos_proxy.refuse()
    wait_for(lambda: not near.ready)
    writing.set("k", "new")
    for i in range(400):  # enough invalidations to trim the one about "k" away
        writing.set(f"other{i}", i)
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(stream_key(ns)) < 400
    chaos_proxy.up()
    wait_for(lambda: near.ready)
    assert feed.flushes == 1
    assert len(near) == 0
    assert reading.get("k") == "new"


def test_a_stream_deleted_and_made_again_flushes_the_near_cache(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    reading = caches(near_settings(redis_url, ns, block=0.1))
    writing = caches(near_settings(redis_url, ns))
    writing.set("k", "v0")
    wait_for(lambda: near_of(reading).ready)
    assert reading.get("k") == "v0"
    assert reading.get("k") == "v0"  # in its L1
    assert reading._listener is not None
    feed = reading._listener._feed
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()  # the key and the stream go; nobody announces it
    for i in range(3):  # a new stream, already as long as the one the listener knew
        writing.set(f"other{i}", i)
    wait_for(lambda: feed.flushes == 1)
    assert reading.get("k") is None


def test_events_between_taking_the_position_and_ready_are_not_lost(redis_url: str, ns: str) -> None:
    """Drives the listener by hand: an invalidation written after the position was taken,
    but before the listener went on, is applied (starting at "$" after "ready" loses it)."""
    store = open_store(KVCacheSettings(url=redis_url))
    near = NearCache(NearCacheConfig(), ns)
    feed = Feed(near, store.stream_reader(0.1))  # type: ignore[union-attr, call-arg]
    with redis.Redis.from_url(redis_url) as client:
        client.xadd(stream_key(ns), {"by": "earlier", "n": "1", "0": f"{ns}:old"})
        listen = feed.listen()
        target, asked = next(listen)
        assert asked.method == "position"
        position = getattr(target, asked.method)(*asked.args)
        near.ready = True  # as if it had reported ready here: fill a copy of "k"
        near.fill(f"{ns}:k".encode(), "cached", -1, near.ticket())
        client.xadd(stream_key(ns), {"by": "another", "n": "1", "0": f"{ns}:k"})  # the window
        target, asked = listen.send(position)
        assert asked.method == "snapshot"
        _, asked = listen.send(getattr(target, asked.method)(*asked.args))
        assert asked.method == "wait"  # caught up
    listen.close()
    assert f"{ns}:k".encode() not in near._entries  # evicted: the event was not lost
    store.close()


# -- this process's own writes, recovery, settings ------------------------------------------


def test_own_writes_evict_at_once_and_hits_stay_local(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    cache = caches(near_settings(redis_url, ns))
    wait_for(lambda: near_of(cache).ready)
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.get("k") == 1
    assert cache.stats.near_hits == 1
    cache.set("k", 2)  # no waiting for the stream: evicted here as it is written
    assert cache.get("k") == 2
    cache.incr("n")
    assert cache.get("n") == 1
    cache.incr("n")
    assert cache.get("n") == 2
    cache.delete("n")
    assert cache.get("n") is None
    cache.clear()
    assert cache.get("k") is None


def test_get_many_takes_what_the_near_cache_has_and_reads_the_rest(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    reader = caches(near_settings(redis_url, ns))
    writer = caches(near_settings(redis_url, ns))
    wait_for(lambda: near_of(reader).ready)
    writer.set_many({"a": 1, "b": 2, "c": 3})
    read_to_the_end(reader, redis_url)
    assert (reader.get("a"), reader.get("b")) == (1, 2)  # copies of a and b
    assert reader.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": 3}
    assert reader.stats.near_hits == 2
    assert reader.stats.hits == 3  # a and b (the copies' reads), then c
    assert reader.stats.misses == 1  # d
    writer.set("a", 10)  # another process: evicted through the stream
    wait_for(lambda: reader.get_many(["a", "b"]) == {"a": 10, "b": 2})
    assert reader.get_many(["b"]) == {"b": 2}
    assert reader.stats.near_hits >= 4


def test_an_own_write_made_while_redis_is_away_evicts_the_local_copy(
    redis_url: str, chaos_proxy: ChaosProxy, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    """The listener still connected (its own path), the data path cut: the L1 must not
    answer an older value than the one this process just wrote to the fallback."""
    cache = caches(near_settings(chaos_proxy.url, ns))
    listen_through(cache, redis_url)
    cache.set("k", "before")
    assert cache.get("k") == "before"
    assert cache.get("k") == "before"
    assert cache.stats.near_hits == 1
    chaos_proxy.refuse()
    cache.set("k", "during")  # to the fallback: Redis is away
    assert cache.state is State.DEGRADED
    assert near_of(cache).ready  # the listener did not notice anything
    assert cache.get("k") == "during"


def _forked_worker(cache: Cache, key: str, results: Any, go: Any) -> None:
    assert cache.get(key) == 1  # starts this process's own listener (the parent's is not here)
    wait_for(lambda: near_of(cache).ready)
    assert cache.get(key) == 1
    assert cache.get(key) == 1  # from this process's L1
    results.put(("cached", cache.stats.near_hits))
    go.wait(10)
    wait_for(lambda: cache.get(key) == 2, timeout=5)  # the parent's write reached it
    results.put(("seen", 2))


def test_a_forked_worker_gets_a_listener_of_its_own(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    cache = caches(near_settings(redis_url, ns))
    cache.set("k", 1)
    context = multiprocessing.get_context("fork")
    results, go = context.Queue(), context.Event()
    child = context.Process(target=_forked_worker, args=(cache, "k", results, go))
    child.start()
    try:
        assert results.get(timeout=20)[0] == "cached"
        cache.set("k", 2)
        go.set()
        assert results.get(timeout=20) == ("seen", 2)
    finally:
        child.join(10)
    assert child.exitcode == 0
    assert cache.get("k") == 2  # the parent's listener and connections still work


@pytest.mark.parametrize("when", ["starting", "degraded"])
def test_recovery_tells_every_near_cache_to_flush(
    redis_url: str,
    chaos_proxy: ChaosProxy,
    caches: Callable[[KVCacheSettings], Cache],
    ns: str,
    when: str,
) -> None:
    """A write made while Redis was away (or not yet reached) is deleted in Redis when it
    comes (the journal): the other processes' copies of it must go too."""
    other = caches(near_settings(redis_url, ns))
    other.set("k", "before")
    wait_for(lambda: near_of(other).ready)
    assert other.get("k") == "before"
    assert other.get("k") == "before"  # cached in its L1
    if when == "starting":
        chaos_proxy.latency(300)  # the first connect takes a while
        away = Cache.from_settings(near_settings(chaos_proxy.url, ns, block=0.2))
        assert away.state is State.STARTING
    else:
        away = caches(near_settings(chaos_proxy.url, ns, block=0.2))
        chaos_proxy.refuse()
    away.delete("k")  # the fallback, and the journal
    assert away.state is not State.READY
    chaos_proxy.up()
    assert away.connect(timeout=5) is State.READY
    wait_for(lambda: other.get("k") is None)  # deleted in Redis, flushed from the L1
    away.close()


def test_async_cache_reads_from_its_near_cache_and_hears_other_writes(
    redis_url: str,
    loop: asyncio.AbstractEventLoop,
    caches: Callable[[KVCacheSettings], Cache],
    ns: str,
) -> None:
    writer = caches(near_settings(redis_url, ns))
    writer.set("k", "old")
    cache = AsyncCache.from_settings(near_settings(redis_url, ns))

    async def scenario() -> tuple[list[Any], int]:
        await cache.connect(timeout=5)
        deadline = time.monotonic() + 5
        while not near_of(cache).ready:  # type: ignore[arg-type]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        seen = [await cache.get("k"), await cache.get("k")]
        hits = cache.stats.near_hits
        writer.set("k", "new")  # another cache, another listener's instance id
        while (value := await cache.get("k")) == "old":
            assert time.monotonic() < deadline + 5
            await asyncio.sleep(0.005)
        seen.append(value)
        await cache.set("k", "mine")
        seen.append(await cache.get("k"))  # its own write: evicted at once
        await cache.close()
        return seen, hits

    seen, hits = asyncio.run_coroutine_threadsafe(scenario(), loop).result(timeout=30)
    assert seen == ["old", "old", "new", "mine"]
    assert hits == 1


def test_near_cache_settings_and_limits(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_NEAR_CACHE__ENABLED", "true")
    monkeypatch.setenv("KVCACHE_NEAR_CACHE__TTL", "5")
    options = KVCacheSettings(url=redis_url).cache_options()
    assert options["near_cache"] == NearCacheConfig(ttl=5.0)
    with pytest.raises(ConfigurationError, match="needs a Redis store"):
        Cache.from_url("memory://")
    with pytest.raises(ConfigurationError, match="stream_maxlen"):
        NearCacheConfig(stream_maxlen=10)
    monkeypatch.delenv("KVCACHE_NEAR_CACHE__ENABLED")
    with Cache.from_url(redis_url, near_cache=True) as cache:  # {"enabled": True}: defaults
        assert near_of(cache).config == NearCacheConfig()
    with Cache.from_url(redis_url) as cache:
        assert cache._near is None


# The README's ACL rights: a least-privilege cache user's (as in test_redis.py), then what a
# near-cached namespace adds: its stream's key and XADD, XREAD, XINFO STREAM on it (nothing
# else of @stream).
CACHE_ACL = "on >app-pass ~app:* +@read +@write +@keyspace +@transaction +ping"
NEAR_ACL = "~__kvcache_invalidations__:app -@stream +xadd +xread +xinfo|stream"


def test_the_acl_rights_the_readme_names_are_what_a_near_cache_needs(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", "app", *f"{CACHE_ACL} {NEAR_ACL}".split())
        admin.execute_command("ACL", "SETUSER", "nostream", *CACHE_ACL.split())
        admin.execute_command("ACL", "LOG", "RESET")
        try:
            settings = near_settings(redis_url.replace("://", "://app:app-pass@"), "app")
            with Cache.from_settings(settings) as writer, Cache.from_settings(settings) as reader:
                errors: list[Any] = []
                for cache in (writer, reader):
                    cache.on("error", errors.append)
                    assert cache.connect(timeout=5) is State.READY
                wait_for(lambda: near_of(writer).ready and near_of(reader).ready)
                writer.set("k", 1)
                read_to_the_end(reader, redis_url)
                assert (reader.get("k"), reader.get("k")) == (1, 1)
                assert reader.stats.near_hits == 1  # a copy
                writer.set("k", 2)  # evicted through the stream
                wait_for(lambda: reader.get("k") == 2)
                writer.clear()
                wait_for(lambda: reader.get("k") is None)
                assert errors == []
            assert admin.acl_log() == []
            url = redis_url.replace("://", "://nostream:app-pass@")
            with Cache.from_settings(near_settings(url, "app")) as cache:
                assert cache.connect(timeout=5) is State.READY  # the cache itself: fine
                wait_for(
                    lambda: any(
                        e["object"] == "__kvcache_invalidations__:app" for e in admin.acl_log()
                    )
                )
                assert not near_of(cache).ready  # its listener cannot read the stream
        finally:
            admin.execute_command("ACL", "DELUSER", "app", "nostream")


def test_a_copy_lives_no_longer_than_redis_keeps_the_key_and_the_l1_is_bounded() -> None:
    now = [100.0]
    near = NearCache(NearCacheConfig(maxsize=3, ttl=60), "n", clock=lambda: now[0])
    near.ready = True
    near.fill(b"n:short", "s", 2_000, near.ticket())  # Redis keeps it 2 s more
    near.fill(b"n:long", "l", -1, near.ticket())  # no Redis TTL: the near cache's 60 s
    near.fill(b"n:gone", "g", -2, near.ticket())  # gone already: not kept
    assert near.lookup(b"n:gone") is MISSING
    now[0] += 2.5
    assert near.lookup(b"n:short") is MISSING
    assert near.lookup(b"n:long") == "l"
    stale = near.ticket()
    near.evict([b"n:other"])  # an eviction while a read was in flight
    near.fill(b"n:late", "x", -1, stale)
    assert near.lookup(b"n:late") is MISSING  # dropped: it may predate that write
    slow = near.ticket()
    now[0] += 1.5  # a read that took 1.5 s, of a key Redis keeps 2 s more: 0.5 s left
    near.fill(b"n:slow", "z", 2_000, slow)
    now[0] += 0.6
    assert near.lookup(b"n:slow") is MISSING  # counted from when the read started
    for i in range(5):
        near.fill(f"n:{i}".encode(), i, -1, near.ticket())
    assert len(near) == 3  # bounded: the oldest insertions went first
    assert near.lookup(b"n:4") == 4
    near.ready = False
    assert near.lookup(b"n:4") is MISSING  # no listener: bypassed


def test_close_ends_the_listener_and_the_near_cache_answers_nothing_more(
    redis_url: str, ns: str
) -> None:
    cache = Cache.from_settings(near_settings(redis_url, ns, block=0.2))
    cache.connect(timeout=5)
    cache.set("k", 1)
    wait_for(lambda: near_of(cache).ready)
    cache.get("k")
    assert cache.get("k") == 1
    assert cache._listener is not None
    listener = cache._listener
    cache.close()
    wait_for(lambda: listener._thread is None or not listener._thread.is_alive(), timeout=5)
    with pytest.raises(CacheClosedError):
        cache.get("k")  # not the copy it held


def test_a_dropped_cache_is_collected_and_its_listener_ends(redis_url: str, ns: str) -> None:
    cache = Cache.from_settings(near_settings(redis_url, ns, block=0.2))
    cache.connect(timeout=5)
    near = near_of(cache)
    wait_for(lambda: near.ready)
    listener = cache._listener
    assert listener is not None
    dropped = weakref.ref(cache)
    del cache
    gc.collect()
    assert dropped() is None
    wait_for(lambda: listener._thread is None or not listener._thread.is_alive(), timeout=5)


def test_a_redis_without_entries_added_disables_the_near_cache_once(
    redis_url: str, ns: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def old_redis(fields: Any) -> int:  # what XINFO STREAM lacks before Redis 7.0
        raise ConfigurationError("the near cache needs Redis 7.0 or later (XINFO entries-added)")

    monkeypatch.setattr("kvcache._redis.stream._entries_added", old_redis)
    with redis.Redis.from_url(redis_url) as client:
        client.xadd(stream_key(ns), {"n": "0"})
    before = threading.active_count()
    with Cache.from_settings(near_settings(redis_url, ns)) as cache:
        cache.connect(timeout=5)
        cache.set("k", 1)
        for _ in range(50):
            assert cache.get("k") == 1  # from Redis, every time
        assert cache.stats.near_hits == 0
        assert threading.active_count() <= before + 1  # the prober at most; no listener each get
    assert len([r for r in caplog.records if "near cache disabled" in r.getMessage()]) == 1


def test_a_write_whose_announcement_redis_refused_is_announced_later(ns: str) -> None:
    """Out of memory (noeviction), Redis lets DEL through and refuses XADD: the write lands,
    its announcement does not. The writer's listener makes it once it can."""
    with RedisServer() as server:
        reading = Cache.from_settings(near_settings(server.url, ns, block=0.1))
        writing = Cache.from_settings(near_settings(server.url, ns, block=0.1))
        try:
            for cache in (reading, writing):
                assert cache.connect(timeout=5) is State.READY
            writing.set("k", "v0")
            wait_for(lambda: near_of(reading).ready and near_of(writing).ready)
            assert reading.get("k") == "v0"
            assert reading.get("k") == "v0"  # in its L1
            with server.client() as admin:
                admin.config_set("maxmemory", 1)
                try:
                    assert writing.delete("k")  # landed; its XADD was refused
                finally:
                    admin.config_set("maxmemory", 0)
                assert admin.exists(f"{ns}:k") == 0
            wait_for(lambda: reading.get("k") is None)  # announced by the writer's listener
        finally:
            reading.close()
            writing.close()


def test_close_announces_what_the_listener_could_not(ns: str) -> None:
    """A write whose XADD Redis refused, its listener cut off: close() makes the announcement
    through the data path, so the other processes' copies do not live out their TTL."""
    with RedisServer() as server, ChaosProxy(server.host, server.port) as proxy:
        reading = Cache.from_settings(near_settings(server.url, ns, block=0.1))
        writing = Cache.from_settings(near_settings(server.url, ns, block=0.1))
        try:
            for cache in (reading, writing):
                assert cache.connect(timeout=5) is State.READY
            listen_through(writing, proxy)
            proxy.refuse()  # the writer's listener cannot publish anything
            writing.set("k", "v0")
            read_to_the_end(reading, server.url)
            assert reading.get("k") == "v0"
            with server.client() as admin:
                admin.config_set("maxmemory", 1)
                try:
                    assert writing.delete("k")  # landed; its XADD was refused: pending
                finally:
                    admin.config_set("maxmemory", 0)
            time.sleep(0.3)
            assert reading.get("k") == "v0"  # (the copy others hold, until it is announced)
            writing.close()
            wait_for(lambda: reading.get("k") is None, 5)
        finally:
            reading.close()
            writing.close()


def test_a_failed_write_drops_the_local_copy_even_when_it_raises(
    redis_url: str, chaos_proxy: ChaosProxy, ns: str
) -> None:
    cache = Cache.from_settings(
        KVCacheSettings(
            url=chaos_proxy.url, namespace=ns, throw_on_errors=True, near_cache={"enabled": True}
        )
    )
    try:
        assert cache.connect(timeout=5) is State.READY
        listen_through(cache, redis_url)  # its listener keeps working through the outage
        cache.set("k", "before")
        assert cache.get("k") == "before"
        assert cache.get("k") == "before"
        chaos_proxy.refuse()
        with pytest.raises(CacheUnavailableError):
            cache.set("k", "lost")  # may or may not have landed
        with pytest.raises(CacheUnavailableError):
            cache.get("k")  # not "before" from the L1
    finally:
        cache.close()


def test_a_cancelled_write_still_drops_the_copies_everywhere(
    redis_url: str,
    chaos_proxy: ChaosProxy,
    loop: asyncio.AbstractEventLoop,
    caches: Callable[[KVCacheSettings], Cache],
    ns: str,
) -> None:
    """The caller gave up (``wait_for``) after the SET was sent: it lands all the same, so
    the local copy goes, and the announcement is made later by the listener."""
    other = caches(near_settings(redis_url, ns))
    other.set("k", "v1")
    cache = AsyncCache.from_settings(near_settings(chaos_proxy.url, ns, op_timeout=2.0))

    async def scenario() -> Any:
        await cache.connect(timeout=5)
        listen_through(cache, redis_url)  # type: ignore[arg-type]
        assert await cache.get("k") == "v1"
        assert await cache.get("k") == "v1"  # in its L1
        chaos_proxy.latency(300)  # the SET gets there; its reply comes late
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.set("k", "v2"), 0.05)
        chaos_proxy.latency(0)
        return near_of(cache).lookup(f"{ns}:k".encode())  # type: ignore[arg-type]

    wait_for(lambda: near_of(other).ready)
    assert other.get("k") == "v1"
    assert other.get("k") == "v1"  # in its L1 too
    local = asyncio.run_coroutine_threadsafe(scenario(), loop).result(timeout=30)
    assert local is MISSING  # the local copy went at once
    # Announced by its listener (within a blocked read's wake-up), not served stale for long.
    wait_for(lambda: other.get("k") == "v2", timeout=5)
    asyncio.run_coroutine_threadsafe(cache.close(), loop).result(timeout=10)


def _forked_writer(cache: Cache, url: str, full: bytes, results: Any) -> None:
    near = near_of(cache)
    near.unannounced([full])  # as a refused XADD leaves it, in a worker that never reads
    with redis.Redis.from_url(url) as client:  # its own listener started, and told

        def told() -> bool:
            entries = client.xrange(near.stream)
            return any(fields[b"by"] == near.instance for _, fields in entries)

        wait_for(told, timeout=5)
    results.put(True)


def test_a_forked_worker_that_only_writes_still_announces(
    redis_url: str, caches: Callable[[KVCacheSettings], Cache], ns: str
) -> None:
    cache = caches(near_settings(redis_url, ns))
    other = caches(near_settings(redis_url, ns))
    other.set("k", 1)
    wait_for(lambda: near_of(other).ready)
    other.get("k")
    assert other.get("k") == 1
    full = f"{ns}:k".encode()
    assert full in near_of(other)._entries
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_forked_writer, args=(cache, redis_url, full, results))
    child.start()
    try:
        assert results.get(timeout=20)
    finally:
        child.join(10)
    wait_for(lambda: full not in near_of(other)._entries)
