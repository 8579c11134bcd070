"""A slow Redis: trips per outage and calls that waited, for Cache and AsyncCache.

    python benchmarks/slow_redis.py [--seconds 8] [--latencies 100,240,300,450,600]
    PYTHONPATH=<an older tree>/src python benchmarks/slow_redis.py   # the same, before a fix

A private redis-server behind a ChaosProxy that delays every reply by the latency (each
server->client chunk). Per latency, per cache kind and per mix (``mixed``: set and get in turn;
``reads``: gets only): a fresh cache (op_timeout 0.25 s, connect_timeout 0.5 s, the default
backoff) is made READY with no latency, then one caller makes a call every 10 ms for
``--seconds`` with the latency on. Printed: the READY->DEGRADED transitions (``trips``), all
transitions, the calls that waited for Redis (> 0.1 s; a call served from memory takes µs)
and the longest one, then the seconds to READY after the latency is removed.

Below the bound a call has (245 ms: op_timeout less 5 ms) every call goes to Redis and waits
the latency, which is no trip; above it, one trip per outage and one call that waited is the
target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import time
from collections.abc import Callable
from typing import Any

import redis

import kvcache
from kvcache import AsyncCache, Cache, State, StateChange
from kvcache.testing import ChaosProxy, RedisServer

OPTIONS = {"op_timeout": 0.25, "connect_timeout": 0.5}
WAITED = 0.1  # seconds


def row(
    kind: str, mix: str, latency: int, changes: list[StateChange], took: list[float], back: float
) -> str:
    trips = sum(c.previous is State.READY and c.current is State.DEGRADED for c in changes)
    waited = [t for t in took if t > WAITED]
    longest = max(waited, default=0.0)
    return (
        f"{kind:6} {mix:6} {latency:5} ms  trips {trips:2}  transitions {len(changes):2}  "
        f"calls {len(took):4}  waited {len(waited):3} (longest {longest * 1000:4.0f} ms)  "
        f"READY again after {back:.2f} s"
    )


def call_for(mix: str) -> Callable[[Any, int], Any]:
    def call(cache: Any, n: int) -> Any:
        if mix == "mixed" and n % 2:
            return cache.set(f"k{n % 5}", n)
        return cache.get(f"k{n % 5}")

    return call


def sync_run(url: str, proxy: ChaosProxy, latency: int, mix: str, seconds: float) -> str:
    cache = Cache.from_url(url, namespace="bench", **OPTIONS)
    try:
        cache.connect(timeout=5, raise_on_failure=True)
        for n in range(5):
            cache.set(f"k{n}", n)
        changes: list[StateChange] = []
        cache.on("state", changes.append)
        call = call_for(mix)
        proxy.latency(latency)
        took: list[float] = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            started = time.perf_counter()
            call(cache, n)
            took.append(time.perf_counter() - started)
            time.sleep(0.01)
        during = list(changes)
        proxy.latency(0)
        started = time.perf_counter()
        while cache.state is not State.READY and time.perf_counter() - started < 10:
            cache.get("k0")
            time.sleep(0.005)
        return row("Cache", mix, latency, during, took, time.perf_counter() - started)
    finally:
        cache.close()


async def async_run(url: str, proxy: ChaosProxy, latency: int, mix: str, seconds: float) -> str:
    cache = AsyncCache.from_url(url, namespace="bench", **OPTIONS)
    try:
        await cache.connect(timeout=5, raise_on_failure=True)
        for n in range(5):
            await cache.set(f"k{n}", n)
        changes: list[StateChange] = []
        cache.on("state", changes.append)
        call = call_for(mix)
        proxy.latency(latency)
        took: list[float] = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            started = time.perf_counter()
            await call(cache, n)
            took.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
        during = list(changes)
        proxy.latency(0)
        started = time.perf_counter()
        while cache.state is not State.READY and time.perf_counter() - started < 10:
            await cache.get("k0")
            await asyncio.sleep(0.005)
        return row("Async", mix, latency, during, took, time.perf_counter() - started)
    finally:
        await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--latencies", default="100,240,300,450,600")
    parser.add_argument("--mixes", default="mixed,reads")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one line per transition would bury the table
    latencies = [int(x) for x in args.latencies.split(",")]
    print(
        f"kvcache from {kvcache.__file__}; redis-py {redis.__version__}; "
        f"Python {platform.python_version()}; op_timeout 0.25 s, connect_timeout 0.5 s; "
        f"{args.seconds} s of calls per row, one every 10 ms"
    )
    with RedisServer() as server, ChaosProxy(server.host, server.port) as proxy:
        for latency in latencies:
            for mix in args.mixes.split(","):
                proxy.latency(0)
                print(sync_run(proxy.url, proxy, latency, mix, args.seconds), flush=True)
                proxy.latency(0)
                line = asyncio.run(async_run(proxy.url, proxy, latency, mix, args.seconds))
                print(line, flush=True)


if __name__ == "__main__":
    main()
