"""Fail-safe's own CPU cost: ``get`` and ``set`` with and without ``stale_ttl``, on the memory
store (no network, so the wrapper's cost is not drowned in loopback noise).

    python benchmarks/fail_safe.py [--calls 20000] [--repeat 15]

Prints the best of ``repeat`` runs of ``calls`` calls, µs per call.
"""

from __future__ import annotations

import argparse
import timeit

from kvcache import Cache

VALUE = {"id": 12345, "name": "a typical cached object", "tags": ["a", "b", "c"], "ok": True}


def best(action: object, calls: int, repeat: int) -> float:
    return min(timeit.repeat(action, number=calls, repeat=repeat)) / calls * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for name, options in (("stale_ttl off", {}), ("stale_ttl on", {"stale_ttl": 3600})):
        cache = Cache(namespace="bench", **options)  # type: ignore[arg-type]
        cache.set("k", VALUE, ttl=3600)
        get = best(lambda cache=cache: cache.get("k"), args.calls, args.repeat)
        put = best(lambda cache=cache: cache.set("k", VALUE, ttl=3600), args.calls, args.repeat)
        print(f"{name}: get {get:.2f} µs, set {put:.2f} µs")
        cache.close()


if __name__ == "__main__":
    main()
