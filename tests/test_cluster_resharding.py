"""Slots that move while a shard is cut off: every primary reached through a ChaosProxy, one
of them blackholed, keys written during the outage (acknowledged: into that shard's fallback
and journal), then slots migrated away from the degraded shard, to it, or both, then the
proxy restored. No read may ever answer a value older than one the cache acknowledged, and
the shard must recover, with Cache and with AsyncCache."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from kvcache import State
from kvcache.testing import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer

pytestmark = pytest.mark.redis
PREFIX = b"kvcache:"
KEYS_PER_TAG = 10
CHECK_GAP = 0.5  # sharding.MIN_CHECK_GAP: the most often a topology check runs


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    """Three primaries; each test leaves slots where it moved them (owners are looked up)."""
    with RedisClusterServer(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def proxies(cluster: RedisClusterServer) -> Iterator[dict[int, ChaosProxy]]:
    """A ChaosProxy in front of every primary, by port (what the cache's remap dials)."""
    made = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
    yield made
    for proxy in made.values():
        proxy.stop()


def tags_on(cluster: RedisClusterServer, port: int, count: int, taken: set[str]) -> list[str]:
    """``count`` hash tags whose slots ``port`` serves (keys ``{tag}:n`` share a slot)."""
    owners = cluster.slot_map()
    found: list[str] = []
    n = 0
    while len(found) < count:
        tag = f"t{n}"
        n += 1
        if tag not in taken and owners[cluster.keyslot(tag)] == port:
            found.append(tag)
            taken.add(tag)
    return found


def keys_of(tags: list[str]) -> list[str]:
    return [f"{{{tag}}}:{i}" for tag in tags for i in range(KEYS_PER_TAG)]


def wait_shard_ready(cache: Any, name: str, timeout: float = 15.0) -> None:
    """Until the shard of primary ``name`` is READY (its probe passed, its journal applied)."""
    deadline = time.monotonic() + timeout
    while cache.health().shards[name].state is not State.READY:
        assert time.monotonic() < deadline, cache.health().shards[name]
        time.sleep(0.05)


def read_never_older(cache: Any, keys: list[str], acknowledged: dict[str, str], seconds: float):
    """Read every key for ``seconds``: each answer is the acknowledged value or a miss."""
    deadline = time.monotonic() + seconds
    reads = 0
    while True:
        for key in keys:
            value = cache.get(key)
            assert value in (acknowledged[key], None), (key, value, acknowledged[key])
            reads += 1
        if time.monotonic() >= deadline:
            return reads


@pytest.mark.parametrize("moves", ["away", "to", "both"])
def test_slots_moved_while_a_shard_is_down_serve_nothing_stale_and_it_recovers(
    cluster: RedisClusterServer,
    proxies: dict[int, ChaosProxy],
    make_cache: Callable[..., Any],
    moves: str,
) -> None:
    cache = make_cache(cluster.url, remap=lambda port: proxies[port].port, mode="cluster")
    dead, other = cluster.primary_ports[:2]
    taken: set[str] = set()
    away_tags = tags_on(cluster, dead, 4, taken) if moves != "to" else []
    to_tags = tags_on(cluster, other, 4, taken) if moves != "away" else []
    (stay_tag,) = tags_on(cluster, dead, 1, taken)  # a slot that stays on the dead node
    away, to, stay = keys_of(away_tags), keys_of(to_tags), keys_of([stay_tag])
    everything = away + to + stay
    cache.set_many(dict.fromkeys(everything, "v1"))
    acknowledged = dict.fromkeys(everything, "v1")

    proxies[dead].blackhole()
    for key in away + stay:  # acknowledged while the node is cut off: fallback, journal
        assert cache.set(key, "v2") is True
        acknowledged[key] = "v2"
    assert cache.health().shards[f"127.0.0.1:{proxies[dead].port}"].journal_keys

    # Resharding on the servers themselves (the proxies only cut this process off).
    slots = {cluster.keyslot(tag) for tag in away_tags}
    cluster.migrate_slots(sorted(slots), to=other)
    cluster.migrate_slots(sorted({cluster.keyslot(tag) for tag in to_tags}), to=dead)
    for key in to:  # now the degraded shard's keys: fallback and journal again
        assert cache.set(key, "v2") is True
        acknowledged[key] = "v2"

    # The topology check sees the new map meanwhile (a degraded shard brings it forward).
    assert read_never_older(cache, everything, acknowledged, 3.0)

    proxies[dead].up()
    deadline = time.monotonic() + 15
    while cache.state is not State.READY and time.monotonic() < deadline:
        read_never_older(cache, everything, acknowledged, 0.05)
    health = cache.health()
    assert cache.state is State.READY, health
    assert all(shard.journal_keys == 0 for shard in health.shards.values()), health
    read_never_older(cache, everything, acknowledged, 0.5)

    # The recovered shard takes writes to Redis again, in the slots it kept...
    assert cache.set(stay[0], "v3") is True
    with redis.Redis(port=dead) as node:
        assert node.exists(PREFIX + stay[0].encode())
    # ...and in the slots it took over.
    for key in to[:1]:
        assert cache.set(key, "v3") is True
        with redis.Redis(port=dead) as node:
            assert node.exists(PREFIX + key.encode())


def test_a_moved_during_recovery_is_followed_not_counted_as_a_failed_probe(
    cluster: RedisClusterServer, proxies: dict[int, ChaosProxy], make_cache: Callable[..., Any]
) -> None:
    """The slots move while the shard is away and it comes back before any topology check
    saw it (no call is made meanwhile, and calls are what bring checks): its probe meets
    MOVED deleting its journal on its own node, follows it, and the shard recovers."""
    cache = make_cache(cluster.url, remap=lambda port: proxies[port].port, mode="cluster")
    dead, other = cluster.primary_ports[:2]
    taken: set[str] = set()
    moving = keys_of(tags_on(cluster, dead, 3, taken))
    cache.set_many(dict.fromkeys(moving, "v1"))
    proxies[dead].blackhole()
    for key in moving:
        assert cache.set(key, "v2") is True
    name = f"127.0.0.1:{proxies[dead].port}"
    assert cache.health().shards[name].journal_keys == len(moving)
    time.sleep(2 * CHECK_GAP)  # the checks those calls brought have run (unchanged map)

    cluster.migrate_slots(sorted({cluster.keyslot(key) for key in moving}), to=other)
    proxies[dead].up()
    wait_shard_ready(cache, name)
    assert cache.health().shards[name].journal_keys == 0
    with redis.Redis(port=other) as node:  # deleted where the keys live now
        assert not any(node.exists(PREFIX + key.encode()) for key in moving)
    for key in moving:
        assert cache.get(key) is None  # never v1, older than the acknowledged v2


def test_an_overflowed_journal_recovering_before_any_check_clears_where_its_slots_went(
    cluster: RedisClusterServer, proxies: dict[int, ChaosProxy], make_cache: Callable[..., Any]
) -> None:
    """As above, with the journal overflowed (the namespace to clear): the recovery clears
    it where the shard's slots went too, not only on its own node."""
    cache = make_cache(
        cluster.url, remap=lambda port: proxies[port].port, mode="cluster", journal_size=5
    )
    dead, other = cluster.primary_ports[:2]
    moving = keys_of(tags_on(cluster, dead, 3, set()))
    cache.set_many(dict.fromkeys(moving, "v1"))
    proxies[dead].blackhole()
    for key in moving:
        assert cache.set(key, "v2") is True
    name = f"127.0.0.1:{proxies[dead].port}"
    assert cache.health().shards[name].journal_overflowed
    time.sleep(2 * CHECK_GAP)

    cluster.migrate_slots(sorted({cluster.keyslot(key) for key in moving}), to=other)
    proxies[dead].up()
    wait_shard_ready(cache, name)
    time.sleep(3 * CHECK_GAP)
    cache.get("anything")  # brings a topology check: the new map is installed
    time.sleep(3 * CHECK_GAP)
    with redis.Redis(port=other) as node:
        left = [key for key in moving if node.exists(PREFIX + key.encode())]
    stale = [key for key in moving if cache.get(key) == "v1"]
    assert not left, (len(left), len(moving))
    assert not stale, (len(stale), len(moving))


def _settle_checks(cache: Any) -> None:
    """Let the topology checks that calls bring run (and see the servers' map)."""
    for _ in range(6):
        cache.get("{nothing}:x")
        time.sleep(CHECK_GAP)


def test_a_slot_that_comes_back_to_a_degraded_shard_does_not_serve_its_outage_fallback(
    cluster: RedisClusterServer, proxies: dict[int, ChaosProxy], make_cache: Callable[..., Any]
) -> None:
    """Its fallback's copy (v2) went when the slot moved away; a write (v3) reached the new
    owner meanwhile; the slot coming back must not bring v2 back."""
    cache = make_cache(cluster.url, remap=lambda port: proxies[port].port, mode="cluster")
    dead, other = cluster.primary_ports[:2]
    (km,) = keys_of(tags_on(cluster, dead, 1, set()))[:1]
    slot = cluster.keyslot(km)
    cache.set(km, "v1")
    proxies[dead].blackhole()
    assert cache.set(km, "v2") is True  # dead's fallback and journal
    cluster.migrate_slots([slot], to=other)
    _settle_checks(cache)
    owner = cache._adapter.owner_of(PREFIX + km.encode())
    assert owner == f"127.0.0.1:{proxies[other].port}", owner
    assert cache.set(km, "v3") is True  # to Redis, on other
    assert cache.get(km) == "v3"
    cluster.migrate_slots([slot], to=dead)  # the slot comes back (or the map flips back)
    _settle_checks(cache)
    value = cache.get(km)
    assert value in ("v3", None), value  # v2 is older than the acknowledged v3


def test_a_recovery_meeting_many_moved_slots_fetches_the_map_instead_of_failing(
    cluster: RedisClusterServer, proxies: dict[int, ChaosProxy], make_cache: Callable[..., Any]
) -> None:
    """12 slots moved, one MOVED per UNLINK: patching one slot per MOVED ran out of
    redirects ("still redirected"); the recovery fetches the whole map instead."""
    cache = make_cache(cluster.url, remap=lambda port: proxies[port].port, mode="cluster")
    dead, other = cluster.primary_ports[:2]
    moving = keys_of(tags_on(cluster, dead, 12, set()))
    slots = sorted({cluster.keyslot(key) for key in moving})
    cache.set_many(dict.fromkeys(moving, "v1"))
    proxies[dead].blackhole()
    for key in moving:
        assert cache.set(key, "v2") is True
    name = f"127.0.0.1:{proxies[dead].port}"
    time.sleep(2 * CHECK_GAP)
    cluster.migrate_slots(slots, to=other)
    proxies[dead].up()
    errors: list[str | None] = []
    started = time.monotonic()
    while (shard := cache.health().shards[name]).state is not State.READY:
        assert time.monotonic() < started + 15, shard
        if shard.last_error not in errors:
            errors.append(shard.last_error)
        time.sleep(0.01)
    took = time.monotonic() - started
    assert "StoreError" not in errors, (errors, took)  # "still redirected" on main
