"""The soak's coordinator, ``python -m kvcache.testing.soak [--seed S] [--duration 60]
[--workers 4]``: a standalone redis-server, one ChaosProxy (in a child process) per worker
process, a seeded schedule of faults, then the whole history checked against
docs/consistency.md. Exit status 1 on any violation."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ...errors import ConfigurationError
from ..chaos import ChaosProxy
from ..server import RedisServer
from .checker import check
from .history import Record
from .worker import main as worker_main

OP_TIMEOUT = 0.25
MARGIN = 1.0  # seconds past twice op_timeout a call may take on a loaded 2-core machine
NEAR_WINDOW = 1.5


def bound(record: Record) -> float:
    """A call waits for a connection up to op_timeout, then its command has op_timeout."""
    return 2 * OP_TIMEOUT + MARGIN


# Every proxy (or one process's: "partition") refusing, blackholing, resetting, slower than
# op_timeout ("slow") or slower below it ("lag"); redis-server killed -9 and restarted
# empty on its port; CLIENT KILL of every connection.
FAULTS = ("refuse", "blackhole", "reset", "slow", "lag", "partition", "kill9", "client_kill")


def _faults(
    rng: random.Random,
    kinds: Sequence[str],
    server: RedisServer,
    proxies: list[ChaosProxy],
    until: float,
    log: list[tuple[str, float, float]],
) -> None:
    while time.monotonic() < until - 1.0:
        time.sleep(rng.uniform(0.5, 2.0))
        kind = rng.choice(kinds)
        hold = rng.uniform(0.3, 2.0)
        targets = [rng.choice(proxies)] if kind == "partition" else proxies
        began = time.monotonic()
        if kind == "kill9":
            server.crash()
            time.sleep(hold)
            server.restart()
        elif kind == "client_kill":
            with server.client() as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
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
        log.append((kind, began, time.monotonic()))


def run(
    seed: int,
    duration: float,
    workers: int,
    faults_drawn: Sequence[str] = FAULTS,
    **cache_options: Any,
) -> int:
    """One soak; 0 when the history holds no violation, else 1. ``cache_options``: passed
    to every cache (besides ``op_timeout``)."""
    unrecorded = sorted({"near_cache", "stale_ttl"} & cache_options.keys())
    if unrecorded:  # the workers cannot tell an L1 hit or a stale answer from Redis's yet
        raise ConfigurationError(f"the soak does not record {', '.join(unrecorded)} answers yet")
    print(
        f"soak: seed {seed}, {duration:.0f} s, {workers} workers (replay: --seed {seed})",
        flush=True,
    )
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("spawn")
    proxies: list[ChaosProxy] = []
    procs: list[Any] = []
    faults: list[tuple[str, float, float]] = []
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="kvcache-soak-") as tmp:
        try:
            for _ in range(workers):
                proxies.append(ChaosProxy(server.host, server.port, process=True).start())
            options: dict[str, Any] = {"op_timeout": OP_TIMEOUT, **cache_options}
            outs = [os.path.join(tmp, f"p{i}.json") for i in range(workers)]
            for i in range(workers):
                args = (i, proxies[i].url, seed, duration, outs[i], options)
                procs.append(ctx.Process(target=worker_main, args=args))
                procs[-1].start()
            _faults(rng, faults_drawn, server, proxies, time.monotonic() + duration, faults)
            for proxy in proxies:
                proxy.up()
            for proc in procs:
                proc.join(duration + 60)
            records: list[Record] = []
            leaks: list[str] = []
            for i, (proc, out) in enumerate(zip(procs, outs, strict=True)):
                if proc.exitcode != 0 or not os.path.exists(out):
                    # a worker that hangs is a violation, not a hung soak (killed below)
                    leaks.append(f"worker {i} ended with {proc.exitcode}")
                    continue
                with open(out) as file:
                    data = json.load(file)
                records += [Record(**r) for r in data["records"]]
                leaks += [f"p{i}: {n} {what} left" for what, n in data["leaks"].items() if n > 0]
        finally:  # nothing left behind, whatever failed: workers first, then each proxy
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            for proxy in proxies:
                try:
                    proxy.stop()
                except Exception as exc:  # one proxy's failure must not leave the others
                    print(f"soak: stopping {proxy!r} failed: {exc!r}", flush=True)
    # A kill -9 loses what Redis had acknowledged: a stale read it explains is Redis's.
    lossy = [(began, end) for kind, began, end in faults if kind == "kill9"]
    violations = check(records, bound=bound, near_window=NEAR_WINDOW, lossy=lossy)
    for violation in violations[:20]:
        print(violation.show(), flush=True)
    for leak in leaks:
        print(f"rule 5: {leak}")
    latencies = sorted(r.end - r.start for r in records)

    def p(q: float) -> float:
        return latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else 0.0

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvcache.testing.soak")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--faults", default=",".join(FAULTS), help="kinds to draw from")
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.faults.split(",") if kind]
    if not kinds or set(kinds) - set(FAULTS):
        parser.error(f"--faults: choose among {', '.join(FAULTS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    return run(seed, args.duration, args.workers, kinds)
