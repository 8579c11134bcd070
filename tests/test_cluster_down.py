"""CLUSTERDOWN is an outage, for real: a primary of a local cluster killed (kill -9), its
replica elected by the cluster itself. Meanwhile (cluster-require-full-coverage yes, Redis's
and ElastiCache's default) every node answers CLUSTERDOWN to keys: the healthy shards'
breakers must open so callers are served from memory, and close only when the cluster serves
again, with the journal keeping recovery free of stale reads. Cache and AsyncCache."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ClusterDownError

from conftest import ready_cache
from kvcache import State, StateChange
from kvcache.errors import RedirectError
from kvcache.settings import KVCacheSettings
from kvcache.stores import RedisStore
from kvcache.testing.cluster import RedisClusterServer

pytestmark = pytest.mark.redis
NODE_TIMEOUT_MS = 500  # a dead primary is failed (and CLUSTERDOWN starts) after ~0.5-1 s


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    """3 primaries with a replica each: each test crashes one that still has a replica."""
    with RedisClusterServer(primaries=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS) as made:
        yield made


def settings(cluster: RedisClusterServer) -> KVCacheSettings:
    # op_timeout: generous, 6 nodes share 2 loaded cores; a refused connect is immediate anyway.
    return KVCacheSettings(url=cluster.url, mode="cluster", topology_interval=0.5, op_timeout=0.5)


def cause(change: StateChange) -> BaseException | None:
    return None if change.error is None else change.error.__cause__


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_clusterdown_during_a_failover_is_served_from_memory_without_stale_reads(
    cluster: RedisClusterServer, loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    cache = ready_cache(kind, settings(cluster), loop)
    changes: list[StateChange] = []
    cache.on("state", changes.append)
    keys = [f"k{i}" for i in range(60)]  # on every shard
    try:
        assert cache.set_many({key: -1 for key in keys})  # the old values, in Redis
        victim = next(p for p in cluster.primary_ports if cluster.replicas_of(p))
        healthy = {f"127.0.0.1:{p}" for p in cluster.primary_ports if p != victim}
        settled = threading.Event()

        def settle() -> None:
            time.sleep(NODE_TIMEOUT_MS / 1000)  # (before the nodes even noticed: "ok")
            cluster.wait_settled()
            settled.set()

        cluster.crash(victim)
        waiter = threading.Thread(target=settle, daemon=True)
        waiter.start()
        written: dict[str, int] = {}
        refused: list[tuple[str, int]] = []
        misses = 0
        n = 0
        deadline = time.monotonic() + 30
        # Until the cluster is whole again and the cache READY, then a little longer.
        while not (settled.is_set() and cache.state is State.READY):
            assert time.monotonic() < deadline, f"not recovered: {cache.health()}"
            n += 1
            key = keys[n % len(keys)]
            if not cache.set(key, n):
                refused.append((key, n))
            written[key] = n
            got = cache.get(key)
            if got is None:
                misses += 1
            else:
                assert got == n, (key, got, n)  # never an older value
            time.sleep(0.002)
        waiter.join(30)
        assert refused == []  # every set was served: by Redis, or by a shard's fallback
        for key in keys:  # after recovery: the last write, or a miss, never an older value
            assert cache.get(key) in (written.get(key, -1), None), key
    finally:
        cache.close()

    opened = [c for c in changes if c.current is not State.CLOSED]
    down = [c for c in opened if c.current is State.DEGRADED and c.shard in healthy]
    assert down, "no healthy shard met CLUSTERDOWN"
    assert any(isinstance(cause(c), ClusterDownError) for c in down)
    for shard in {c.shard for c in down}:  # each closed its breaker again once the cluster
        assert [c.current for c in opened if c.shard == shard][-2:] == [  # was ok
            State.DEGRADED,
            State.READY,
        ]
    recoveries = sum(c.current is State.READY for c in opened)
    # A get right after its set misses only when the shard recovered in between (its fallback
    # emptied), or when the shard that left handed its keys over: not once per call.
    assert misses <= recoveries + 2, (misses, recoveries)


class TryAgain(RedisStore):
    """A node answering TRYAGAIN to every GET and SET, as one may mid slot migration (Redis
    7.0 only answers it to multi-key commands, which the router splits; Valkey's atomic slot
    migration answers it more widely): the router's own logic, on real nodes otherwise."""

    busy = False

    def get(self, key: bytes) -> bytes | None:
        if self.busy:
            raise RedirectError("TRYAGAIN", -1, "")
        return super().get(key)

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        if self.busy:
            raise RedirectError("TRYAGAIN", -1, "")
        super().set(key, value, ttl_ms)


def test_tryagain_beyond_a_short_retry_opens_that_shard_s_breaker(
    cluster: RedisClusterServer, loop: asyncio.AbstractEventLoop
) -> None:
    def prepare(store: Any) -> None:
        made = store._make_node

        def make(host: str, port: int) -> RedisStore:
            node = made(host, port)
            node.__class__ = TryAgain
            return node  # type: ignore[no-any-return]

        store._make_node = make

    cache = ready_cache("sync", settings(cluster), loop, prepare)
    try:
        assert cache.set("k", "before")
        owner = cache._adapter.owner_of(b"kvcache:k")
        node = cache._store.node(owner)
        node.busy = True
        assert cache.set("k", "during") is True  # served by that shard's fallback
        assert cache.get("k") == "during"
        assert cache.health().shards[owner].state is State.DEGRADED
        assert cache.health().shards[owner].journal_keys == 1
        node.busy = False
        deadline = time.monotonic() + 10
        while cache.state is not State.READY:  # its probe passes, the journal is applied
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert cache.get("k") is None  # deleted on recovery: never "before"
        with redis.Redis(port=int(owner.rsplit(":", 1)[1])) as admin:
            assert admin.get(b"kvcache:k") is None
    finally:
        cache.close()


# A least-privilege cluster user: the cache's commands, PING, and CLUSTER SLOTS (which the
# router needs and the README says to grant), but not CLUSTER INFO.
APP_RULES = ["on", ">s3cret", "~*", "+@read", "+@write", "+@keyspace", "+@transaction", "+ping"]


@pytest.fixture(scope="module")
def one_node_cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=1) as made:
        yield made


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("cluster_info", [False, True], ids=["slots-only", "slots+info"])
def test_a_shard_recovers_for_a_user_allowed_cluster_slots_but_not_cluster_info(
    one_node_cluster: RedisClusterServer,
    loop: asyncio.AbstractEventLoop,
    kind: str,
    cluster_info: bool,
) -> None:
    """The README asked for CLUSTER SLOTS only; a probe sending CLUSTER INFO was refused
    (NOPERM) for ever, and the shard never came back after its first outage: a node that
    answers NOPERM is up, and the probes send PING from then on."""
    port = one_node_cluster.primary_ports[0]
    admin = redis.Redis(port=port)
    user = f"app{kind}{int(cluster_info)}"
    rights = [*APP_RULES, "+cluster|slots", *(["+cluster|info"] if cluster_info else [])]
    admin.acl_setuser(user, reset=True)
    admin.execute_command("ACL", "SETUSER", user, *rights)
    url = f"redis://{user}:s3cret@127.0.0.1:{port}/0"
    settings = KVCacheSettings(
        url=url, mode="cluster", op_timeout=0.25, retry_base=0.05, retry_max=0.3
    )
    cache: Any = ready_cache(kind, settings, loop)
    try:
        assert cache.set("k", 1)
        admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # a blip: calls time out
        deadline = time.monotonic() + 5
        while cache.state is State.READY:
            assert time.monotonic() < deadline, "never tripped"
            cache.set("k", 2)
        time.sleep(1.2)  # the pause is over: Redis serves again
        deadline = time.monotonic() + 10
        while cache.state is not State.READY and time.monotonic() < deadline:
            cache.get("k")
            time.sleep(0.05)
        assert cache.state is State.READY, repr(cache.health())
    finally:
        cache.close()
        admin.close()
