"""The first calls of a process, against a real redis-server (directly, or behind a ChaosProxy
for a Redis that is away at start), with Cache and AsyncCache alike: on a healthy network they
reach Redis; while the first connect attempt is in flight they wait for it, at most
op_timeout; a process start never deletes keys it did not write.

Bounds are generous (shared, noisy machines); ``benchmarks/outage.py`` has the tight figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from kvcache import Policy, State
from kvcache.testing import ChaosProxy

pytestmark = pytest.mark.redis

NO_IO = 0.18  # seconds: a call that touches no network (see test_outage.py)
# A first call waits for the first connect at most op_timeout: generous here, so that a loaded
# machine's slow thread start and connect still fit (the code before waited not at all).
PATIENT = {"op_timeout": 2.0}


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def settle(cache: Any) -> None:
    """Until the first-connect phase is over, and a little after (a journal would be applied)."""
    cache.connect(timeout=5)
    time.sleep(0.3)


def test_the_first_write_of_a_process_lands_in_redis(
    open_cache: Any, redis_url: str, admin: redis.Redis
) -> None:
    cache = open_cache(redis_url, connect=False, namespace="app", **PATIENT)
    assert cache.set("a", 1) is True
    assert admin.get("app:a") == b"1"  # in Redis at once, not in the fallback
    assert cache.get("a") == 1
    settle(cache)
    assert cache.get("a") == 1
    assert admin.get("app:a") == b"1"  # and no journal deleted it
    assert cache.stats.fallback_hits + cache.stats.fallback_misses == 0


def test_a_process_start_never_deletes_keys_it_did_not_write(
    open_cache: Any, redis_url: str, admin: redis.Redis
) -> None:
    admin.set("app:shared", b"42")  # another process wrote it
    cache = open_cache(redis_url, connect=False, namespace="app", **PATIENT)
    calls: list[int] = []
    assert cache.get_or_set("shared", lambda: calls.append(1) or 7) == 42
    assert calls == []  # Redis answered: the factory did not run
    settle(cache)
    assert admin.get("app:shared") == b"42"


def test_the_first_write_does_not_raise_with_throw_on_errors(
    open_cache: Any, redis_url: str, admin: redis.Redis
) -> None:
    cache = open_cache(redis_url, connect=False, namespace="app", throw_on_errors=True, **PATIENT)
    assert cache.set("a", 1) is True  # no CacheUnavailableError: Redis is up
    assert admin.get("app:a") == b"1"


FAST = {"op_timeout": 0.25, "connect_timeout": 1.0, "retry_base": 0.05, "retry_max": 0.5}


def test_a_first_call_waits_for_a_blackholed_first_connect_at_most_op_timeout(
    open_cache: Any, chaos_proxy: ChaosProxy, redis_url: str
) -> None:
    chaos_proxy.blackhole()
    cache = open_cache(chaos_proxy.url, connect=False, namespace="app", **FAST)
    started = time.perf_counter()
    assert cache.get("k", "dflt") == "dflt"  # the fallback answered
    first = time.perf_counter() - started
    # The attempt itself takes up to 2 x connect_timeout: the call did not wait for it.
    assert first < 1.0
    assert cache.state is State.STARTING  # the attempt is still in flight
    started = time.perf_counter()
    for _ in range(20):  # the wait ran out: later calls go to the fallback at once
        assert cache.set("k", 1) is True
        assert cache.get("k") == 1
    assert time.perf_counter() - started < NO_IO * 2


def test_once_the_first_attempt_failed_starting_calls_do_not_wait(
    open_cache: Any, chaos_proxy: ChaosProxy
) -> None:
    chaos_proxy.refuse()
    cache = open_cache(chaos_proxy.url, connect=False, namespace="app", **FAST)
    cache.get("k")  # starts the first connect; a refused one fails at once
    deadline = time.monotonic() + 5
    while cache.health().failed_probes < 1:
        assert time.monotonic() < deadline, "the first attempt never failed"
        time.sleep(0.005)
    slowest = 0.0
    for _ in range(20):
        started = time.perf_counter()
        cache.get("k")
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < NO_IO


def test_a_get_or_set_during_an_outage_at_start_deletes_nothing_on_recovery(
    open_cache: Any, chaos_proxy: ChaosProxy, admin: redis.Redis
) -> None:
    admin.set("app:shared", b"42")  # another process wrote it
    chaos_proxy.refuse()
    cache = open_cache(chaos_proxy.url, connect=False, namespace="app", **FAST)
    assert cache.get_or_set("shared", lambda: 7) == 7  # the fallback missed: computed
    assert cache.get_or_set("shared", lambda: 8) == 7  # and kept there meanwhile
    assert cache.health().journal_keys == 0  # a fill is not a write Redis must forget
    cache.set("mine", 1)  # a real write that bypassed Redis is journaled
    admin.set("app:mine", b"0")
    chaos_proxy.up()
    assert cache.connect(timeout=5) is State.READY
    assert admin.get("app:shared") == b"42"
    assert admin.get("app:mine") is None  # deleted on recovery, as the journal says


class Unbuildable(redis.Connection):
    """A connection class that cannot be built: what a bad option or a bug in a client
    factory does to a prober (an unexpected error, not a network failure)."""

    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError("this connection cannot be built")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_probe_that_raises_unexpectedly_is_a_failed_probe_and_probing_goes_on(
    kind: str, redis_server: Any, loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import Blocking
    from kvcache import AsyncCache, Cache
    from kvcache.stores import AsyncRedisStore, RedisStore

    policy = Policy(connect_attempts=2, retry_base=0.02, retry_max=0.05)
    if kind == "sync":
        pool = redis.ConnectionPool(port=redis_server.port, connection_class=Unbuildable)
        client = redis.Redis(connection_pool=pool)
        cache: Any = Cache(RedisStore(client), policy=policy)
    else:

        class AsyncUnbuildable(redis.asyncio.Connection):
            def __init__(self, **kwargs: Any) -> None:
                raise RuntimeError("this connection cannot be built")

        def connect() -> redis.asyncio.Redis:
            pool = redis.asyncio.ConnectionPool(
                port=redis_server.port, connection_class=AsyncUnbuildable
            )
            return redis.asyncio.Redis(connection_pool=pool)

        cache = Blocking(AsyncCache(AsyncRedisStore(connect), policy=policy), loop)
    try:
        with caplog.at_level("ERROR", logger="kvcache"):
            assert cache.get("k", "dflt") == "dflt"  # the fallback answers
            deadline = time.monotonic() + 5
            while cache.state is not State.DEGRADED:  # the phase ended: not stuck
                assert time.monotonic() < deadline, "stuck in STARTING"
                time.sleep(0.01)
            probes = cache.health().probes
            while cache.health().probes <= probes + 2:  # and the prober is alive
                assert time.monotonic() < deadline, "the prober died"
                time.sleep(0.01)
        health = cache.health()
        assert health.last_error == "RuntimeError"
        assert health.state is State.DEGRADED
        unexpected = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(unexpected) == 1  # the trace once, not once per probe
        assert "RuntimeError" in caplog.text
    finally:
        cache.close()


def test_iterating_right_after_construction_sees_the_keys_in_redis(
    open_cache: Any, redis_url: str, admin: redis.Redis
) -> None:
    admin.set("app:a", b"1")
    admin.set("app:b", b"2")
    cache = open_cache(redis_url, connect=False, namespace="app", **PATIENT)
    assert sorted(cache) == ["a", "b"]  # waited for the first connect, like any call


def test_calls_waiting_for_the_first_attempt_give_up_together(
    open_cache: Any, chaos_proxy: ChaosProxy
) -> None:
    """One call's wait running out ends the others' too: a blackholed start costs the calls
    made meanwhile one op_timeout in all, not one each in turn."""
    from concurrent.futures import ThreadPoolExecutor

    chaos_proxy.blackhole()
    slow = {"op_timeout": 2.0, "connect_timeout": 6.0}
    cache = open_cache(chaos_proxy.url, connect=False, namespace="app", **slow)
    started = time.perf_counter()

    def late_call(delay: float) -> float:
        time.sleep(delay)
        cache.get("k")
        return time.perf_counter() - started

    with ThreadPoolExecutor(2) as pool:
        _, second = pool.map(late_call, [0.0, 1.0])
    # Both end when the first call's wait (2 s) ran out; the second, had it waited its own
    # full bound, would end at 3 s.
    assert second < 2.6
