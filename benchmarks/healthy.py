"""Healthy-path cost: kvcache vs raw redis-py on the same redis-server, side by side.

    python benchmarks/healthy.py [--rounds 15] [--ops 2000] [--url redis://...]

Each round times every contender once, in a shuffled order, so drift on a shared machine hits
all of them alike; the table shows the median µs per operation over the rounds and ratios.
Contenders: raw redis-py on bytes (GET/SET/MGET, no decoding: the target's baseline),
redis-py + json (what one writes by hand to cache objects), and kvcache (JSON by default).
Sync and asyncio are measured apart. Then the Django backend against django-redis and
Django's own RedisCache (each with its defaults: pickle; kvcache's pickle is HMAC-signed),
through Django's cache API, in the same interleaved way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import redis
import redis.asyncio

from kvcache import AsyncCache, Cache, KVCacheSettings
from kvcache.testing import RedisServer

VALUE = {"id": 12345, "name": "a typical cached object", "tags": ["a", "b", "c"], "ok": True}
MANY = 100


def timed(ops: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        action()
    return (time.perf_counter() - started) / ops * 1e6


async def atimed(ops: int, action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        await action()
    return (time.perf_counter() - started) / ops * 1e6


def sync_contenders(url: str) -> dict[str, dict[str, Callable[[], object]]]:
    cache = Cache.from_url(url, namespace="bench")
    cache.connect(timeout=5, raise_on_failure=True)  # else the first calls hit the fallback
    raw = redis.Redis.from_url(url)
    keys = [f"k{i}" for i in range(MANY)]
    cache.set_many(dict.fromkeys(keys, VALUE))
    payload = raw.get("bench:k0")
    raw_keys = [f"bench:{key}" for key in keys]
    json_keys = [f"json:{key}" for key in keys]
    raw.mset(dict.fromkeys(json_keys, json.dumps(VALUE)))
    return {
        "get": {
            "kvcache": lambda: cache.get("k0"),
            "redis-py": lambda: raw.get("bench:k0"),
            "redis-py+json": lambda: json.loads(raw.get("json:k0")),
        },
        "set": {
            "kvcache": lambda: cache.set("k1", VALUE),
            "redis-py": lambda: raw.set("bench:k1", payload),
            "redis-py+json": lambda: raw.set("json:k1", json.dumps(VALUE)),
        },
        f"get_many({MANY})": {
            "kvcache": lambda: cache.get_many(keys),
            "redis-py": lambda: raw.mget(raw_keys),
            "redis-py+json": lambda: [json.loads(v) for v in raw.mget(json_keys)],
        },
    }


async def async_contenders(url: str) -> dict[str, dict[str, Callable[[], Awaitable[object]]]]:
    cache = AsyncCache.from_url(url, namespace="bench")
    await cache.connect(timeout=5, raise_on_failure=True)
    raw = redis.asyncio.Redis.from_url(url)
    keys = [f"k{i}" for i in range(MANY)]
    await cache.set_many(dict.fromkeys(keys, VALUE))
    payload = await raw.get("bench:k0")
    raw_keys = [f"bench:{key}" for key in keys]
    json_keys = [f"json:{key}" for key in keys]
    await raw.mset(dict.fromkeys(json_keys, json.dumps(VALUE)))

    async def json_get() -> object:
        return json.loads(await raw.get("json:k0"))

    async def json_mget() -> object:
        return [json.loads(v) for v in await raw.mget(json_keys)]

    return {
        "async get": {
            "kvcache": lambda: cache.get("k0"),
            "redis-py": lambda: raw.get("bench:k0"),
            "redis-py+json": json_get,
        },
        "async set": {
            "kvcache": lambda: cache.set("k1", VALUE),
            "redis-py": lambda: raw.set("bench:k1", payload),
            "redis-py+json": lambda: raw.set("json:k1", json.dumps(VALUE)),
        },
        f"async get_many({MANY})": {
            "kvcache": lambda: cache.get_many(keys),
            "redis-py": lambda: raw.mget(raw_keys),
            "redis-py+json": json_mget,
        },
    }


DJANGO = {
    "kvcache": "kvcache.integrations.django.KVCache",
    "django-redis": "django_redis.cache.RedisCache",
    "django": "django.core.cache.backends.redis.RedisCache",
}


def django_contenders(url: str) -> dict[str, dict[str, Callable[[], object]]]:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="a benchmark secret key",
        CACHES={
            name: {"BACKEND": backend, "LOCATION": url, "KEY_PREFIX": name}
            for name, backend in DJANGO.items()
        },
    )
    django.setup()
    from django.core.cache import caches

    keys = [f"k{i}" for i in range(MANY)]
    for name in DJANGO:
        caches[name].set_many(dict.fromkeys(keys, VALUE))
    return {
        "django get": {name: partial(caches[name].get, "k0") for name in DJANGO},
        "django set": {name: partial(caches[name].set, "k1", VALUE) for name in DJANGO},
        f"django get_many({MANY})": {name: partial(caches[name].get_many, keys) for name in DJANGO},
    }


def shuffled(names: list[str]) -> list[str]:
    return random.sample(names, len(names))


def measure(url: str, rounds: int, ops: int) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {}
    for operation, contenders in {**sync_contenders(url), **django_contenders(url)}.items():
        for _ in range(rounds):
            for name in shuffled(list(contenders)):
                timed(ops // 10, contenders[name])  # warm-up
                result = timed(ops, contenders[name])
                samples.setdefault(operation, {}).setdefault(name, []).append(result)

    async def run_async() -> None:
        for operation, contenders in (await async_contenders(url)).items():
            for _ in range(rounds):
                for name in shuffled(list(contenders)):
                    await atimed(ops // 10, contenders[name])
                    result = await atimed(ops, contenders[name])
                    samples.setdefault(operation, {}).setdefault(name, []).append(result)

    asyncio.run(run_async())
    return {
        op: {name: statistics.median(values) for name, values in by_name.items()}
        for op, by_name in samples.items()
    }


def report(medians: dict[str, dict[str, float]]) -> str:
    head = ("operation", "redis-py µs", "+json µs", "kvcache µs", "vs raw", "vs +json")
    lines = ["{:<22} {:>12} {:>9} {:>11} {:>7} {:>9}".format(*head), "-" * 76]
    django = {op: by_name for op, by_name in medians.items() if op.startswith("django")}
    for operation, by_name in medians.items():
        if operation in django:
            continue
        raw, by_hand, ours = by_name["redis-py"], by_name["redis-py+json"], by_name["kvcache"]
        lines.append(
            f"{operation:<22} {raw:>12.1f} {by_hand:>9.1f} {ours:>11.1f}"
            f" {ours / raw:>6.2f}x {ours / by_hand:>8.2f}x"
        )
    head = ("operation", "django µs", "django-redis µs", "kvcache µs", "vs django-redis")
    lines += ["", "{:<22} {:>10} {:>16} {:>11} {:>16}".format(*head), "-" * 79]
    for operation, by_name in django.items():
        ours, peer = by_name["kvcache"], by_name["django-redis"]
        lines.append(
            f"{operation:<22} {by_name['django']:>10.1f} {peer:>16.1f} {ours:>11.1f}"
            f" {ours / peer:>15.2f}x"
        )
    return "\n".join(lines)


def near_hits(url: str, rounds: int, ops: int) -> dict[str, float]:
    """µs per get: a near-cache hit, kvcache without it, kvcache with fail-safe (a wrapped
    value: its expiry checked on each read), raw redis-py; interleaved."""
    settings = KVCacheSettings(url=url, namespace="near", near_cache={"enabled": True})
    near = Cache.from_settings(settings)
    plain = Cache.from_url(url, namespace="near")
    fail_safe = Cache.from_url(url, namespace="failsafe", stale_ttl=3600)
    raw = redis.Redis.from_url(url)
    for cache in (near, plain, fail_safe):
        cache.connect(timeout=5, raise_on_failure=True)
    plain.set("k", VALUE, ttl=3600)
    fail_safe.set("k", VALUE, ttl=3600)
    deadline = time.monotonic() + 5
    while near.stats.near_hits == 0 and time.monotonic() < deadline:  # listener ready, filled
        near.get("k")
    contenders = {
        "near hit": lambda: near.get("k"),
        "kvcache": lambda: plain.get("k"),
        "kvcache stale_ttl": lambda: fail_safe.get("k"),
        "redis-py": lambda: raw.get("near:k"),
    }
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name in shuffled(list(contenders)):
            samples.setdefault(name, []).append(timed(ops, contenders[name]))
    for cache in (near, plain, fail_safe):
        cache.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def _watch(url: str, ready: Any, seen: Any, stop: Any) -> None:
    """Another process with a near cache: when did it first read each version?"""
    cache = Cache.from_settings(
        KVCacheSettings(url=url, namespace="delay", near_cache={"enabled": True})
    )
    cache.connect(timeout=5)
    newest = 0
    ready.put(True)
    first: dict[int, float] = {}
    while not stop.is_set():
        value = cache.get("k")
        if isinstance(value, int) and value > newest:
            newest = value
            first[value] = time.time()
    seen.put(first)
    cache.close()


def invalidation_delays(url: str, writes: int) -> list[float]:
    """ms from a write in this process to another process's first read of the new value."""
    writer = Cache.from_settings(
        KVCacheSettings(url=url, namespace="delay", near_cache={"enabled": True})
    )
    writer.connect(timeout=5, raise_on_failure=True)
    writer.set("k", 0)
    context = multiprocessing.get_context("spawn")
    ready, seen, stop = context.Queue(), context.Queue(), context.Event()
    child = context.Process(target=_watch, args=(url, ready, seen, stop))
    child.start()
    ready.get(timeout=60)
    time.sleep(0.5)  # its listener is caught up and its L1 holds version 0
    written: dict[int, float] = {}
    for version in range(1, writes + 1):
        written[version] = time.time()
        writer.set("k", version)
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    first: dict[int, float] = seen.get(timeout=60)
    child.join(10)
    writer.close()
    return sorted((first[v] - written[v]) * 1e3 for v in first)


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--url", help="an existing Redis (default: a private redis-server)")
    parser.add_argument("--near-only", action="store_true", help="only the near cache figures")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(RedisServer()).url
        if not args.near_only:
            medians = measure(url, args.rounds, args.ops)
            print(
                f"median of {args.rounds} interleaved rounds x {args.ops} ops, one connection each"
            )
            print(report(medians))
        hits = near_hits(url, args.rounds, args.ops)
        print("\nnear cache, µs per get (medians of interleaved rounds):")
        print("  ".join(f"{name} {value:.2f}" for name, value in hits.items()))
        delays = invalidation_delays(url, 200)
        print(
            f"invalidation delay to another process, {len(delays)} writes: "
            f"p50 {percentile(delays, 50):.2f} ms, p99 {percentile(delays, 99):.2f} ms, "
            f"max {delays[-1]:.2f} ms"
        )


if __name__ == "__main__":
    main()
