"""The library's own CPU per call, no network: a ``Cache`` on a ``MemoryStore``.

    PYTHONPATH=src python benchmarks/core_overhead.py [--calls 20000]

Prints µs per get, set and get_many(100), best of 5 repeats. Run it in two trees one after
the other, several times, to compare a change of the core (docs/benchmarks.md, issue 19).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from kvcache import Cache, MemoryStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    n = parser.parse_args().calls
    cache = Cache(MemoryStore())
    cache.set("k", {"a": 1})
    keys = [f"k{i}" for i in range(100)]
    cache.set_many({key: i for i, key in enumerate(keys)})

    def best(call: Callable[[], object], number: int) -> float:
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6

    get = best(lambda: cache.get("k"), n)
    set_ = best(lambda: cache.set("k", {"a": 1}), n)
    many = best(lambda: cache.get_many(keys), max(1, n // 50))
    print(f"get {get:.2f} µs  set {set_:.2f} µs  get_many(100) {many:.1f} µs")
    cache.close()


if __name__ == "__main__":
    main()
