"""The ``kvcache`` command: ``kvcache demo`` shows the cache at work."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

from . import __version__
from .cache import Cache
from .settings import redact_url
from .state import State
from .testing import RedisServer, RedisServerNotFound


@contextlib.contextmanager
def _demo_cache(url: str | None) -> Iterator[Cache]:
    if url:
        print(f"Using the Redis at {redact_url(url)}")
        with Cache.from_url(url, namespace="kvcache-demo") as cache:
            yield cache
        return
    try:
        server = RedisServer().start()
    except RedisServerNotFound:
        print("redis-server not found: running on the embedded memory store instead")
        with Cache(namespace="kvcache-demo") as cache:
            yield cache
        return
    print(f"Started a private redis-server on 127.0.0.1:{server.port}")
    try:
        with Cache.from_url(server.url, namespace="kvcache-demo") as cache:
            yield cache
    finally:
        server.stop()
        print("Stopped the private redis-server")


def _timed(label: str, action: object) -> None:
    started = time.perf_counter()
    result = action() if callable(action) else action
    print(f"  {label:<44} -> {result!r:<28} {(time.perf_counter() - started) * 1e3:7.2f} ms")


def demo(url: str | None = None) -> int:
    with _demo_cache(url) as cache:
        state = cache.connect(timeout=2)  # construction never blocks; wait for Redis here
        print(f"Cache: {cache!r}")
        if state is not State.READY:
            print(f"  Redis is not answering ({state.value}): serving from memory meanwhile")

        def slow_lookup() -> dict[str, object]:
            time.sleep(0.2)  # an expensive call: a database query, an HTTP API
            return {"user": 42, "plan": "pro"}

        _timed("set('greeting', 'hello', ttl=60)", lambda: cache.set("greeting", "hello", ttl=60))
        _timed("get('greeting')", lambda: cache.get("greeting"))
        _timed("ttl('greeting')", lambda: round(cache.ttl("greeting") or 0))
        _timed(
            "get_or_set('profile', slow_lookup)  (miss)",
            lambda: cache.get_or_set("profile", slow_lookup),
        )
        _timed(
            "get_or_set('profile', slow_lookup)  (hit)",
            lambda: cache.get_or_set("profile", slow_lookup),
        )
        _timed("set_many({'a': 1, 'b': [2, 3]})", lambda: cache.set_many({"a": 1, "b": [2, 3]}))
        _timed("get_many(['a', 'b', 'missing'])", lambda: cache.get_many(["a", "b", "missing"]))
        _timed("incr('visits') x3", lambda: [cache.incr("visits") for _ in range(3)][-1])
        _timed("delete('greeting')", lambda: cache.delete("greeting"))
        _timed("sorted(keys in namespace)", lambda: sorted(map(str, cache)))
        _timed("clear()  (this namespace only)", cache.clear)
        print(f"Stats: {cache.stats.as_dict()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvcache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kvcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="exercise a cache and print what it did")
    run_demo.add_argument("--url", help="use this Redis instead of a private redis-server")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.url)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
