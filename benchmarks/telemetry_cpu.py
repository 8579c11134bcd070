"""Telemetry's CPU cost in instructions, which this shared machine cannot blur: each case runs
under ``valgrind --tool=callgrind`` twice, with N and 2N calls, and the difference divided by
N is the instructions one call costs (start-up cancels out). Client side only: the
redis-server is not under valgrind.

    python benchmarks/telemetry_cpu.py [--calls 2000] [--jobs 2]

Cases: get and set on the in-memory store and on a private redis-server, each with telemetry
disabled and with opentelemetry-api alone (no SDK). Needs valgrind (Debian: valgrind).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from kvcache import Cache, MemoryStore
from kvcache.testing import RedisServer

VALUE = {"id": 12345, "name": "a typical cached object", "tags": ["a", "b", "c"], "ok": True}
COLLECTED = re.compile(r"Collected : (\d+)")


def child(backend: str, op: str, mode: str, calls: int, url: str) -> None:
    enabled = mode == "api"
    if backend == "redis":
        cache = Cache.from_url(url, namespace=f"cpu-{mode}", telemetry=enabled)
        cache.connect(timeout=30, raise_on_failure=True)
    else:
        cache = Cache(MemoryStore(), namespace=f"cpu-{mode}", telemetry=enabled)
    cache.set("k", VALUE)
    if op == "get":
        for _ in range(calls):
            cache.get("k")
    else:
        for _ in range(calls):
            cache.set("k", VALUE)
    cache.close()


def instructions(backend: str, op: str, mode: str, calls: int, url: str) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            backend,
            op,
            mode,
            str(calls),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = COLLECTED.search(done.stderr)
    assert found, done.stderr[-2000:]
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, op, mode, calls, url = args.child
        child(backend, op, mode, int(calls), url)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    cases = [(b, o, m) for b in ("memory", "redis") for o in ("get", "set") for m in ("off", "api")]
    with RedisServer() as server, ThreadPoolExecutor(args.jobs) as pool:
        runs = {
            (case, n): pool.submit(instructions, *case, n, server.url)
            for case in cases
            for n in (args.calls, 2 * args.calls)
        }
        per_call = {
            case: (runs[case, 2 * args.calls].result() - runs[case, args.calls].result())
            / args.calls
            for case in cases
        }
    print(f"instructions per call (N={args.calls}, difference of N and 2N calls)")
    print(f"{'backend':<8} {'op':<4} {'disabled':>10} {'API alone':>10} {'added':>8} {'ratio':>7}")
    for backend in ("memory", "redis"):
        for op in ("get", "set"):
            off, on = per_call[backend, op, "off"], per_call[backend, op, "api"]
            print(
                f"{backend:<8} {op:<4} {off:>10,.0f} {on:>10,.0f} {on - off:>8,.0f}"
                f" {on / off:>7.3f}"
            )


if __name__ == "__main__":
    main()
