"""Races between the topology check and the calls or the recovery of a shard that is away,
forced one interleaving at a time: the sync ``Cache``'s operations (the pure core both shells
share) are driven step by step over a real 3-primary cluster, a ChaosProxy per node, and a
topology check (or a migration) is run to its end at the chosen step."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from types import GeneratorType
from typing import Any

import pytest

from conftest import CLUSTER_INTERVAL, ready_cache
from kvcache import Cache, State
from kvcache._cluster.topology import Topology
from kvcache._core.drivers import run
from kvcache.errors import KVCacheError
from kvcache.settings import KVCacheSettings
from kvcache.testing import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer
from test_cluster_resharding import CHECK_GAP, PREFIX, keys_of, tags_on

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def sync_cache(loop: asyncio.AbstractEventLoop) -> Iterator[Callable[..., Cache]]:
    made: list[Cache] = []

    def make(url: str, remap: Callable[[int], int], **options: Any) -> Cache:
        def prepare(store: Any) -> None:
            store.remap = lambda where: (where[0], remap(where[1]))

        settings = KVCacheSettings(
            url=url, mode="cluster", topology_interval=CLUSTER_INTERVAL, **options
        )
        made.append(ready_cache("sync", settings, loop, prepare))
        return made[-1]

    yield make
    for cache in made:
        cache.close()


def run_stepwise(op: Any, before: Callable[[tuple[Any, ...]], None]) -> Any:
    """``run``, calling ``before(call)`` before each call ``op`` sends to a store: one
    interleaving of an operation with whatever ``before`` does, forced."""
    try:
        call = next(op)
        while True:
            before(call)
            try:
                target, asked = call
                result = getattr(target, asked.method)(*asked.args)
                if type(result) is GeneratorType:
                    result = run(result)
            except Exception as exc:  # KVCacheError, as run does
                call = op.throw(exc)
            else:
                call = op.send(result)
    except StopIteration as done:
        return done.value


def run_with_check_in_flight(
    op: Any, action: Callable[[], Any], stores: set[int], before: int = 1
) -> Any:
    """``run``, except that a topology check runs to its end just before the first call
    sent to a node store: what happens when the call's first round trip yields (asyncio) or
    is preempted (threads) while a background check installs a new map."""
    seen = 0

    def count(call: tuple[Any, ...]) -> None:
        nonlocal seen
        if id(call[0]) in stores:
            seen += 1
            if seen == before:
                action()

    return run_stepwise(op, count)


def idle_prober(shard: Any) -> None:
    """Until ``shard``'s prober idles: no probe in flight (``next_probe_at`` is None while
    one is), none due; the test drives the probe."""
    # An hour away, not infinity: the prober waits until then, and a wait of inf seconds
    # raises OverflowError in its thread (CI, once).
    later = time.monotonic() + 3600
    deadline = time.monotonic() + 10
    while shard.machine.next_probe_at != later:
        assert time.monotonic() < deadline
        if shard.machine.next_probe_at is not None:
            shard.machine.next_probe_at = later
        time.sleep(0.02)


def claimed_probe(shard: Any, proxy: ChaosProxy) -> Any:
    """``shard``'s next probe (its prober idle), claimed so that the prober thread cannot
    start one, then ``proxy`` let through: a generator for ``run_stepwise``."""
    shard.machine.next_probe_at = 0.0
    probe = shard.probe()
    first = next(probe)  # claimed here
    proxy.up()

    def primed() -> Any:
        call = first
        while True:
            try:
                result = yield call
            except Exception as exc:
                call = probe.throw(exc)
            else:
                try:
                    call = probe.send(result)
                except StopIteration as done:
                    return done.value

    return primed()


def _setup(cluster: RedisClusterServer, sync_cache: Callable[..., Cache]) -> Any:
    proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
    cache = sync_cache(cluster.url, remap=lambda port: proxies[port].port)
    # dead: the primary whose shard comes last in sorted order (the order clear() walks)
    by_name = sorted(cluster.primary_ports, key=lambda p: f"127.0.0.1:{proxies[p].port}")
    dead, other = by_name[-1], by_name[0]
    return cache, proxies, dead, other


@pytest.mark.parametrize("call", ["set_many", "clear"])
def test_a_write_routed_by_the_old_map_to_a_shard_away_is_handed_over(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache], call: str
) -> None:
    cache, proxies, dead, other = _setup(cluster, sync_cache)
    try:
        sharded = cache._adapter
        taken: set[str] = set()
        (kx,) = keys_of(tags_on(cluster, other, 1, taken))[:1]
        (km,) = keys_of(tags_on(cluster, dead, 1, taken))[:1]
        (ks,) = keys_of(tags_on(cluster, dead, 1, taken))[:1]
        cache.set_many({kx: "v1", km: "v1", ks: "v1"})
        proxies[dead].blackhole()
        assert cache.set(ks, "v2") is True  # trips the dead shard
        time.sleep(3 * CHECK_GAP)  # checks brought meanwhile have run
        sharded.schedule.next_at = float("inf")  # no check but ours

        def migrate() -> None:
            cluster.migrate_slots([cluster.keyslot(km)], to=other)

        stores = {id(sharded.nodes.node(n)) for n in sharded.topology.primaries}
        if call == "set_many":
            migrate()
            op = cache._ops.set_many({kx: "v2", km: "v2"}, None)
            assert run_with_check_in_flight(op, lambda: run(sharded.refresh()), stores) is True
            expected: tuple[Any, ...] = ("v2", None)
        else:
            op = cache._ops.clear()

            # other's clear lands, then the slot moves and a check installs the new map,
            # then the old map's clear reaches the (degraded) dead shard
            def both() -> None:
                migrate()
                run(sharded.refresh())

            run_with_check_in_flight(op, both, stores, before=2)
            expected = (None,)
        full = PREFIX + km.encode()
        assert sharded.topology.owner(full) == f"127.0.0.1:{proxies[other].port}"
        before = cache.get(km)
        proxies[dead].up()
        deadline = time.monotonic() + 15
        while cache.state is not State.READY:
            assert time.monotonic() < deadline, cache.health()
            time.sleep(0.05)
        after = cache.get(km)
        assert (before in expected, after in expected) == (True, True), (before, after)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_a_recovery_meeting_moved_deletes_at_the_new_owner_before_reads_go_there(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache]
) -> None:
    """The first version patched the map on MOVED, then deleted at the new owner: a read in
    that round trip reached the new owner, which still held v1."""
    proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
    try:
        cache = sync_cache(cluster.url, remap=lambda port: proxies[port].port)
        dead, other = cluster.primary_ports[:2]
        (km,) = keys_of(tags_on(cluster, dead, 1, set()))[:1]
        cache.set(km, "v1")
        proxies[dead].blackhole()
        assert cache.set(km, "v2") is True
        time.sleep(3 * CHECK_GAP)
        sharded = cache._adapter
        sharded.schedule.next_at = float("inf")  # no check sees the move: recovery meets MOVED
        name = f"127.0.0.1:{proxies[dead].port}"
        shard = sharded.shards[name]
        idle_prober(shard)
        cluster.migrate_slots([cluster.keyslot(km)], to=other)
        receiver = sharded.nodes.node(f"127.0.0.1:{proxies[other].port}")
        seen: list[Any] = []

        def read_before_the_receivers_delete() -> None:
            seen.append(cache.get(km))

        probe = claimed_probe(shard, proxies[dead])
        run_with_check_in_flight(probe, read_before_the_receivers_delete, {id(receiver)})
        assert shard.machine.state is State.READY
        assert seen, "no read came between"
        assert seen[0] in ("v2", None), seen
    finally:
        for proxy in proxies.values():
            proxy.stop()


@pytest.mark.parametrize("receiver", ["unowned", "new-unreachable", "degraded-throwing"])
def test_a_new_owner_that_cannot_take_a_hand_over_does_not_hold_the_map_off(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache], receiver: str
) -> None:
    proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
    try:
        options = {"throw_on_errors": True} if receiver == "degraded-throwing" else {}
        cache = sync_cache(cluster.url, remap=lambda port: proxies[port].port, **options)
        dead, other, third = cluster.primary_ports
        taken: set[str] = set()
        (km,) = keys_of(tags_on(cluster, dead, 1, taken))[:1]
        (ko,) = keys_of(tags_on(cluster, other, 1, taken))[:1]
        (kt,) = keys_of(tags_on(cluster, third, 1, taken))[:1]
        proxies[dead].blackhole()
        with contextlib.suppress(KVCacheError):  # (with throw_on_errors it raises)
            cache.set(km, "v2")  # journaled at dead
        if receiver == "degraded-throwing":
            proxies[other].blackhole()
            with contextlib.suppress(KVCacheError):
                cache.set(ko, "v2")
        time.sleep(3 * CHECK_GAP)
        sharded = cache._adapter
        sharded.schedule.next_at = float("inf")
        old = sharded.topology
        owners = list(old.owners)
        to = {
            "unowned": "",
            "new-unreachable": "127.0.0.1:1",
            "degraded-throwing": f"127.0.0.1:{proxies[other].port}",
        }[receiver]
        owners[cluster.keyslot(km)] = to
        # an unrelated move elsewhere in the same map: third's slot goes to other
        owners[cluster.keyslot(kt)] = f"127.0.0.1:{proxies[other].port}"
        new = Topology(tuple(owners))
        for _ in range(3):  # three checks in a row
            with contextlib.suppress(KVCacheError):  # a check's failure: the next one tries
                run(sharded._install(new))
        assert sharded.topology == new, "the map was never installed"
    finally:
        for proxy in proxies.values():
            proxy.stop()


def hold_checks(sharded: Any) -> None:
    """No topology check but the test's from now on: wait for one in flight to end, then
    keep the schedule's claim (a check already running when ``next_at`` is moved would
    reset it when done)."""
    schedule = sharded.schedule
    deadline = time.monotonic() + 10
    while True:
        with schedule._lock:
            if not schedule.in_flight:
                schedule.in_flight, schedule.next_at = True, float("inf")
                return
        assert time.monotonic() < deadline, "a topology check never ended"
        time.sleep(0.02)


def _during_a_hand_over(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache], migrate: bool
) -> tuple[Cache, dict[int, ChaosProxy], int, str, str, Topology, Topology]:
    """A cache whose dead shard journaled ``ka``, and a map that gives their slot to
    ``other`` (moved there in the cluster too if ``migrate``): (cache, proxies, other,
    ka, kb, the map in use, the new one)."""
    cache, proxies, dead, other = _setup(cluster, sync_cache)
    ka, kb = keys_of(tags_on(cluster, dead, 1, set()))[:2]  # one slot
    cache.set_many({ka: "v1", kb: "v1"})
    proxies[dead].blackhole()
    assert cache.set(ka, "v2") is True  # trips the dead shard; journaled
    hold_checks(cache._adapter)
    if migrate:
        cluster.migrate_slots([cluster.keyslot(ka)], to=other)  # v1 of both now at other
    old = cache._adapter.topology
    owners = list(old.owners)
    owners[cluster.keyslot(ka)] = f"127.0.0.1:{proxies[other].port}"
    return cache, proxies, other, ka, kb, old, Topology(tuple(owners))


def test_a_write_served_offline_during_a_hand_over_is_handed_over_before_reads_go_there(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache]
) -> None:
    """The hand-over reads the journal, deletes its keys at their new owner (a round trip),
    then installs the map. A write served offline in that round trip was journaled after
    the read: the check's second pass, after the install, deleted it, but a read in between
    reached the new owner's older value (CI, under scale-in and failover traffic: ('k66',
    set 2466, read 2316)). Now such a write hands its keys over by that map itself."""
    cache, proxies, other, _, kb, old, new = _during_a_hand_over(cluster, sync_cache, True)
    try:
        sharded = cache._adapter
        receiver = sharded.nodes.node(f"127.0.0.1:{proxies[other].port}")
        seen: list[Any] = []

        def interleave(call: tuple[Any, ...]) -> None:
            if call[0] is receiver and call[1].method == "delete_many" and not seen:
                assert cache.set(kb, "v2") is True  # the hand-over's round trip: offline
                seen.append("written")
            elif seen == ["written"] and sharded.topology is not old:
                # installed, before the check's second pass: what a read there finds
                with cluster.nodes[other].client() as admin:
                    seen.append(admin.get(PREFIX + kb.encode()))
                seen.append(cache.get(kb))

        assert run_stepwise(sharded._install(new), interleave) is True
        assert seen[:1] == ["written"], "the hand-over sent nothing to the new owner"
        assert len(seen) == 3, "no call came after the install to read between"
        assert seen[1] is None, "the new owner still held the value from before the write"
        assert seen[2] in ("v2", None), seen
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_a_write_that_cannot_hand_over_by_a_map_being_installed_is_served_all_the_same(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache]
) -> None:
    """A map the cluster does not agree with (its new owner answers MOVED): the write was
    served (offline), so it answers True, and that map is not installed (the first version
    re-ran the write on each MOVED and answered False after 5)."""
    cache, proxies, other, _, kb, old, new = _during_a_hand_over(cluster, sync_cache, False)
    try:
        sharded = cache._adapter
        receiver = sharded.nodes.node(f"127.0.0.1:{proxies[other].port}")
        answers: list[bool] = []

        def interleave(call: tuple[Any, ...]) -> None:
            if call[0] is receiver and call[1].method == "delete_many" and not answers:
                answers.append(cache.set(kb, "v2"))

        with pytest.raises(KVCacheError):  # the hand-over's own delete meets MOVED too
            run_stepwise(sharded._install(new), interleave)
        assert answers == [True]
        assert sharded.topology is old
        assert cache.get(kb) == "v2"  # the dead shard's fallback still serves it
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_keys_a_recovery_is_applying_are_handed_over_by_a_map_installed_meanwhile(
    cluster: RedisClusterServer, sync_cache: Callable[..., Cache]
) -> None:
    """A shard's recovery takes its journal and deletes by the map of that moment; a new
    map installed meanwhile handed over a journal that looked empty, so the new owner kept
    its older value, read by the new map until the shard's next probe (found in review)."""
    cache, proxies, other, ka, _, old, new = _during_a_hand_over(cluster, sync_cache, True)
    try:
        sharded = cache._adapter
        name = old.owner(PREFIX + ka.encode())  # the dead shard's
        dead = next(p for p, proxy in proxies.items() if f"127.0.0.1:{proxy.port}" == name)
        shard = sharded.shards[name]
        idle_prober(shard)
        installed: list[bool] = []

        def install_before_the_recovery_deletes(call: tuple[Any, ...]) -> None:
            if call[0] is shard.primary and call[1].method == "delete_many" and not installed:
                installed.append(run(sharded._install(new)))

        run_stepwise(claimed_probe(shard, proxies[dead]), install_before_the_recovery_deletes)
        assert installed == [True]
        with cluster.nodes[other].client() as admin:
            assert admin.get(PREFIX + ka.encode()) is None, "the value from before the outage"
    finally:
        for proxy in proxies.values():
            proxy.stop()
