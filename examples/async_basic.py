"""The same with asyncio: many concurrent requests for one missing key share one computation.

KVCACHE_URL=redis://127.0.0.1:6379/0 python examples/async_basic.py
"""

from __future__ import annotations

import asyncio
import time

from kvcache import AsyncCache

calls = 0


async def fetch_report() -> list[int]:
    global calls
    calls += 1
    await asyncio.sleep(0.3)  # an expensive query
    return [1, 2, 3]


async def main() -> None:
    async with AsyncCache.from_settings() as cache:
        print("state:", (await cache.connect(timeout=2)).value)  # bounded wait for Redis
        await cache.delete("report")
        started = time.perf_counter()
        results = await asyncio.gather(
            *(cache.get_or_set("report", fetch_report, ttl=30) for _ in range(100))
        )
        elapsed = (time.perf_counter() - started) * 1e3
        print(f"100 concurrent requests, {calls} computation, {elapsed:.0f} ms: {results[0]}")
        print("stats:", cache.stats.as_dict())
        await cache.clear()


if __name__ == "__main__":
    asyncio.run(main())
