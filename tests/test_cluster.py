"""Redis Cluster, for real: local multi-node clusters of redis-server processes, changed
under continuous traffic (resharding with live MOVED/ASK, scale-out, scale-in, failover,
one shard cut off through a ChaosProxy), with Cache and with AsyncCache."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from conftest import (
    CLUSTER_INTERVAL,
    Traffic,
    listener_has_read_all,
    wait_near_ready,
)
from kvcache import Cache, State
from kvcache._core.state import StateChange
from kvcache._near.cache import stream_key
from kvcache.errors import RedirectError
from kvcache.settings import KVCacheSettings
from kvcache.stores import RedisStore, open_store
from kvcache.testing import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisClusterServer]:
    """A 3-primary cluster for tests that leave it with 3 primaries."""
    with RedisClusterServer(primaries=3) as cluster:
        yield cluster


def owner_client(cluster: RedisClusterServer, full_key: bytes) -> redis.Redis:
    return redis.Redis(port=cluster.owner(full_key))


def test_keys_go_to_their_slot_owners_and_clear_scans_every_primary(
    shared_cluster: RedisClusterServer, make_cache: Callable[..., Any]
) -> None:
    cache = make_cache(shared_cluster.url, mode="cluster")
    keys = [f"k{i}" for i in range(300)]
    assert cache.set_many({k: i for i, k in enumerate(keys)})
    assert cache.get_many(keys) == {k: i for i, k in enumerate(keys)}
    for key in keys[:20]:  # each key sits on the primary its slot says
        with owner_client(shared_cluster, b"kvcache:" + key.encode()) as node:
            assert node.exists(b"kvcache:" + key.encode()) == 1
    assert len(cache.health().shards) == 3
    with owner_client(shared_cluster, b"other:{x}") as node:
        node.set(b"other:{x}", b"1")  # outside the namespace: clear() must leave it
    assert cache.delete_many(keys[:100]) == 100
    assert cache.clear() == 200
    assert sorted(cache) == []
    with owner_client(shared_cluster, b"other:{x}") as node:
        assert node.get(b"other:{x}") == b"1"
        node.delete(b"other:{x}")
    assert cache.stats.fallback_hits == cache.stats.fallback_misses == cache.stats.errors == 0


def test_resharding_under_traffic_follows_moved_and_ask(
    shared_cluster: RedisClusterServer,
    make_cache: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A generous op_timeout: MIGRATE blocks its node briefly, and on a loaded CI machine a
    # 250 ms timeout would (rightly) open that shard's breaker, which is not what this tests.
    cache = make_cache(shared_cluster.url, mode="cluster", op_timeout=2.0)
    caplog.set_level(logging.DEBUG, logger="kvcache")
    keys = [f"user:{i}" for i in range(200)]
    slots = sorted({shared_cluster.keyslot(b"kvcache:" + k.encode()) for k in keys[:40]})
    with Traffic(cache, keys) as traffic:
        traffic.run_for(0.3)
        by_owner: dict[int, list[int]] = {}
        for slot in slots:
            by_owner.setdefault(shared_cluster.slot_map()[slot], []).append(slot)
        ports = shared_cluster.primary_ports
        for owner, owned in by_owner.items():  # each slot to the next primary, half-way pauses
            target = ports[(ports.index(owner) + 1) % len(ports)]
            shared_cluster.migrate_slots(owned, to=target, pause=0.05)
        traffic.run_for(0.3)
    assert traffic.exceptions == []
    assert traffic.wrong == []
    stats = cache.stats
    assert stats.fallback_hits == stats.fallback_misses == 0  # no shard was ever down
    assert stats.errors == 0
    assert cache.state is State.READY
    # Slots moved, primaries did not: no INFO line each time the nodes briefly disagree
    # (see test_a_map_change_without_new_primaries_is_logged_at_debug).
    assert not [
        r
        for r in caplog.records
        if "cluster topology" in r.getMessage() and r.levelno > logging.DEBUG
    ]
    for key in keys[:40]:  # every key readable where it lives now
        cache.set(key, "after")
        assert cache.get(key) == "after"


def test_a_map_change_without_new_primaries_is_logged_at_debug(
    shared_cluster: RedisClusterServer,
    make_cache: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache(shared_cluster.url, mode="cluster")
    caplog.set_level(logging.DEBUG, logger="kvcache")
    slot = shared_cluster.keyslot(b"kvcache:moved")
    ports = shared_cluster.primary_ports
    owner = shared_cluster.slot_map()[slot]
    shared_cluster.migrate_slots([slot], to=ports[(ports.index(owner) + 1) % len(ports)])

    def installed() -> list[logging.LogRecord]:
        cache.get("other")  # calls claim the periodic check; this key's slot did not move
        return [r for r in caplog.records if "cluster topology" in r.getMessage()]

    deadline = time.monotonic() + 10
    while not installed():
        assert time.monotonic() < deadline, "the new map was never installed"
        time.sleep(0.05)
    assert all(r.levelno == logging.DEBUG for r in installed())


def test_one_shard_cut_off_degrades_only_its_keys(
    shared_cluster: RedisClusterServer, make_cache: Callable[..., Any]
) -> None:
    proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in shared_cluster.primary_ports}
    try:
        cache = make_cache(
            shared_cluster.url,
            remap=lambda port: proxies[port].port,
            mode="cluster",
        )
        changes: list[StateChange] = []
        cache.on("state", changes.append)
        dead = shared_cluster.primary_ports[0]
        keys = [f"k{i}" for i in range(120)]
        on_dead = [k for k in keys if shared_cluster.owner(b"kvcache:" + k.encode()) == dead]
        healthy = [k for k in keys if k not in on_dead]
        assert on_dead
        assert healthy
        cache.set_many({k: "before" for k in keys})

        proxies[dead].blackhole()
        started = time.monotonic()
        cache.get(on_dead[0])  # the call that meets the dead node opens its breaker
        assert time.monotonic() - started < 2.0
        assert cache.state is State.DEGRADED
        hits = cache.stats.hits
        for key in healthy:  # still served by Redis: hits, never the fallback
            assert cache.get(key) == "before"
        assert cache.stats.hits == hits + len(healthy)
        fallback_before = cache.stats.fallback_hits + cache.stats.fallback_misses
        started = time.monotonic()
        for key in on_dead:  # served at once by the shard's fallback
            cache.set(key, "during")
            assert cache.get(key) == "during"
        assert time.monotonic() - started < 1.0
        assert cache.stats.fallback_hits + cache.stats.fallback_misses > fallback_before
        before = cache.stats.as_dict()
        mixed = healthy[:5] + on_dead[:3]  # one call, two shards Redis answers, one it cannot
        assert cache.get_many(mixed) == {
            **dict.fromkeys(healthy[:5], "before"),
            **dict.fromkeys(on_dead[:3], "during"),
        }
        after = cache.stats.as_dict()
        assert after["hits"] - before["hits"] == 5  # counted key by key, by who answered
        assert after["fallback_hits"] - before["fallback_hits"] == 3
        shards = cache.health().shards
        assert [s.state for s in shards.values()].count(State.DEGRADED) == 1
        assert [c.shard for c in changes if c.current is State.DEGRADED] == [
            f"127.0.0.1:{proxies[dead].port}"
        ]

        with redis.Redis(port=dead) as node:  # meanwhile someone else writes the key
            for key in on_dead:
                node.set(b"kvcache:" + key.encode(), b'"elsewhere"')
        proxies[dead].up()
        deadline = time.monotonic() + 10
        while cache.state is not State.READY and time.monotonic() < deadline:
            cache.get(healthy[0])
            time.sleep(0.05)
        assert cache.state is State.READY
        for key in on_dead:  # journaled keys were deleted on recovery: a miss, never "before"
            assert cache.get(key) is None
        assert cache.stats.errors >= 1  # the call that met the dead node
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_scale_out_scale_in_and_failover_under_traffic(make_cache: Callable[..., Any]) -> None:
    with RedisClusterServer(primaries=2, replicas=1) as cluster:
        proxies: dict[int, ChaosProxy] = {}

        def remap(port: int) -> int:  # every node dialled through a counting proxy
            if port not in proxies:
                proxies[port] = ChaosProxy("127.0.0.1", port).start()
            return proxies[port].port

        # A generous op_timeout: 5 nodes, proxies and traffic on 2 shared cores stall now
        # and then for longer than the default 0.25 s, which degrades a shard for a moment.
        cache = make_cache(cluster.url, remap=remap, mode="cluster", op_timeout=1.0)
        keys = [f"k{i}" for i in range(150)]
        try:
            with Traffic(cache, keys) as traffic:
                traffic.run_for(0.3)
                # scale out: a new primary takes some slots (with their keys)
                added = cluster.add_primary()
                cluster.migrate_slots(range(64), to=added)
                traffic.run_for(CLUSTER_INTERVAL * 2)
                assert len(cache.health().shards) == 3
                # scale in: it hands them back, is forgotten, and stops
                cluster.remove_node(added)
                traffic.run_for(CLUSTER_INTERVAL * 3)
                proxies[added].reset_counters()
                traffic.run_for(CLUSTER_INTERVAL * 3)
                # within a topology interval the node that left is no longer dialled
                assert proxies[added].accepted == 0
                # failover: a primary dies, its replica takes over
                victim = cluster.primary_ports[0]
                cluster.failover(victim)
                _wait_ready(cache)
                traffic.run_for(CLUSTER_INTERVAL * 3)
                proxies[victim].reset_counters()
                traffic.run_for(CLUSTER_INTERVAL * 3)
            assert traffic.exceptions == []
            assert traffic.wrong == []
            assert proxies[victim].accepted == 0
            _wait_ready(cache)
            assert len(cache.health().shards) == 2
        finally:
            for proxy in proxies.values():
                proxy.stop()


def _wait_ready(cache: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while cache.state is not State.READY and time.monotonic() < deadline:
        cache.get("k0")
        time.sleep(0.05)
    assert cache.state is State.READY


def test_proxy_mode_never_follows_moved(
    shared_cluster: RedisClusterServer, make_cache: Callable[..., Any]
) -> None:
    proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in shared_cluster.primary_ports}
    try:
        entry = shared_cluster.primary_ports[0]
        cache = make_cache(f"redis://127.0.0.1:{proxies[entry].port}/0?mode=standalone")
        assert "RedisStore(" in repr(cache.store)
        elsewhere = next(
            f"k{i}" for i in range(100) if shared_cluster.owner(f"kvcache:k{i}") != entry
        )
        assert cache.get(elsewhere, "default") == "default"  # MOVED: an error, not a redirect
        assert cache.set(elsewhere, 1) is False
        assert cache.stats.errors == 2
        assert cache.state is State.READY  # a MOVED is not an outage
        for port, proxy in proxies.items():
            assert proxy.accepted == (0 if port != entry else proxy.accepted)
        assert proxies[entry].accepted >= 1
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_topology_query_against_a_hanging_node_is_bounded(
    shared_cluster: RedisClusterServer,
) -> None:
    with ChaosProxy("127.0.0.1", shared_cluster.primary_ports[0]) as proxy:
        store = RedisStore(redis.Redis(port=proxy.port), connect_timeout=0.2)
        assert store.cluster_slots()  # up: the slot map
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(Exception, match="imeout"):
            store.cluster_slots()
        assert time.monotonic() - started < 2 * 0.2 + 0.3


def test_mode_cluster_against_a_standalone_server_says_why(redis_url: str) -> None:
    cache = Cache.from_url(redis_url, mode="cluster", connect_attempts=1)
    try:
        assert cache.connect(timeout=1) is State.DEGRADED
        assert cache.set("k", 1)  # served by the fallback, never an exception
        assert cache.health().last_error == "CacheUnavailableError"
    finally:
        cache.close()


def test_mode_auto_serves_a_standalone_server(redis_url: str) -> None:
    cache = Cache.from_url(redis_url, mode="auto")
    try:
        assert cache.connect(timeout=5) is State.READY
        assert cache.set_many({"a": 1, "b": 2})
        assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
        assert list(cache.health().shards or {}) == [redis_url.split("//")[1].split("/")[0]]
    finally:
        cache.close()


def _sees(cluster: RedisClusterServer, writer: Any, reader: Any, version: int) -> None:
    """A write in ``writer`` reaches ``reader``'s listener, which evicts the old copies."""
    keys = [f"k{i}" for i in range(30)]
    writer.set_many(dict.fromkeys(keys, version))
    admin = owner_client(cluster, stream_key(writer.namespace))
    deadline = time.monotonic() + 15
    while not listener_has_read_all(reader, admin):
        assert time.monotonic() < deadline, "the listener did not read the write"
        time.sleep(0.01)
    assert [reader.get(key) for key in keys] == [version] * len(keys)  # nothing stale
    hits = reader.stats.near_hits
    assert [reader.get(key) for key in keys] == [version] * len(keys)
    assert reader.stats.near_hits == hits + len(keys)  # and the L1 answers again


def test_near_cache_invalidates_across_caches_and_follows_its_stream(
    shared_cluster: RedisClusterServer, make_cache: Callable[..., Any]
) -> None:
    namespace = f"near{time.monotonic_ns()}"
    options = {"mode": "cluster", "namespace": namespace, "near_cache": True, "op_timeout": 2.0}
    reader = make_cache(shared_cluster.url, **options)
    writer = make_cache(shared_cluster.url, **options)  # another instance: another process
    wait_near_ready(reader)
    keys = [f"k{i}" for i in range(30)]
    assert len({shared_cluster.owner(f"{namespace}:{k}") for k in keys}) == 3  # every primary
    for key in keys:  # copies of version 0 in the reader's L1
        writer.set(key, 0)
        assert reader.get(key) == 0
    _sees(shared_cluster, writer, reader, 1)
    stream = stream_key(namespace)
    owner = shared_cluster.owner(stream)
    ports = shared_cluster.primary_ports
    target = ports[(ports.index(owner) + 1) % len(ports)]
    shared_cluster.migrate_slots([shared_cluster.keyslot(stream)], to=target)
    assert shared_cluster.owner(stream) == target
    _sees(shared_cluster, writer, reader, 2)  # the listener and the XADDs followed MOVED
    assert reader.state is writer.state is State.READY


def test_near_cache_follows_its_stream_through_a_failover(make_cache: Callable[..., Any]) -> None:
    with RedisClusterServer(primaries=2, replicas=1) as cluster:
        namespace = f"near{time.monotonic_ns()}"
        options = {"mode": "cluster", "namespace": namespace, "near_cache": True}
        reader = make_cache(cluster.url, **options, op_timeout=1.0)
        writer = make_cache(cluster.url, **options, op_timeout=1.0)
        wait_near_ready(reader)
        _sees(cluster, writer, reader, 1)
        victim = cluster.owner(stream_key(namespace))
        promoted = cluster.failover(victim)  # the stream's primary dies
        for cache in (writer, reader):  # both learn the new topology (writes meanwhile are
            deadline = time.monotonic() + 10  # served by the fallback: not what this tests)
            while set(cache.health().shards) != {f"127.0.0.1:{p}" for p in cluster.primary_ports}:
                assert time.monotonic() < deadline, "the failover was not noticed"
                cache.get("k0")
                time.sleep(0.05)
            _wait_ready(cache)
        assert cluster.owner(stream_key(namespace)) == promoted
        _sees(cluster, writer, reader, 2)


def test_the_listener_connection_raises_moved_from_a_node_without_the_stream(
    shared_cluster: RedisClusterServer,
) -> None:
    """What ClusterStreamReader follows: every listener call, the snapshot's MULTI included
    (refused when queued, then EXECABORT), says MOVED on a node that does not serve the slot."""
    stream = stream_key("moved")
    other = next(p for p in shared_cluster.primary_ports if p != shared_cluster.owner(stream))
    store = open_store(KVCacheSettings(url=f"redis://127.0.0.1:{other}/0"))  # one node
    reader = store.stream_reader(1.0)  # type: ignore[union-attr, call-arg]
    calls: list[Callable[[], object]] = [
        lambda: reader.position(stream),
        lambda: reader.snapshot(stream, b"0-0", 10),
        lambda: reader.wait(stream, b"0-0", 10),
        lambda: reader.publish(stream, {b"by": b"x", b"n": b"0"}, 100),
    ]
    try:
        for call in calls:
            with pytest.raises(RedirectError) as caught:
                call()
            assert caught.value.kind == "MOVED"
            assert caught.value.address.endswith(f":{shared_cluster.owner(stream)}")
    finally:
        reader.close(final=True)
        store.close()


def test_the_first_write_of_a_process_lands_in_the_cluster(
    shared_cluster: RedisClusterServer, open_cache: Callable[..., Any]
) -> None:
    """No connect(): the first call waits for the first topology fetch (op_timeout at most)."""
    cache = open_cache(  # op_timeout: generous, for a loaded machine
        shared_cluster.url, connect=False, mode="cluster", namespace="first", op_timeout=2.0
    )
    keys = {f"k{i}": i for i in range(30)}  # over every primary
    assert cache.set("a", 1) is True
    assert cache.set_many(keys) is True
    with owner_client(shared_cluster, b"first:a") as node:
        assert node.get(b"first:a") == b"1"  # in Redis, not in the fallback
    assert cache.get_many(list(keys)) == keys
    assert cache.stats.fallback_hits + cache.stats.fallback_misses == 0
    assert cache.health().journal_keys == 0
    assert cache.clear() == 31
