"""The soak's coordinator, ``python -m kvcache.testing.soak [--seed S] [--duration 60]
[--workers 4] [--topology standalone|cluster]``: a private redis-server (or a Redis Cluster of
3 primaries with a replica each), ChaosProxies (in child processes) of each worker process's
own, a seeded schedule of faults, then the whole history checked against docs/consistency.md.
Exit status 1 on any violation."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from kvcache.errors import ConfigurationError
from kvcache.testing.chaos import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer
from kvcache.testing.server import RedisServer
from kvcache.testing.soak.checker import check
from kvcache.testing.soak.history import Record, from_row
from kvcache.testing.soak.worker import KEYS, NAMESPACE
from kvcache.testing.soak.worker import main as worker_main

OP_TIMEOUT = 0.25
MARGIN = 1.0  # seconds past twice op_timeout a call may take on a loaded 2-core machine
NEAR_WINDOW = 1.5
PROGRESS = 5.0  # seconds between progress lines
FALLBACK_BYTES = 6000  # about 13 of the soak's entries (each counts its bookkeeping too)
TOPOLOGIES = ("standalone", "cluster")


def bound(record: Record) -> float:
    """A call waits for a connection up to op_timeout, then its command has op_timeout."""
    return 2 * OP_TIMEOUT + MARGIN


def cluster_bound(record: Record) -> float:
    """In a cluster a get_many or set_many visits each shard of its keys in turn (up to 4:
    3 primaries and the spare), each with the bound of one call."""
    shards = 4 if record.op in ("get_many", "set_many") else 1
    return 2 * OP_TIMEOUT * shards + MARGIN


# Every proxy (or one process's: "partition") refusing, blackholing, resetting, slower than
# op_timeout ("slow") or slower below it ("lag"); a redis-server killed -9 (standalone:
# restarted empty on its port; cluster: a primary, its replica elected); CLIENT KILL of
# every connection. Cluster only: a primary stopped and its replica promoted at once
# ("failover"), slots with the soak's keys moved under load ("migrate"), a spare node given
# some of them ("scale_out"), a small primary's slots handed back and the node removed
# ("scale_in": a third of 16384 slots would take a minute to move, one by one).
FAULTS = ("refuse", "blackhole", "reset", "slow", "lag", "partition", "kill9", "client_kill")
CLUSTER_FAULTS = ("failover", "migrate", "scale_out", "scale_in")
SMALL = 256  # slots: a primary this small is removed in seconds


class _Standalone:
    """One redis-server; kill -9 restarts it empty on its port."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.ports = [server.port]
        self.seed = server.port

    def kill9(self, rng: random.Random, hold: float) -> float | None:
        """Returns when it died."""
        self.server.crash()
        died = time.monotonic()
        time.sleep(hold)
        self.server.restart()
        return died

    def client_kill(self) -> None:
        with self.server.client() as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


class _Cluster:
    """3 primaries, a replica each (replication up before any fault), and a spare node
    with no slots yet (every worker has proxies of every node from the start). A fault
    that needs what is no longer there (a primary with a replica, the spare, a small
    primary) is skipped."""

    def __init__(self, cluster: RedisClusterServer) -> None:
        self.cluster = cluster
        self.seed = cluster.primary_ports[0]
        self.spare = cluster.add_primary()
        self.ports = cluster.running_ports

    def _with_replica(self, rng: random.Random) -> int | None:
        # never the seed: every process's configured endpoint stays a place to ask
        running = self.cluster.running_ports
        candidates = [
            p
            for p in self.cluster.primary_ports
            if p != self.seed and p in running and self.cluster.replicas_of(p)
        ]
        return rng.choice(candidates) if candidates else None

    def kill9(self, rng: random.Random, hold: float) -> float | None:
        """Returns when the primary died (None: no primary with a replica is left)."""
        primary = self._with_replica(rng)
        if primary is None:
            return None
        self.cluster.crash(primary)  # CLUSTERDOWN until its replica is elected
        died = time.monotonic()
        self.cluster.wait_settled()
        return died

    def failover(self, rng: random.Random) -> bool:
        primary = self._with_replica(rng)
        if primary is None:
            return False
        self.cluster.failover(primary)
        return True

    def _some_slots(self, rng: random.Random) -> list[int]:
        """The slots of 4 of the soak's keys (in any of its namespaces)."""
        keys = [f"{NAMESPACE}{group}:{k}" for group in ("", "_near", "_stale") for k in KEYS]
        return sorted({self.cluster.keyslot(key) for key in rng.sample(keys, 4)})

    def migrate(self, rng: random.Random) -> bool:
        slots = self._some_slots(rng)
        owner = self.cluster.slot_map()[slots[0]]
        targets = [p for p in self.cluster.primary_ports if p != owner]
        self.cluster.migrate_slots(slots, to=rng.choice(targets), pause=rng.uniform(0, 0.3))
        return True

    def scale_out(self, rng: random.Random) -> bool:
        spare = self.spare
        if spare not in self.cluster.running_ports or spare in self.cluster.primary_ports:
            return False
        self.cluster.migrate_slots(self._some_slots(rng), to=spare, pause=rng.uniform(0, 0.3))
        return True

    def scale_in(self, rng: random.Random) -> bool:
        sizes = Counter(self.cluster.slot_map().values())
        small = [p for p, n in sizes.items() if p != self.seed and n <= SMALL]
        if not small or len(sizes) < 2:
            return False
        self.cluster.remove_node(rng.choice(sorted(small)))
        return True

    def client_kill(self) -> None:
        for port in self.cluster.running_ports:
            with self.cluster.nodes[port].client() as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


@contextlib.contextmanager
def _target(topology: str) -> Iterator[_Standalone | _Cluster]:
    if topology == "cluster":
        with RedisClusterServer(primaries=3, replicas=1) as cluster:
            yield _Cluster(cluster)
    else:
        with RedisServer() as server:
            yield _Standalone(server)


def _faults(
    rng: random.Random,
    kinds: Sequence[str],
    target: _Standalone | _Cluster,
    proxies: list[dict[int, ChaosProxy]],
    until: float,
    log: list[tuple[str, float, float]],
) -> str | None:
    """Draw and inject faults until ``until``; ``proxies``: each worker's, by node port.
    ``log``: (kind, when it struck, when it ended); a kill -9 strikes when the server dies.
    Returns why injecting stopped early (a fault the servers could not take), else None:
    the history up to then is checked all the same."""
    while time.monotonic() < until - 1.0:
        time.sleep(rng.uniform(0.5, 2.0))
        kind = rng.choice(kinds)
        hold = rng.uniform(0.3, 2.0)
        workers = [rng.choice(proxies)] if kind == "partition" else proxies
        targets = [proxy for by_port in workers for proxy in by_port.values()]
        began: float | None = time.monotonic()
        try:
            if kind == "kill9":
                began = target.kill9(rng, hold)
            elif kind == "client_kill":
                target.client_kill()
            elif kind in CLUSTER_FAULTS:
                assert isinstance(target, _Cluster)
                began = began if getattr(target, kind)(rng) else None
            else:
                mode = rng.choice(["refuse", "blackhole", "reset"]) if kind == "partition" else kind
                for proxy in targets:
                    if mode == "slow":
                        proxy.latency(OP_TIMEOUT * 1000 * 1.6)
                    elif mode == "lag":
                        proxy.latency(OP_TIMEOUT * 1000 * 0.2)
                    else:
                        getattr(proxy, mode)()
                time.sleep(hold)
                for proxy in targets:
                    proxy.up()
        except Exception as exc:  # e.g. a cluster that did not settle within 20 s
            return f"{kind} failed: {exc!r}"
        if began is not None:  # (None: what it needs is gone, as a primary with a replica)
            log.append((kind, began, time.monotonic()))
    return None


def run(
    seed: int,
    duration: float,
    workers: int,
    faults_drawn: Sequence[str] | None = None,
    *,
    topology: str = "standalone",
    **cache_options: Any,
) -> int:
    """One soak; 0 when the history holds no violation, else 1. ``faults_drawn``: the kinds
    to draw from (default: all that ``topology`` has). ``cache_options``: passed to every
    cache (besides ``op_timeout``)."""
    kinds = _kinds(topology, faults_drawn)
    unrecorded = sorted({"near_cache", "stale_ttl"} & cache_options.keys())
    if unrecorded:  # a cache with many callers cannot tell whose answer was an L1 hit
        raise ConfigurationError(
            f"{', '.join(unrecorded)}: the soak runs caches with it of its own (one caller "
            "each, so that it knows which answers were near-cache hits or stale); not settable"
        )
    print(
        f"soak: seed {seed}, {duration:.0f} s, {workers} workers, {topology} "
        f"(replay: --seed {seed} --topology {topology})",
        flush=True,
    )
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("spawn")
    proxies: list[dict[int, ChaosProxy]] = []  # each worker's, by node port
    procs: list[Any] = []
    faults: list[tuple[str, float, float]] = []
    with _target(topology) as target, tempfile.TemporaryDirectory(prefix="kvcache-soak-") as tmp:
        try:
            for _ in range(workers):
                mine: dict[int, ChaosProxy] = {}
                proxies.append(mine)
                for port in target.ports:
                    mine[port] = ChaosProxy("127.0.0.1", port, process=True).start()
            # A fallback of a dozen entries: outage-era writes are evicted too (the bound
            # is checked, and the model must hold with a full fallback).
            options: dict[str, Any] = {
                "op_timeout": OP_TIMEOUT,
                "fallback_max_bytes": FALLBACK_BYTES,
                **cache_options,
            }
            if topology == "cluster":
                options["mode"] = "cluster"
            outs = [os.path.join(tmp, f"p{i}.json") for i in range(workers)]
            calls = [ctx.Value("q", 0, lock=False) for _ in range(workers)]
            for i, mine in enumerate(proxies):
                remap = {port: proxy.port for port, proxy in mine.items()}
                url = mine[target.seed].url
                args = (i, url, seed, duration, outs[i], options, remap, calls[i])
                procs.append(ctx.Process(target=worker_main, args=args))
                procs[-1].start()
            ends = time.monotonic() + duration
            with _progress(calls, faults):
                stopped = _faults(rng, kinds, target, proxies, ends, faults)
            for mine in proxies:
                for proxy in mine.values():
                    proxy.up()
            if stopped is not None:
                print(f"soak: no more faults: {stopped}", flush=True)
            # One deadline for all (a worker that hangs is killed below), with time to write
            # a long history: about 2 s a minute of soak per worker on 2 shared cores.
            wrap_up = ends + 60 + duration / 10
            for proc in procs:
                proc.join(max(0.0, wrap_up - time.monotonic()))
            records: list[Record] = []
            leaks: list[str] = []
            for i, (proc, out) in enumerate(zip(procs, outs, strict=True)):
                if proc.exitcode != 0 or not os.path.exists(out):
                    # a worker that hangs is a violation, not a hung soak (killed below)
                    leaks.append(f"worker {i} ended with {proc.exitcode}")
                    continue
                with open(out) as file:
                    data = json.load(file)
                records += [from_row(row) for row in data["records"]]
                leaks += [f"p{i}: {n} {what}" for what, n in data["leaks"].items() if n > 0]
        finally:  # nothing left behind, whatever failed: workers first, then each proxy
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            for proxy in (proxy for mine in proxies for proxy in mine.values()):
                try:
                    proxy.stop()
                except Exception as exc:  # one proxy's failure must not leave the others
                    print(f"soak: stopping {proxy!r} failed: {exc!r}", flush=True)
    # A primary killed may not have replicated what it acknowledged in its last moments: a
    # stale read those writes explain is Redis's. (A standalone server restarts empty: its
    # losses are misses, never older values.)
    lossy = [(died - 1.0, died) for kind, died, _ in faults if kind == "kill9"]
    if topology != "cluster":
        lossy = []
    violations = check(
        records,
        bound=cluster_bound if topology == "cluster" else bound,
        near_window=NEAR_WINDOW,
        lossy=lossy,
        faults=[(began, ended) for _, began, ended in faults],
    )
    for violation in violations[:20]:
        print(violation.show(), flush=True)
    for leak in leaks:
        print(f"rule 5: {leak}")
    latencies = sorted(r.end - r.start for r in records)

    def p(q: float, latencies: list[float] = latencies) -> float:
        return latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else 0.0

    phases: dict[str, list[float]] = {"calm": [], "under a fault": []}
    windows = sorted((began, end) for _, began, end in faults)
    starts = [began for began, _ in windows]
    for record in records:
        i = bisect.bisect_right(starts, record.start) - 1
        faulted = i >= 0 and record.start <= windows[i][1]
        phases["under a fault" if faulted else "calm"].append(record.end - record.start)
    print(
        "soak: latency "
        + "; ".join(
            f"{phase} ({len(ls)} calls) p50 {p(0.5, ls):.1f} ms p99 {p(0.99, ls):.1f} ms "
            f"max {p(1.0, ls):.1f} ms"
            for phase, ls in ((phase, sorted(ls)) for phase, ls in phases.items())
        ),
        flush=True,
    )
    by_rule = Counter(v.rule for v in violations if not v.lossy)
    print(
        f"soak: seed {seed}: {len(records)} records, "
        f"faults {dict(Counter(k for k, *_ in faults))}, "
        f"violations {dict(by_rule)}, lost by Redis {sum(v.lossy for v in violations)}, "
        f"leaks {len(leaks)}, "
        f"latency p50 {p(0.5):.1f} ms p99 {p(0.99):.1f} ms max {p(1.0):.1f} ms",
        flush=True,
    )
    return 1 if by_rule or leaks else 0


@contextlib.contextmanager
def _progress(
    calls: Sequence[Any], faults: list[tuple[str, float, float]], every: float = PROGRESS
) -> Iterator[None]:
    """A line every ``every`` seconds while the faults run: calls per second since the last
    line, and the faults so far (violations are known once the whole history is read)."""
    stop = threading.Event()

    def report() -> None:
        began = last_at = time.monotonic()
        last = 0
        while not stop.wait(every):
            now, total = time.monotonic(), sum(c.value for c in calls)
            drawn = Counter(kind for kind, *_ in faults)
            print(
                f"soak: {now - began:5.0f} s: {(total - last) / (now - last_at):7.0f} calls/s, "
                f"faults {sum(drawn.values())} {dict(drawn)}",
                flush=True,
            )
            last, last_at = total, now

    thread = threading.Thread(target=report, name="kvcache-soak-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _kinds(topology: str, drawn: Sequence[str] | None) -> list[str]:
    if topology not in TOPOLOGIES:
        raise ConfigurationError(f"topology: choose among {', '.join(TOPOLOGIES)}")
    known = FAULTS + CLUSTER_FAULTS if topology == "cluster" else FAULTS
    kinds = list(known if drawn is None else drawn)
    if not kinds or set(kinds) - set(known):
        raise ConfigurationError(f"faults ({topology}): choose among {', '.join(known)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvcache.testing.soak")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--topology", choices=TOPOLOGIES, default="standalone")
    parser.add_argument("--faults", default=None, help="kinds to draw from, comma-separated")
    args = parser.parse_args(argv)
    drawn = None if args.faults is None else [k for k in args.faults.split(",") if k]
    try:
        kinds = _kinds(args.topology, drawn)
    except ConfigurationError as exc:
        parser.error(str(exc))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    return run(seed, args.duration, args.workers, kinds, topology=args.topology)
