"""A slow Redis, for real: a redis-server behind a ChaosProxy that delays every reply. Round
trips between ``op_timeout`` and ``connect_timeout`` used to make the sync cache flap (its probe
passed, the next call timed out): a probe must pass only when Redis answers within the bound a
call has. Cache and AsyncCache alike.

Bounds are generous (shared, noisy machines); ``benchmarks/slow_redis.py`` has the figures,
240 ms (5 ms under the bound) included.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from kvcache import CacheUnavailableError, State, StateChange
from kvcache.testing import ChaosProxy

pytestmark = pytest.mark.redis

SLOW = {"op_timeout": 0.25, "connect_timeout": 0.5, "retry_base": 0.05, "retry_max": 0.5}
WAITED = 0.18  # seconds: a call slower than this waited for Redis (fallback calls take µs)
RECOVERY = 3.0  # seconds: retry_max + one probe, with a wide margin


def calls_for(cache: Any, seconds: float) -> list[float]:
    """Sets and gets, one at a time, for ``seconds``; how long each took."""
    took: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        started = time.perf_counter()
        if n % 2:
            assert cache.set(f"k{n % 5}", n) is True
        else:
            cache.get(f"k{n % 5}")
        took.append(time.perf_counter() - started)
        time.sleep(0.01)
    return took


def wait_ready(cache: Any, timeout: float = RECOVERY) -> None:
    deadline = time.monotonic() + timeout
    while cache.state is not State.READY:
        assert time.monotonic() < deadline, f"not READY: {cache.health()}"
        cache.get("k0")
        time.sleep(0.02)


@pytest.fixture
def slow_cache(
    open_cache: Callable[..., Any], chaos_proxy: ChaosProxy, redis_url: str
) -> tuple[Any, list[StateChange]]:
    cache = open_cache(chaos_proxy.url, namespace="slow", **SLOW)
    changes: list[StateChange] = []
    cache.on("state", changes.append)
    return cache, changes


@pytest.mark.parametrize("latency_ms", [100, 200])
def test_below_the_bound_redis_serves_every_call(
    slow_cache: tuple[Any, list[StateChange]], chaos_proxy: ChaosProxy, latency_ms: int
) -> None:
    cache, changes = slow_cache
    chaos_proxy.latency(latency_ms)
    took = calls_for(cache, 1.0)
    assert changes == []  # no trip at all
    assert cache.state is State.READY
    assert cache.stats.fallback_hits == cache.stats.fallback_misses == cache.stats.errors == 0
    assert min(took) >= latency_ms / 1000 * 0.9  # every call did go to Redis
    assert cache.get("k1") is not None


@pytest.mark.parametrize("latency_ms", [300, 450, 600])
def test_above_the_bound_one_trip_per_outage_and_one_call_waits(
    slow_cache: tuple[Any, list[StateChange]], chaos_proxy: ChaosProxy, latency_ms: int
) -> None:
    cache, changes = slow_cache
    chaos_proxy.latency(latency_ms)
    took = calls_for(cache, 1.5)
    transitions = [(c.previous, c.current) for c in changes]
    assert transitions == [(State.READY, State.DEGRADED)]  # exactly one trip, no flapping
    waited = [t for t in took if t > WAITED]
    assert len(waited) == 1, waited  # the call that met the slow reply; the rest: memory
    assert waited[0] < 0.25 + 0.15  # and it waited one op_timeout, not a probe's bound
    deadline = time.monotonic() + 5  # a probe at 600 ms a round trip takes a while to fail
    while (health := cache.health()).failed_probes < 1:
        assert time.monotonic() < deadline, health
        time.sleep(0.02)
    assert health.state is State.DEGRADED
    # The PING came back too late for a call, or not within the probe's own bounds at all.
    assert health.last_error in ("SlowReplyError", "TimeoutError")
    chaos_proxy.latency(0)
    wait_ready(cache)
    assert [(c.previous, c.current) for c in changes][1:] == [(State.DEGRADED, State.READY)]


def test_a_probe_too_slow_for_a_call_says_so(
    open_cache: Callable[..., Any], chaos_proxy: ChaosProxy, redis_url: str
) -> None:
    chaos_proxy.latency(300)  # the first connect meets a Redis too slow for any call
    cache = open_cache(chaos_proxy.url, connect=False, connect_attempts=1, namespace="slow", **SLOW)
    failed: list[StateChange] = []
    cache.on("connect_error", failed.append)  # (the attempt takes >= 600 ms: not missed)
    deadline = time.monotonic() + 10
    while cache.state is not State.DEGRADED:  # the first-connect phase ends
        assert time.monotonic() < deadline
        cache.get("k")  # (starts AsyncCache's prober)
        time.sleep(0.02)
    (change,) = failed
    assert isinstance(change.error, CacheUnavailableError)
    assert re.fullmatch(r"PING took 3\d\d ms, over the 245 ms a call may take", str(change.error))
    assert cache.health().last_error == "SlowReplyError"


def test_journal_deletes_slower_than_a_call_fail_the_probe(
    open_cache: Callable[..., Any], chaos_proxy: ChaosProxy, redis_url: str
) -> None:
    """PING answers at once, the journal's UNLINK waits (CLIENT PAUSE ... WRITE holds write
    commands only): recovery waits for the deletes to fit a call's bound too."""
    cache = open_cache(chaos_proxy.url, namespace="slow", **SLOW)
    changes: list[StateChange] = []
    cache.on("state", changes.append)
    with redis.Redis.from_url(redis_url) as admin:
        admin.set(b"slow:k", b"old")
        chaos_proxy.refuse()
        assert cache.set("k", "outage") is True  # served by the fallback, journaled
        assert cache.state is State.DEGRADED
        admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        paused = time.monotonic()
        chaos_proxy.up()
        while time.monotonic() - paused < 1.2:  # PING passes, the UNLINK times out
            assert cache.state is State.DEGRADED
            assert cache.get("k") == "outage"
            time.sleep(0.02)
        health = cache.health()
        assert health.failed_probes >= 1
        assert health.last_error == "TimeoutError"
        # (not journal_keys: a probe in flight holds the journal it is applying)
        assert admin.get(b"slow:k") == b"old"  # not deleted yet: still journaled
        wait_ready(cache)
        assert admin.get(b"slow:k") is None  # deleted once it could be
    assert cache.get("k") is None
    assert [(c.previous, c.current) for c in changes] == [
        (State.READY, State.DEGRADED),
        (State.DEGRADED, State.READY),
    ]


@pytest.mark.parametrize("latency_ms", [300, 600])
def test_redis_slower_than_connect_timeout_but_within_op_timeout_serves_calls(
    open_cache: Any, chaos_proxy: Any, latency_ms: int
) -> None:
    """op_timeout=1.0 s (the bound every call has), connect_timeout at its default 0.5 s:
    a Redis answering every call in 300-600 ms is no outage by kvcache's own rule (a probe
    passes only if a call would; README "A probe passes only if a call would")."""
    chaos_proxy.latency(latency_ms)
    cache = open_cache(chaos_proxy.url, connect=False, namespace="wan", op_timeout=1.0)
    cache.connect(timeout=10)
    took = time.perf_counter()
    assert cache.set("k", 1) is True
    took = time.perf_counter() - took
    assert cache.state is State.READY, f"{cache.health()!r} (a set took {took * 1000:.0f} ms)"
