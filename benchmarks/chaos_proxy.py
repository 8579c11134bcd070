"""A ChaosProxy in the process under test vs in a child process, while that process is busy.

    python benchmarks/chaos_proxy.py [--tasks 200] [--pings 50]

A private redis-server, and two proxies in front of it: ``ChaosProxy(...)`` (its thread in this
process) and ``ChaosProxy(..., process=True)`` (a child process). This process then runs
``--tasks`` AsyncCache tasks doing set/get through a third, untouched proxy (the load), while a
separate thread times ``--pings`` raw PINGs through each of the two proxies in turn. Printed:
the median and worst PING round trip through each, with and without the load.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

from kvcache import AsyncCache
from kvcache.testing import ChaosProxy, RedisServer

PING = b"*1\r\n$4\r\nPING\r\n"


def ping_times(proxy: ChaosProxy, count: int) -> list[float]:
    took = []
    with socket.create_connection((proxy.host, proxy.port), timeout=30) as sock:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(PING)
            sock.recv(100)
            took.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    return took


async def load(url: str, tasks: int, stop: threading.Event) -> None:
    cache = AsyncCache.from_url(url, op_timeout=5.0)
    await cache.connect(timeout=10)

    async def worker(n: int) -> None:
        while not stop.is_set():
            await cache.set(f"k{n}", n)
            await cache.get(f"k{n}")

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--pings", type=int, default=50)
    args = parser.parse_args()
    with RedisServer() as server:
        inside = ChaosProxy(server.host, server.port).start()
        child = ChaosProxy(server.host, server.port, process=True).start()
        loaded = ChaosProxy(server.host, server.port).start()  # the load's own way in
        try:
            for label, busy in (("idle", False), (f"{args.tasks} tasks busy", True)):
                stop = threading.Event()
                runner = None
                if busy:
                    runner = threading.Thread(
                        target=asyncio.run, args=(load(loaded.url, args.tasks, stop),), daemon=True
                    )
                    runner.start()
                    time.sleep(1.0)
                results = {}
                for name, proxy in (("in this process", inside), ("child process", child)):
                    results[name] = ping_times(proxy, args.pings)
                stop.set()
                if runner is not None:
                    runner.join(30)
                for name, took in results.items():
                    print(
                        f"{label:>16} | {name:<16} | PING median {statistics.median(took):7.2f} ms"
                        f" | worst {max(took):8.2f} ms"
                    )
        finally:
            for proxy in (inside, child, loaded):
                proxy.stop()


if __name__ == "__main__":
    main()
