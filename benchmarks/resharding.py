"""Slots moved away from a shard that is down: stale reads and the time to recover.

    python benchmarks/resharding.py [--runs 3] [--readers 8] [--watch 10]

Each run starts a private Redis Cluster (3 primaries) with a ChaosProxy in front of every
node (the cache's address remap), and a ``Cache`` (``mode="cluster"``, default settings
otherwise). The 100 keys ``k…`` whose slots are among 0-119 are written "v1"; then:

1. the proxy of their primary blackholes (the shard goes DEGRADED);
2. all 100 are written "v2" through the cache (acknowledged: fallback and journal);
3. slots 0-119 migrate, with their keys, to another primary (on the servers themselves);
4. 2 s later the proxy comes back up; ``--watch`` seconds of traffic follow.

Throughout, ``--readers`` threads read the 100 keys in a loop. Per run: stale reads (a get
answering "v1" after "v2" was acknowledged; a miss is not stale), the seconds from the proxy's
return to the shard's READY ("never" if not within the watch), the keys still in its journal
at the end, and whether a ``set`` of a key in the slots it kept reaches Redis. The summary is
the median of each figure over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import redis
from redis.crc import key_slot

from kvcache import Cache, State
from kvcache.stores import RedisClusterStore
from kvcache.testing import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer

MOVED_SLOTS = range(120)
KEYS = [k for k in (f"k{i}" for i in range(100_000)) if key_slot(b"kvcache:" + k.encode()) < 120][
    :100
]


def one_run(readers: int, watch: float) -> dict[str, float | str | int | bool]:
    with RedisClusterServer(primaries=3) as cluster:
        proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
        try:
            return _measure(cluster, proxies, readers, watch)
        finally:
            for proxy in proxies.values():
                proxy.stop()


def _measure(
    cluster: RedisClusterServer, proxies: dict[int, ChaosProxy], readers: int, watch: float
) -> dict[str, float | str | int | bool]:
    cache = Cache.from_url(cluster.url, mode="cluster")
    store = cache.store
    assert isinstance(store, RedisClusterStore)
    store.remap = lambda where: (where[0], proxies[where[1]].port)
    assert cache.connect(timeout=10) is State.READY
    dead = cluster.slot_map()[0]
    other = next(port for port in cluster.primary_ports if port != dead)
    kept = next(  # a key of the dead primary outside the slots that move
        k
        for k in (f"x{i}" for i in range(100_000))
        if cluster.owner(b"kvcache:" + k.encode()) == dead
        and key_slot(b"kvcache:" + k.encode()) >= 120
    )
    cache.set_many(dict.fromkeys(KEYS, "v1"))
    acknowledged = threading.Event()
    stop = threading.Event()
    stale = [0] * readers

    def read(n: int) -> None:
        while not stop.is_set():
            for key in KEYS:
                seen_v2 = acknowledged.is_set()
                if cache.get(key) == "v1" and seen_v2:
                    stale[n] += 1

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(readers)]
    for thread in threads:
        thread.start()
    proxies[dead].blackhole()
    for key in KEYS:
        assert cache.set(key, "v2") is True
    acknowledged.set()
    cluster.migrate_slots(MOVED_SLOTS, to=other)
    time.sleep(2.0)
    proxies[dead].up()
    back = time.monotonic()
    shard = f"127.0.0.1:{proxies[dead].port}"

    def shard_health() -> object:
        return cache.health().shards.get(shard)  # type: ignore[union-attr]

    recovered: float | str = "never"
    deadline = back + watch
    while time.monotonic() < deadline:
        health = shard_health()
        if recovered == "never" and getattr(health, "state", None) is State.READY:
            recovered = time.monotonic() - back
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(5)
    health = shard_health()
    cache.set(kept, "v3")
    with redis.Redis(port=dead) as node:
        reached = bool(node.exists(b"kvcache:" + kept.encode()))
    cache.close()
    return {
        "stale reads": sum(stale),
        "recovered after s": recovered if isinstance(recovered, str) else round(recovered, 2),
        "journal keys left": getattr(health, "journal_keys", -1),
        "set in kept slots reaches Redis": reached,
    }


def median(values: list[float | str | int | bool], numeric: Callable[[object], bool]) -> object:
    numbers = [v for v in values if numeric(v)]
    if len(numbers) < len(values):
        return f"{len(values) - len(numbers)}/{len(values)} {values[0]!s}"
    return statistics.median(numbers)  # type: ignore[type-var]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--watch", type=float, default=10.0)
    args = parser.parse_args()
    runs = []
    for n in range(args.runs):
        result = one_run(args.readers, args.watch)
        print(f"run {n + 1}: {result}", flush=True)
        runs.append(result)
    print(f"median of {args.runs} runs ({args.readers} readers, {len(KEYS)} keys):")
    for figure in runs[0]:
        values = [run[figure] for run in runs]
        if isinstance(values[0], bool):
            print(f"  {figure}: {sum(bool(v) for v in values)}/{len(values)}")
        else:
            print(f"  {figure}: {median(values, lambda v: not isinstance(v, str))}")


if __name__ == "__main__":
    main()
