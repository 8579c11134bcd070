"""The first calls of a process: kvcache vs raw redis-py, healthy and with Redis away at start.

    python benchmarks/startup.py [--rounds 30]

A private redis-server sits behind a ChaosProxy. Each round, in a shuffled order, builds a fresh
client and times its first ``set`` right after construction (no ``connect()``), then checks
whether the value is in Redis:

- kvcache: ``Cache.from_url(proxy.url, namespace="bench", op_timeout=0.25)`` (sync), and
  ``AsyncCache`` the same (its first call also starts the first connect);
- redis-py: ``Redis.from_url(proxy.url, socket_timeout=0.25, socket_connect_timeout=0.25)``
  (its first command connects inline).

Scenarios: ``healthy`` (proxy up) and ``blackholed`` (accepts, forwards nothing) — for the
latter, the first call and the slowest of the next 50 calls, and ``connect_timeout=1`` so the
first attempt itself takes up to 2 s. Medians over the rounds, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from kvcache import AsyncCache, Cache
from kvcache.testing import ChaosProxy, RedisServer

OP = {"op_timeout": 0.25, "connect_timeout": 1.0}


def kvcache_sync(url: str, later: int) -> tuple[float, float, bool]:
    cache = Cache.from_url(url, namespace="bench", **OP)
    try:
        return _timed(lambda: cache.set("k", 1), lambda: cache.get("j"), later, url)
    finally:
        cache.close()


def kvcache_async(url: str, later: int) -> tuple[float, float, bool]:
    async def main() -> tuple[float, float, bool]:
        cache = AsyncCache.from_url(url, namespace="bench", **OP)
        try:
            started = time.perf_counter()
            await cache.set("k", 1)
            first = time.perf_counter() - started
            slowest = 0.0
            for _ in range(later):
                started = time.perf_counter()
                await cache.get("j")
                slowest = max(slowest, time.perf_counter() - started)
            return first, slowest, _landed(url)
        finally:
            await cache.close()

    return asyncio.run(main())


def redis_py(url: str, later: int) -> tuple[float, float, bool]:
    client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)

    def call(*command: Any) -> None:
        with contextlib.suppress(redis.RedisError):
            client.execute_command(*command)

    try:
        return _timed(lambda: call("SET", "bench:k", 1), lambda: call("GET", "j"), later, url)
    finally:
        client.close()


def _timed(
    first_call: Callable[[], object], later_call: Callable[[], object], later: int, url: str
) -> tuple[float, float, bool]:
    started = time.perf_counter()
    first_call()
    first = time.perf_counter() - started
    slowest = 0.0
    for _ in range(later):
        started = time.perf_counter()
        later_call()
        slowest = max(slowest, time.perf_counter() - started)
    return first, slowest, _landed(url)


ADMIN: list[redis.Redis] = []


def _landed(url: str) -> bool:
    admin = ADMIN[0]
    landed = admin.get("bench:k") == b"1"
    admin.delete("bench:k")
    return landed


CONTENDERS = {"kvcache": kvcache_sync, "kvcache async": kvcache_async, "redis-py": redis_py}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with RedisServer() as server, ChaosProxy(server.host, server.port) as proxy:
        ADMIN.append(redis.Redis(port=server.port))
        for scenario, later in (("healthy", 0), ("blackholed", 50)):
            getattr(proxy, "up" if scenario == "healthy" else "blackhole")()
            rounds = args.rounds if scenario == "healthy" else max(3, args.rounds // 10)
            results: dict[str, list[tuple[float, float, bool]]] = {n: [] for n in CONTENDERS}
            for _ in range(rounds):
                names = list(CONTENDERS)
                random.shuffle(names)
                for name in names:
                    results[name].append(CONTENDERS[name](proxy.url, later))
            print(f"\n{scenario} ({rounds} rounds, medians)")
            print(f"{'':14} {'first set ms':>13} {'in Redis':>9}", end="")
            print(f" {'slowest of next 50 ms':>22}" if later else "")
            for name, rows in results.items():
                first = statistics.median(r[0] for r in rows) * 1000
                landed = sum(r[2] for r in rows)
                print(f"{name:14} {first:13.2f} {landed:>4}/{len(rows):<4}", end="")
                print(f" {statistics.median(r[1] for r in rows) * 1000:22.3f}" if later else "")
        ADMIN[0].close()


if __name__ == "__main__":
    main()
