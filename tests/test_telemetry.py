"""Telemetry through opentelemetry-api, read back with the SDK's in-memory metric reader and
span exporter (the SDK is a test dependency only), against real redis-servers: exact metric
names, attributes and span attributes on hits, misses, outages and recovery."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import redis
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from kvcache import (
    AsyncCache,
    Cache,
    InvalidTTLError,
    InvalidValueError,
    KVCacheSettings,
    MemoryStore,
    State,
)
from kvcache import _telemetry as telemetry
from kvcache._redis.auth import connection_policy
from kvcache.aws import CredentialsUnavailable, IAMCredentialProvider
from kvcache.stores import open_store
from kvcache.testing import ChaosProxy, RedisClusterServer, RedisServer

READER = InMemoryMetricReader()
SPANS = InMemorySpanExporter()
Attrs = frozenset[tuple[str, Any]]


@pytest.fixture(scope="module", autouse=True)
def sdk() -> Iterator[None]:
    # Global and set once per process; kvcache's instruments, made at import through the
    # API's proxies, start recording into it from now on.
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    yield
    # Later test modules run without a tracer provider (the API has no public reset).
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own: cumulative metrics of other tests stay apart."""
    return f"t{uuid.uuid4().hex[:10]}"


def points(name: str, namespace: str | None = None) -> dict[Attrs, Any]:
    """The metric's data points (a histogram's: its count), keyed by their attributes
    without the namespace; only ``namespace``'s when one is given."""
    found: dict[Attrs, Any] = {}
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if namespace is not None and attrs.pop("kvcache.namespace", None) != namespace:
                        continue
                    value = getattr(point, "value", None)
                    found[frozenset(attrs.items())] = (
                        point.count if value is None else value  # type: ignore[union-attr]
                    )
    return found


def operations(namespace: str) -> dict[tuple[str, str], int]:
    return {
        (dict(a)["kvcache.operation"], dict(a)["kvcache.outcome"]): v
        for a, v in points("kvcache.operations", namespace).items()
    }


def durations(namespace: str) -> dict[tuple[str, str], int]:
    return {
        (dict(a)["kvcache.operation"], dict(a)["kvcache.outcome"]): v
        for a, v in points("kvcache.operation.duration", namespace).items()
    }


def states(namespace: str) -> dict[tuple[str | None, str], int]:
    return {
        (dict(a).get("kvcache.shard"), dict(a)["kvcache.state"]): v
        for a, v in points("kvcache.state", namespace).items()
    }


def spans(namespace: str, name: str | None = None) -> list[ReadableSpan]:
    return [
        s
        for s in SPANS.get_finished_spans()
        if (s.attributes or {}).get("kvcache.namespace") == namespace
        and (name is None or s.name == name)
    ]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


# -- calls ---------------------------------------------------------------------------------


def test_each_call_is_counted_and_timed_with_its_outcome(
    redis_url: str, open_cache: Callable[..., Any], ns: str
) -> None:
    cache = open_cache(redis_url, namespace=ns)
    assert cache.set("a", 1)
    assert cache.get("a") == 1
    assert cache.get("b") is None
    assert cache.get_many(["a", "b", "c"]) == {"a": 1}
    assert cache.set_many({"x": 1, "y": 2})
    assert cache.delete("x")
    assert cache.set("text", "not a number")
    with pytest.raises(InvalidValueError):
        cache.incr("text")
    with pytest.raises(InvalidTTLError):  # bad input fails before any I/O: still an error
        cache.set("a", 1, ttl=-1)
    assert operations(ns) == {
        ("set", "ok"): 2,
        ("get", "hit"): 1,
        ("get", "miss"): 1,
        ("get_many", "hit"): 1,  # reads count keys
        ("get_many", "miss"): 2,
        ("set_many", "ok"): 1,
        ("delete", "ok"): 1,
        ("incr", "error"): 1,
        ("set", "error"): 1,
    }
    assert durations(ns) == {  # one per call
        ("set", "ok"): 2,
        ("get", "hit"): 1,
        ("get", "miss"): 1,
        ("get_many", "ok"): 1,
        ("set_many", "ok"): 1,
        ("delete", "ok"): 1,
        ("incr", "error"): 1,
        ("set", "error"): 1,
    }


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[RedisServer]:
    with RedisServer(password="secret-password") as server:
        yield server


def test_spans_follow_the_database_conventions_and_name_no_key_value_or_secret(
    guarded_server: RedisServer, open_cache: Callable[..., Any], ns: str
) -> None:
    redis_server, redis_url = guarded_server, guarded_server.url
    assert "secret-password" in redis_url
    cache = open_cache(redis_url, namespace=ns)
    cache.set("secret-key", "secret-value")
    cache.get("secret-key")
    cache.get_many(["secret-key", "secret-other", "secret-third"])
    with redis.Redis.from_url(redis_url) as client:
        client.lpush(f"{ns}:secret-list", "x")
    assert cache.get("secret-list") is None  # WRONGTYPE: a failed call, answered the default
    server = {
        "db.system.name": "redis",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": redis_server.port,
        "kvcache.namespace": ns,
    }
    found = [s for s in spans(ns) if s.name != "probe"]  # the first connect's
    assert [(s.name, s.kind) for s in found] == [
        ("set", SpanKind.CLIENT),
        ("get", SpanKind.CLIENT),
        ("get_many", SpanKind.CLIENT),
        ("get", SpanKind.CLIENT),
    ]
    assert [dict(s.attributes or {}) for s in found] == [
        {**server, "db.operation.name": "set", "kvcache.outcome": "ok"},
        {**server, "db.operation.name": "get", "kvcache.outcome": "hit"},
        {
            **server,
            "db.operation.name": "get_many",
            "kvcache.outcome": "ok",
            "db.operation.batch.size": 3,
        },
        {
            **server,
            "db.operation.name": "get",
            "kvcache.outcome": "error",
            "error.type": "ResponseError",
        },
    ]
    assert [s.status.status_code for s in found] == [StatusCode.UNSET] * 3 + [StatusCode.ERROR]
    shown = repr([(s.name, s.attributes, s.events, s.status) for s in found])
    assert "secret" not in shown
    assert "secret" not in repr(READER.get_metrics_data())


def test_an_outage_is_counted_as_fallback_and_traced_by_its_probes(
    chaos_proxy: ChaosProxy, open_cache: Callable[..., Any], ns: str
) -> None:
    cache = open_cache(chaos_proxy.url, namespace=ns, op_timeout=0.25, connect_timeout=0.25)
    cache.set("old", 1)
    assert states(ns) == {
        (None, "starting"): 0,
        (None, "ready"): 1,
        (None, "degraded"): 0,
        (None, "closed"): 0,
    }
    chaos_proxy.refuse()
    assert cache.get("old") is None  # the call that meets the outage: fallback, at once
    assert cache.state is State.DEGRADED
    assert cache.set("new", 2)
    assert cache.get("new") == 2
    assert cache.delete_many(["gone1", "gone2"]) == 0
    assert operations(ns) == {
        ("set", "ok"): 1,
        ("get", "fallback_miss"): 1,
        ("set", "fallback"): 1,
        ("get", "fallback_hit"): 1,
        ("delete_many", "fallback"): 1,
    }
    assert states(ns)[None, "degraded"] == 1
    assert states(ns)[None, "ready"] == 0
    assert points("kvcache.journal.size", ns) == {frozenset(): 3}  # new, gone1, gone2
    eventually(lambda: any(s.attributes["kvcache.outcome"] == "error" for s in spans(ns, "probe")))

    chaos_proxy.up()
    assert cache.connect(timeout=5) is State.READY
    assert cache.get("old") == 1
    assert cache.get("new") is None  # deleted in Redis on recovery, never served stale
    assert states(ns)[None, "ready"] == 1
    assert points("kvcache.journal.size", ns) == {frozenset(): 0}
    # The probe's span ends just after READY is announced.
    eventually(lambda: spans(ns, "probe")[-1].attributes["kvcache.outcome"] == "ok")
    probes = spans(ns, "probe")
    failed = [s for s in probes if s.attributes["kvcache.outcome"] == "error"]
    assert failed
    assert {s.attributes["error.type"] for s in failed} <= {"ConnectionError", "TimeoutError"}
    assert all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert probes[-1].attributes == {
        "db.system.name": "redis",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": chaos_proxy.port,
        "db.operation.name": "probe",
        "kvcache.namespace": ns,
        "kvcache.outcome": "ok",
    }
    cache.close()
    assert states(ns) == {}  # a closed cache leaves the gauge


def test_probe_spans_are_roots_whatever_call_started_the_prober(
    chaos_proxy: ChaosProxy, loop: asyncio.AbstractEventLoop, ns: str
) -> None:
    cache = AsyncCache.from_url(chaos_proxy.url, namespace=ns, op_timeout=0.25)
    tracer = trace.get_tracer("app")

    async def request() -> None:
        await cache.connect(timeout=5)
        chaos_proxy.refuse()
        with tracer.start_as_current_span("GET /request"):  # the call that meets the outage
            await cache.get("k")
        await asyncio.sleep(0.5)  # the prober started by that call keeps probing
        chaos_proxy.up()
        await cache.connect(timeout=5)
        await cache.close()

    asyncio.run_coroutine_threadsafe(request(), loop).result(timeout=20)
    (parent,) = [s for s in SPANS.get_finished_spans() if s.name == "GET /request"][-1:]
    (get,) = [s for s in spans(ns, "get")]
    assert get.parent is not None
    assert get.parent.span_id == parent.context.span_id  # a call's span: the caller's child
    probes = spans(ns, "probe")
    assert len(probes) >= 2
    assert all(s.parent is None for s in probes)


def test_a_cancelled_call_ends_its_span_at_once(
    chaos_proxy: ChaosProxy, loop: asyncio.AbstractEventLoop, ns: str
) -> None:
    cache = AsyncCache.from_url(chaos_proxy.url, namespace=ns, op_timeout=2.0)

    async def cancelled() -> None:
        await cache.connect(timeout=5)
        chaos_proxy.latency(500)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.get("k"), 0.05)
        chaos_proxy.latency(0)
        await cache.close()

    asyncio.run_coroutine_threadsafe(cancelled(), loop).result(timeout=20)
    (get,) = spans(ns, "get")
    assert get.attributes["error.type"] == "CancelledError"
    assert get.end_time is not None
    assert get.start_time is not None
    assert (get.end_time - get.start_time) / 1e9 < 0.4  # when cancelled, not much later
    assert durations(ns) == {("get", "error"): 1}


def test_a_custom_store_with_an_address_of_its_own_shape_is_fine(ns: str) -> None:
    class Addressed(MemoryStore):
        address = "10.0.0.1:6379"

    cache = Cache(Addressed(), namespace=ns)
    assert cache.set("k", 1)
    assert operations(ns) == {("set", "ok"): 1}


def test_telemetry_can_be_turned_off(
    redis_url: str, open_cache: Callable[..., Any], ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVCACHE_TELEMETRY", "false")
    assert KVCacheSettings().telemetry is False
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    iam = {"enabled": True, "name": "c", "user_id": "u", "region": "eu-west-1"}
    policy = connection_policy(KVCacheSettings(url="rediss://u@h:6379/0", iam=iam))
    assert policy is not None
    before = iam_counts()
    policy.provider.token()
    policy.close()
    assert iam_counts() == before  # the provider the settings made counts nothing either
    cache = open_cache(redis_url, namespace=ns, telemetry=False)
    cache.set("a", 1)
    cache.get("a")
    assert operations(ns) == {}
    assert durations(ns) == {}
    assert states(ns) == {}
    assert spans(ns) == []


# -- transitions, cluster, IAM -----------------------------------------------------------


def test_each_transition_is_counted_once_not_per_call(chaos_proxy: ChaosProxy, ns: str) -> None:
    settings = {"op_timeout": 0.2, "connect_timeout": 0.2}
    with Cache.from_url(chaos_proxy.url, namespace=ns, **settings) as cache:
        assert cache.connect(timeout=5) is State.READY
        chaos_proxy.refuse()
        for _ in range(50):
            cache.get("k")  # one failure opens the breaker; 49 more calls change nothing
        chaos_proxy.up()
        assert cache.connect(timeout=5) is State.READY

    def transitions() -> dict[tuple[str, str], int]:
        found = points("kvcache.state.transitions", ns)
        return {
            (dict(a)["kvcache.state.previous"], dict(a)["kvcache.state"]): v
            for a, v in found.items()
        }

    expected = {
        ("starting", "ready"): 1,
        ("ready", "degraded"): 1,
        ("degraded", "ready"): 1,
        ("ready", "closed"): 1,
    }
    eventually(lambda: transitions() == expected)  # counted just after the state changes


def test_cluster_state_per_shard_and_topology_refreshes(ns: str) -> None:
    with RedisClusterServer(primaries=3) as cluster:
        proxies = {port: ChaosProxy("127.0.0.1", port).start() for port in cluster.primary_ports}
        try:
            store = open_store(KVCacheSettings(url=cluster.url, mode="cluster"))
            # Before the cache exists: its first connect starts at once, in the background.
            store.remap = lambda where: (where[0], proxies[where[1]].port)  # type: ignore[union-attr]
            cache = Cache(store, namespace=ns)
            assert cache.connect(timeout=10) is State.READY
            shards = {f"127.0.0.1:{p.port}" for p in proxies.values()}
            ready = {(shard, "ready"): 1 for shard in shards}
            assert {k: v for k, v in states(ns).items() if v} == {(None, "ready"): 1, **ready}
            refreshes = points("kvcache.topology.refreshes", ns)
            assert refreshes[frozenset({("kvcache.outcome", "changed")})] == 1

            dead = cluster.primary_ports[0]
            key = next(f"k{i}" for i in range(1000) if cluster.owner(f"{ns}:k{i}".encode()) == dead)
            proxies[dead].blackhole()
            cache.get(key)  # opens that shard's breaker only
            lit = {k: v for k, v in states(ns).items() if v}
            assert lit[f"127.0.0.1:{proxies[dead].port}", "degraded"] == 1
            assert sum(v for (shard, state), v in lit.items() if state == "ready") == 3
            proxies[dead].up()
            assert cache.connect(timeout=10) is State.READY
            cache.close()
        finally:
            for proxy in proxies.values():
                proxy.stop()


def iam_counts() -> dict[str, int]:
    found = points("kvcache.iam.token.refreshes")
    return {dict(a)["kvcache.outcome"]: v for a, v in found.items()}


def test_iam_token_signing_and_its_failures_are_counted() -> None:
    before = iam_counts()
    session = boto3.Session(
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region_name="eu-west-1",
    )
    signing = IAMCredentialProvider(name="c", user_id="u", region="eu-west-1", session=session)

    class NoCredentials:
        region_name = "eu-west-1"

        def get_credentials(self) -> None:
            return None

    failing = IAMCredentialProvider(
        name="c", user_id="u", region="eu-west-1", session=NoCredentials()
    )
    try:
        token = signing.token()
        with pytest.raises(CredentialsUnavailable):
            failing.token()
    finally:
        signing.close()
        failing.close()
    after = iam_counts()
    assert after.get("ok", 0) - before.get("ok", 0) == 1
    assert after.get("error", 0) - before.get("error", 0) == 1
    assert token not in repr(READER.get_metrics_data())


# -- logging -------------------------------------------------------------------------------


def test_one_structured_log_line_per_transition_none_per_call(
    chaos_proxy: ChaosProxy, caplog: pytest.LogCaptureFixture, ns: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="kvcache")
    with Cache.from_url(chaos_proxy.url, namespace=ns, op_timeout=0.2) as cache:
        assert cache.connect(timeout=5) is State.READY
        cache.set_many({f"k{i}": i for i in range(50)})
        chaos_proxy.refuse()
        for i in range(50):
            cache.set(f"k{i}", -i)  # journaled: deleted in Redis on recovery
            cache.get(f"k{i}")
        chaos_proxy.up()
        assert cache.connect(timeout=5) is State.READY
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [(r.name, r.levelname, r.kvcache_state) for r in lines] == [  # type: ignore[attr-defined]
        ("kvcache.adapter", "INFO", "ready"),
        ("kvcache.adapter", "WARNING", "degraded"),
        ("kvcache.adapter", "INFO", "ready"),
    ]
    recovered = lines[-1]
    assert recovered.kvcache_namespace == ns  # type: ignore[attr-defined]
    assert recovered.kvcache_previous == "degraded"  # type: ignore[attr-defined]
    assert recovered.kvcache_journal_deleted == 50  # type: ignore[attr-defined]
    assert lines[1].kvcache_error in {"ConnectionError", "TimeoutError"}  # type: ignore[attr-defined]
    per_call = [r for r in caplog.records if r.name == "kvcache.ops"]
    assert len(per_call) <= 1  # the one call that met the outage, at DEBUG


def _count_in_child(cache: Cache, queue: Any) -> None:
    cache.get("k")
    queue.put(telemetry._SERIES[cache.namespace, "get", "miss"].count)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_worker_counts_only_its_own_calls(ns: str) -> None:
    cache = Cache(MemoryStore(), namespace=ns)
    for _ in range(3):
        cache.get("k")
    assert operations(ns) == {("get", "miss"): 3}
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_count_in_child, args=(cache, queue))
    child.start()
    assert queue.get(timeout=10) == 1  # not 4: the parent's calls are the parent's to export
    child.join(10)
    assert operations(ns) == {("get", "miss"): 3}
