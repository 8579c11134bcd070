"""A sync cache in front of a slow function.

    KVCACHE_URL=redis://127.0.0.1:6379/0 python examples/basic.py

Settings come from KVCACHE_* variables (KVCACHE_URL=memory:// needs no Redis at all).
"""

from __future__ import annotations

import time

from kvcache import Cache, ErrorEvent


def fetch_profile(user_id: int) -> dict[str, object]:
    time.sleep(0.2)  # stands for a database query or an HTTP call
    return {"id": user_id, "name": f"user {user_id}"}


def report(event: ErrorEvent) -> None:
    print(f"cache error during {event.operation}: {event.error}")


def main() -> None:
    with Cache.from_settings() as cache:
        cache.on("error", report)
        # Construction never blocks; at startup, wait (bounded) for Redis. If it does not
        # answer, the cache serves from memory and reconnects by itself in the background.
        print("state:", cache.connect(timeout=2).value)
        for attempt in (1, 2):
            started = time.perf_counter()
            profile = cache.get_or_set("profile:7", lambda: fetch_profile(7), ttl=60)
            print(f"attempt {attempt}: {profile} in {(time.perf_counter() - started) * 1e3:.1f} ms")
        print("seconds left:", round(cache.ttl("profile:7") or 0))
        print("visits:", cache.incr("visits"))
        print("stats:", cache.stats.as_dict())
        cache.clear()


if __name__ == "__main__":
    main()
