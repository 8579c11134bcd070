"""Cluster changes under traffic: kvcache vs redis-py's RedisCluster, side by side.

    python benchmarks/cluster.py [--runs 3] [--interval 5] [--watch 15] [--timeline]

Each run starts a private Redis Cluster (3 primaries, 1 replica each) and two contenders,
each hammering it from its own thread with set-then-get on 200 keys:

- kvcache: ``Cache`` with ``mode="cluster"`` and ``topology_interval=--interval``, otherwise
  default settings, ``connect()``ed;
- redis-py: ``RedisCluster.from_url(seed, socket_timeout=1, socket_connect_timeout=1)``, its
  default retry policy otherwise (what users get).

Every node a contender dials (except the seed, dialled directly by both) goes through a
ChaosProxy of its own, given to the contender as its address remap (``address_remap`` for
RedisCluster, ``cache.store.remap`` for kvcache), so each contender's connection attempts to
each node are counted apart.

Before measuring, a fourth primary joins and takes 2000 slots (with their keys), and both
contenders get to know it. Then, for both at once:

- steady: 3 s of traffic, nothing changes;
- scale-in: the fourth primary hands its slots back, every node forgets it and it stops
  (``RedisClusterServer.remove_node``); then ``--watch`` seconds of traffic;
- failover: a primary that is not the seed is killed and its replica takes over
  (``RedisClusterServer.failover``); then ``--watch`` seconds of traffic.

Per phase: median ops/s (calls completed per second), caller-visible errors (exceptions raised
by set or get) in total and in the worst second, stale reads (a get answering an older value
than the set just before it; a miss is not stale), and "last dial": seconds from the end of
the change (node stopped, or replica promoted) to the last connection attempt to the node that
left, sampled every 20 ms ("0" when none came after; "still" when one came in the last 2 s of
the watch). The summary is the median of every figure over the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version

import redis

from kvcache import Cache, State
from kvcache.stores import RedisClusterStore
from kvcache.testing import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer

KEYS = [f"k{i}" for i in range(200)]
STEADY = 3.0  # seconds of unchanged traffic before the first change
SAMPLE = 0.02  # seconds between samples of the proxies' connection counters
STILL = 2.0  # a dial this close to the end of the watch: still dialling
PHASES = ("steady", "scale-in", "failover")


class Proxies:
    """One counting ChaosProxy per node port, made on first dial (a remap runs in the
    clients' threads)."""

    def __init__(self) -> None:
        self._by_port: dict[int, ChaosProxy] = {}
        self._lock = threading.Lock()

    def remap(self, where: tuple[str, int]) -> tuple[str, int]:
        host, port = where
        with self._lock:
            proxy = self._by_port.get(port)
            if proxy is None:
                proxy = self._by_port[port] = ChaosProxy(host, port).start()
        return proxy.host, proxy.port

    def accepted(self, port: int) -> int:
        with self._lock:
            proxy = self._by_port.get(port)
        return 0 if proxy is None else proxy.accepted

    def stop(self) -> None:
        with self._lock:
            for proxy in self._by_port.values():
                proxy.stop()


@dataclass
class Contender:
    name: str
    set: Callable[[str, int], object]
    get: Callable[[str], int | None]
    close: Callable[[], None]
    proxies: Proxies
    fallback_reads: Callable[[], int] | None = None  # reads served from memory so far
    ops: Counter[int] = field(default_factory=Counter)  # second of the run -> calls done
    errors: Counter[int] = field(default_factory=Counter)  # second -> calls that raised
    kinds: Counter[str] = field(default_factory=Counter)  # exception type -> count
    stale: Counter[int] = field(default_factory=Counter)  # second -> stale reads

    def call(self, second: int, action: Callable[..., object], *args: object) -> object:
        try:
            result = action(*args)
        except Exception as exc:  # counting what reaches the caller is the point
            self.errors[second] += 1
            self.kinds[type(exc).__name__] += 1
            return None
        self.ops[second] += 1
        return result

    def drive(self, started: float, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = KEYS[n % len(KEYS)]
            second = int(time.monotonic() - started)
            self.call(second, self.set, key, n)
            got = self.call(second, self.get, key)
            if got is not None and got != n:
                self.stale[second] += 1


def kvcache_contender(seed: str, interval: float) -> Contender:
    proxies = Proxies()
    cache = Cache.from_url(seed, mode="cluster", topology_interval=interval, namespace="b")
    assert isinstance(cache.store, RedisClusterStore)
    cache.store.remap = proxies.remap
    if cache.connect(timeout=10) is not State.READY:
        raise SystemExit(f"kvcache did not connect: {cache.health()}")

    def fallback_reads() -> int:
        return cache.stats.fallback_hits + cache.stats.fallback_misses

    return Contender("kvcache", cache.set, cache.get, cache.close, proxies, fallback_reads)


def redis_contender(seed: str) -> Contender:
    proxies = Proxies()
    client = redis.RedisCluster.from_url(
        seed, address_remap=proxies.remap, socket_timeout=1.0, socket_connect_timeout=1.0
    )

    def get(key: str) -> int | None:
        value = client.get(f"r:{key}")
        return None if value is None else int(value)

    return Contender(
        "redis-py", lambda key, n: client.set(f"r:{key}", n), get, client.close, proxies
    )


class DialLog:
    """When each contender last dialled each node: samples the proxies' counters."""

    def __init__(self, contenders: list[Contender]) -> None:
        self._contenders = contenders
        self._seen: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], float] = {}
        self._ports: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, port: int) -> None:
        self._ports.add(port)

    def count(self, contender: Contender, port: int) -> int:
        return self._seen.get((contender.name, port), 0)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE):
            for contender in self._contenders:
                for port in list(self._ports):
                    count = contender.proxies.accepted(port)
                    if count != self._seen.get((contender.name, port), 0):
                        self._seen[contender.name, port] = count
                        self.last[contender.name, port] = time.monotonic()

    @contextlib.contextmanager
    def running(self) -> Iterator[DialLog]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@dataclass
class Phase:
    name: str
    start: int  # seconds into the run
    end: int
    done: float = 0.0  # monotonic time the change finished (the node is gone)
    port: int = 0  # the node that left
    watch_end: float = 0.0
    dials_at_done: dict[str, int] = field(default_factory=dict)  # contender -> dials so far
    dials_after: dict[str, int] = field(default_factory=dict)  # contender -> dials since done
    fallback: dict[str, int] = field(default_factory=dict)  # contender -> reads from memory


@dataclass
class Figures:
    ops_per_s: float
    errors: int
    worst_second: int
    stale: int
    fallback: int | None  # reads served from memory (None: the contender has no fallback)
    dials_after: int
    last_dial: float  # seconds from the change to the last dial (0: none); inf: still dialling


def figures(contender: Contender, phase: Phase, dials: DialLog) -> Figures:
    seconds = range(phase.start, phase.end)
    last_dial = 0.0
    if phase.port:
        last = dials.last.get((contender.name, phase.port), 0.0)
        if last > phase.done:
            last_dial = last - phase.done
            if last > phase.watch_end - STILL:
                last_dial = float("inf")
    return Figures(
        ops_per_s=statistics.median(contender.ops[s] for s in seconds),
        errors=sum(contender.errors[s] for s in seconds),
        worst_second=max(contender.errors[s] for s in seconds),
        stale=sum(contender.stale[s] for s in seconds),
        fallback=phase.fallback.get(contender.name) if contender.fallback_reads else None,
        dials_after=phase.dials_after.get(contender.name, 0),
        last_dial=last_dial,
    )


def run_once(interval: float, watch: float, timeline: bool) -> dict[tuple[str, str], Figures]:
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        seed = cluster.url
        contenders = [kvcache_contender(seed, interval), redis_contender(seed)]
        stop = threading.Event()
        started = time.monotonic()
        threads = [
            threading.Thread(target=c.drive, args=(started, stop), daemon=True) for c in contenders
        ]
        for thread in threads:
            thread.start()
        try:
            added = cluster.add_primary()
            cluster.migrate_slots(range(2000), to=added)
            deadline = time.monotonic() + 3 * interval + 10
            while not all(c.proxies.accepted(added) for c in contenders):
                if time.monotonic() > deadline:
                    raise SystemExit("a contender never dialled the added primary")
                time.sleep(0.1)
            time.sleep(interval)  # both settle on the 4-primary map
            phases = measure(cluster, added, seed, started, contenders, watch)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            for contender in contenders:
                contender.close()
                contender.proxies.stop()
    if timeline:
        print_timeline(contenders, phases)
    for contender in contenders:
        if contender.kinds:
            print(f"  {contender.name} exceptions: {dict(contender.kinds)}")
    return {(c.name, p.name): figures(c, p, phases.dials) for c in contenders for p in phases.list}


@dataclass
class Phases:
    list: list[Phase]
    dials: DialLog


def measure(
    cluster: RedisClusterServer,
    added: int,
    seed: str,
    started: float,
    contenders: list[Contender],
    watch: float,
) -> Phases:
    def now() -> int:
        return int(time.monotonic() - started)

    def fallback() -> dict[str, int]:
        return {c.name: c.fallback_reads() for c in contenders if c.fallback_reads}

    def dials(port: int) -> dict[str, int]:
        return {c.name: log.count(c, port) for c in contenders}

    log = DialLog(contenders)
    victim = next(p for p in cluster.primary_ports if p != added and not seed.endswith(f":{p}/0"))
    log.watch(added)
    log.watch(victim)
    phases: list[Phase] = []
    with log.running():
        time.sleep(1.0)  # start on a whole second
        for name, change, port in (
            ("steady", None, 0),
            ("scale-in", cluster.remove_node, added),
            ("failover", cluster.failover, victim),
        ):
            phase = Phase(name, now(), 0, port=port)
            before = fallback()
            if change is not None:
                change(port)
                phase.done = time.monotonic()
                time.sleep(2 * SAMPLE)  # the dial log is up to date
                phase.dials_at_done = dials(port)
            time.sleep(watch if change is not None else STEADY)
            phase.watch_end = time.monotonic()
            phase.end = now()
            time.sleep(2 * SAMPLE)
            if change is not None:
                at_end = dials(port)
                phase.dials_after = {n: at_end[n] - phase.dials_at_done[n] for n in at_end}
            phase.fallback = {n: v - before[n] for n, v in fallback().items()}
            phases.append(phase)
    return Phases(phases, log)


def print_timeline(contenders: list[Contender], phases: Phases) -> None:
    names = [c.name for c in contenders]
    print("  second  phase     " + "".join(f"{n + ' ops':>14}{'errors':>8}" for n in names))
    for phase in phases.list:
        for second in range(phase.start, phase.end):
            row = "".join(f"{c.ops[second]:>14}{c.errors[second]:>8}" for c in contenders)
            print(f"  {second:>6}  {phase.name:<9} {row}")


def show_dial(seconds: float) -> str:
    return "still" if seconds == float("inf") else f"{seconds:.1f}"


def report(runs: list[dict[tuple[str, str], Figures]]) -> None:
    print(
        f"\n{'phase':<10}{'contender':<11}{'ops/s':>8}{'errors':>8}{'worst s':>9}"
        f"{'stale':>7}{'fallback':>10}{'dials after':>13}{'last dial s':>13}"
    )
    for phase in PHASES:
        for name in ("kvcache", "redis-py"):
            got = [run[name, phase] for run in runs]
            fallbacks = [f.fallback for f in got if f.fallback is not None]
            after, last = "-", "-"
            if phase != "steady":
                after = f"{statistics.median(f.dials_after for f in got):.0f}"
                last = show_dial(statistics.median_low(f.last_dial for f in got))
            print(
                f"{phase:<10}{name:<11}"
                f"{statistics.median(f.ops_per_s for f in got):>8.0f}"
                f"{statistics.median(f.errors for f in got):>8.0f}"
                f"{statistics.median(f.worst_second for f in got):>9.0f}"
                f"{statistics.median(f.stale for f in got):>7.0f}"
                f"{statistics.median(fallbacks) if fallbacks else '-':>10}"
                f"{after:>13}{last:>13}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0, help="kvcache topology check")
    parser.add_argument("--watch", type=float, default=15.0, help="seconds after each change")
    parser.add_argument("--timeline", action="store_true", help="print ops/errors per second")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"Python {platform.python_version()}, redis-py {version('redis')}, "
        f"kvcache topology_interval={args.interval}s, watch={args.watch}s, runs={args.runs}"
    )
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}")
        runs.append(run_once(args.interval, args.watch, args.timeline))
    report(runs)


if __name__ == "__main__":
    main()
