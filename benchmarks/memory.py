"""Memory while Redis is away, and a zlib bomb planted in Redis (issue 17.4).

    python benchmarks/memory.py [--values 400] [--readers 4] [--gets 5]

Each scenario runs in a fresh interpreter (``--scenario``), so its RSS figures start clean:

- ``fallback``: a ``Cache`` whose Redis refuses connections (DEGRADED) gets ``--values`` sets
  of distinct 1 MB strings (``compress_threshold=None``: stored 1 MB each), served by the
  in-memory fallback. RSS before, after the sets, and after ``fallback_ttl`` (2 s here)
  passed and one ``get`` came (no write): expired values are freed by reads.
- ``bomb``: a private redis-server holds one ~1 MB zlib payload (a kvcache ZLIB header, then
  zeros deflated ~1000:1, about 1 GiB inflated); ``--readers`` threads each ``get`` it
  ``--gets`` times. Time per get (every one is a miss) and RSS added (the peak of RSS
  sampled every 2 ms while they read, and after).

It runs on any kvcache version: settings a version lacks are left out (run it with an older
tree's ``src`` on ``PYTHONPATH`` for the figures before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib
from typing import Any

import redis

from kvcache import Cache, KVCacheSettings, State
from kvcache.testing import RedisServer

MB = 1_000_000
MiB = 1024 * 1024
DEAD = "redis://127.0.0.1:1/0"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def supported(**settings: Any) -> dict[str, Any]:
    """The settings this kvcache version knows."""
    return {k: v for k, v in settings.items() if k in KVCacheSettings.model_fields}


def fallback(values: int) -> dict[str, Any]:
    options = supported(compress_threshold=None, connect_attempts=1, fallback_ttl=2)
    cache = Cache.from_url(DEAD, **options)
    cache.get("warm-up")
    while cache.state is not State.DEGRADED:
        time.sleep(0.01)
    before = rss_mib()
    started = time.perf_counter()
    for i in range(values):
        cache.set(f"k{i}", os.urandom(MB // 2).hex())  # a distinct 1 MB string each
    elapsed = time.perf_counter() - started
    after = rss_mib()
    served = sum(cache.get(f"k{i}") is not None for i in range(values - 5, values))
    time.sleep(2.2)  # past fallback_ttl; no write follows
    cache.get("k0")
    expired = rss_mib()
    cache.close()
    return {
        "before": before,
        "after_sets": after,
        "after_ttl_and_a_get": expired,
        "ms_per_set": elapsed / values * 1000,
        "newest_5_served": served,
    }


def bomb(readers: int, gets: int) -> dict[str, Any]:
    with RedisServer() as server:
        deflate = zlib.compressobj(9)
        zeros = bytes(MiB)
        chunks = [b"\x01"]  # kvcache's ZLIB header
        size = 0
        while size < MB:
            chunks.append(deflate.compress(zeros))
            size = sum(map(len, chunks))
        chunks.append(deflate.flush())
        payload = b"".join(chunks)
        with redis.Redis.from_url(server.url) as client:
            client.set(b"bench:bomb", payload)
        cache = Cache.from_url(server.url, namespace="bench", op_timeout=30)
        cache.connect(timeout=5, raise_on_failure=True)
        cache.get("warm-up")
        times: list[float] = []
        before = rss_mib()
        sampled = [before]
        done = threading.Event()

        def sample() -> None:  # the current RSS, often: the peak of a run, not of the process
            while not done.is_set():
                sampled.append(rss_mib())
                time.sleep(0.002)

        def read() -> None:
            for _ in range(gets):
                started = time.perf_counter()
                assert cache.get("bomb") is None
                times.append(time.perf_counter() - started)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        sampler.join()
        after = rss_mib()
        errors = cache.stats.errors
        cache.close()
    return {
        "payload_bytes": len(payload),
        "ms_per_get_median": statistics.median(times) * 1000,
        "ms_per_get_max": max(times) * 1000,
        "rss_added_peak": max(sampled) - before,
        "rss_added_after": after - before,
        "errors_counted": errors,
    }


def run(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--scenario", scenario]
    command += ["--values", str(args.values), "--readers", str(args.readers)]
    command += ["--gets", str(args.gets)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=400)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--gets", type=int, default=5)
    parser.add_argument("--scenario", choices=["fallback", "bomb"])
    args = parser.parse_args()
    if args.scenario == "fallback":
        print(json.dumps(fallback(args.values)))
        return
    if args.scenario == "bomb":
        print(json.dumps(bomb(args.readers, args.gets)))
        return
    known = KVCacheSettings.model_fields
    bounds = {
        name: known[name].default
        for name in ("fallback_maxsize", "fallback_max_bytes", "max_value_size")
        if name in known
    }
    print(f"kvcache settings (defaults): {bounds}")
    got = run("fallback", args)
    print(
        f"fallback, {args.values} sets of 1 MB while Redis is away: RSS {got['before']:.0f} MiB "
        f"before, {got['after_sets']:.0f} MiB after ({got['after_sets'] - got['before']:+.0f}), "
        f"{got['after_ttl_and_a_get']:.0f} MiB after fallback_ttl and one get "
        f"({got['after_ttl_and_a_get'] - got['before']:+.0f}); {got['ms_per_set']:.2f} ms per "
        f"set; the newest 5 served from memory: {got['newest_5_served']}/5"
    )
    got = run("bomb", args)
    print(
        f"bomb ({got['payload_bytes'] / MB:.2f} MB zlib), {args.readers} readers x "
        f"{args.gets} gets: {got['ms_per_get_median']:.0f} ms per get (median; max "
        f"{got['ms_per_get_max']:.0f}), RSS added {got['rss_added_peak']:+.0f} MiB at peak, "
        f"{got['rss_added_after']:+.0f} MiB after; errors counted {got['errors_counted']}"
    )


if __name__ == "__main__":
    main()
