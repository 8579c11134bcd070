"""What only a real Redis shows: failures, timeouts, server errors, secrets, connections."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import planted_pickle
from kvcache import (
    AsyncCache,
    Cache,
    CacheUnavailableError,
    ErrorEvent,
    KVCacheError,
    KVCacheSettings,
    NoFreeConnectionError,
    PickleSerializer,
    SerializationError,
    State,
    StateChange,
    StoreError,
)
from kvcache._redis.async_store import _within
from kvcache._redis.factory import async_client
from kvcache.errors import ConfigurationError
from kvcache.serializers import serializer_named
from kvcache.stores import AsyncRedisStore, open_async_store
from kvcache.testing import ChaosProxy, RedisServer, TLSFiles
from kvcache.testing.server import free_port

SECRET = "s3cret-pa55word-never-logged"


def every_operation(cache: Any) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: cache.get("k", "dflt"),
        "get_many": lambda: cache.get_many(["k", "j"]),
        "set": lambda: cache.set("k", 1),
        "set_many": lambda: cache.set_many({"k": 1}),
        "delete": lambda: cache.delete("k"),
        "delete_many": lambda: cache.delete_many(["k"]),
        "has": lambda: cache.has("k"),
        "incr": lambda: cache.incr("k"),
        "ttl": lambda: cache.ttl("k"),
        "touch": lambda: cache.touch("k", 5),
        "clear": lambda: cache.clear(),
        "iter": lambda: list(cache),
    }


FAILED_ANSWERS = {
    "get": "dflt",
    "get_many": {},
    "set": False,
    "set_many": False,
    "delete": False,
    "delete_many": 0,
    "has": False,
    "incr": None,
    "ttl": None,
    "touch": False,
    "clear": 0,
    "iter": [],
}


def test_without_fallback_unreachable_redis_fails_each_call_fast(open_cache: Any) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    cache = open_cache(url, connect=False, namespace="n", fallback="none")
    events: list[ErrorEvent] = []
    cache.on("error", events.append)
    for name, call in every_operation(cache).items():
        started = time.perf_counter()
        assert call() == FAILED_ANSWERS[name], name
        assert time.perf_counter() - started < 0.5, name  # no I/O, no retry loop
    assert [event.operation for event in events] == list(FAILED_ANSWERS)
    assert [event.key for event in events][:2] == ["k", None]  # one key, or many
    assert all(isinstance(event.error, CacheUnavailableError) for event in events)
    assert cache.stats.errors == len(FAILED_ANSWERS)
    assert all(SECRET not in str(event.error) for event in events)


def test_get_or_set_is_served_by_the_fallback_while_redis_is_unreachable(
    open_cache: Any,
) -> None:
    cache = open_cache(f"redis://127.0.0.1:{free_port()}/0", connect=False, namespace="n")
    calls: list[int] = []
    assert cache.get_or_set("k", lambda: calls.append(1) or len(calls)) == 1
    assert cache.get_or_set("k", lambda: calls.append(1) or len(calls)) == 1  # from memory
    assert calls == [1]
    assert cache.stats.fallback_misses == 1
    assert cache.stats.fallback_hits == 1
    assert cache.stats.errors == 0  # nothing was sent: no Redis command failed


def test_without_fallback_get_or_set_runs_the_factory_each_time(open_cache: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cache = open_cache(url, connect=False, namespace="n", fallback="none")
    calls: list[int] = []
    assert cache.get_or_set("k", lambda: calls.append(1) or len(calls)) == 1
    assert cache.get_or_set("k", lambda: calls.append(1) or len(calls)) == 2
    assert cache.stats.errors == 4  # each call: the get and the set failed, nothing raised


def test_throw_on_errors_raises_one_kvcache_type(open_cache: Any) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cache = open_cache(url, connect=False, namespace="n", throw_on_errors=True)
    for name, call in every_operation(cache).items():
        with pytest.raises(CacheUnavailableError) as caught:
            call()
        assert not isinstance(caught.value, redis.RedisError), name
        assert isinstance(caught.value, KVCacheError)


def test_a_command_is_bounded_by_op_timeout(open_cache: Any, redis_url: str) -> None:
    cache = open_cache(redis_url, namespace="n", op_timeout=0.1)
    cache.set("k", "v")
    changes: list[StateChange] = []
    cache.on("state", changes.append)
    with redis.Redis.from_url(redis_url) as admin:
        admin.client_pause(1500, all=True)  # the server answers nobody for 1.5 s
        started = time.perf_counter()
        assert cache.get("k", "dflt") == "dflt"  # timed out: the (empty) fallback answers
        elapsed = time.perf_counter() - started
        admin.client_unpause()
    assert elapsed < 1.0
    transitions = [(c.previous, c.current) for c in changes]
    assert transitions[0] == (State.READY, State.DEGRADED)
    # once unpaused, the prober may already have seen it back
    assert transitions[1:] in ([], [(State.DEGRADED, State.READY)])
    assert isinstance(changes[0].error, CacheUnavailableError)
    assert "Timeout" in str(changes[0].error)
    assert cache.stats.errors == 1
    assert cache.connect(timeout=5) is State.READY  # the prober saw it back
    assert cache.get("k") == "v"  # and fresh connections work again


def test_server_errors_are_store_errors_not_outages(open_cache: Any, redis_url: str) -> None:
    cache = open_cache(redis_url, namespace="n")
    with redis.Redis.from_url(redis_url) as admin:
        admin.lpush("n:k", "a list, not a string")
    events: list[ErrorEvent] = []
    cache.on("error", events.append)
    assert cache.get("k", "dflt") == "dflt"
    assert type(events[0].error) is StoreError
    assert "WRONGTYPE" in str(events[0].error)


def test_wrong_password_is_unavailable_and_never_echoed(
    open_cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="the-right-one") as server:
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        cache = open_cache(url, connect=False, namespace="n", fallback="none")
        changes: list[StateChange] = []
        cache.on("connect_error", changes.append)
        assert cache.connect(timeout=1.5) is State.DEGRADED  # the first connect gave up
        assert cache.health().last_error == "AuthenticationError"
        events: list[ErrorEvent] = []
        cache.on("error", events.append)
        assert cache.set("k", 1) is False
        assert isinstance(events[0].error, CacheUnavailableError)
        good = open_cache(server.url, namespace="n")
        assert good.set("k", 1) is True
        assert good.get("k") == 1
    assert len(changes) == 1
    shown = [str(events[0].error), repr(events[0].error), repr(cache), caplog.text]
    shown += [str(changes[0].error), repr(changes[0]), repr(cache.health())]
    assert "AuthenticationError" in caplog.text
    assert not [text for text in shown if SECRET in text]


def test_signed_pickle_refuses_a_value_planted_in_redis(open_cache: Any, redis_url: str) -> None:
    serializer = PickleSerializer(b"a-signing-key-of-some-length")
    cache = open_cache(redis_url, namespace="n", serializer=serializer)
    cache.set("obj", {"tuple": (1, 2)})
    assert cache.get("obj") == {"tuple": (1, 2)}
    with redis.Redis.from_url(redis_url) as admin:
        admin.set("n:evil", b"\x00" + pickle.dumps(Exploit()))
    events: list[ErrorEvent] = []
    cache.on("error", events.append)
    assert cache.get("evil") is None
    assert isinstance(events[0].error, SerializationError)  # and Exploit never ran


def test_pickle_without_a_signing_key_is_refused_at_construction(
    redis_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    with redis.Redis.from_url(redis_url) as admin:
        admin.set("n:k", planted_pickle(marker))

    def open_and_read() -> None:  # today's code got to the read, which ran the planted code
        with Cache.from_url(redis_url, namespace="n", serializer="pickle") as cache:
            cache.connect(5.0)
            cache.get("k")

    with pytest.raises(ConfigurationError, match="serializer='pickle' needs a signing_key"):
        open_and_read()
    assert not marker.exists()
    with pytest.raises(ConfigurationError, match="signing_key"):
        serializer_named("pickle")


def test_unsigned_pickle_only_when_the_app_names_it(redis_url: str) -> None:
    with Cache.from_url(redis_url, namespace="n", serializer="pickle-unsigned") as cache:
        cache.connect(5.0)
        with redis.Redis.from_url(redis_url) as admin:
            admin.set("n:plain", b"\x00" + pickle.dumps({"plain": (1,)}))
        assert cache.get("plain") == {"plain": (1,)}
    with pytest.raises(ValueError, match="signing_key is only used with serializer='pickle'"):
        KVCacheSettings(url=redis_url, serializer="pickle-unsigned", signing_key="k" * 20)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (pytest.fail, ("a planted pickle was loaded",))


def test_close_releases_connections(redis_url: str) -> None:
    def kvcache_clients(admin: redis.Redis) -> int:
        return sum(client.get("name") == "kvcache-test" for client in admin.client_list())

    with redis.Redis.from_url(redis_url) as admin:
        with Cache.from_url(redis_url, client_name="kvcache-test") as cache:
            cache.connect(raise_on_failure=True)
            cache.set("k", 1)
            assert kvcache_clients(admin) == 1

        async def use_async() -> None:
            async with AsyncCache.from_url(redis_url, client_name="kvcache-test") as acache:
                await acache.connect(raise_on_failure=True)
                await acache.set("k", 2)
                assert kvcache_clients(admin) == 1

        asyncio.run(use_async())
        time.sleep(0.05)
        assert kvcache_clients(admin) == 0


def test_one_key_namespace_clear_leaves_other_databases_and_keys(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.set("unrelated", "x")
        admin.set("kvcache-not-ours", "x")
        with Cache.from_url(redis_url) as cache:
            cache.set("mine", 1)
            assert cache.clear() == 1
        assert sorted(admin.keys()) == [b"kvcache-not-ours", b"unrelated"]


def connections_named(admin: redis.Redis, name: str) -> int:
    return sum(client.get("name") == name for client in admin.client_list())


def test_more_callers_than_connections_wait_for_one_instead_of_failing(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)

    async def many_tasks() -> int:
        async with AsyncCache.from_url(redis_url, max_connections=4, client_name="bound") as cache:
            await cache.connect(raise_on_failure=True)
            await cache.set("k", 1)
            results = await asyncio.gather(*(cache.get("k") for _ in range(200)))
            assert results == [1] * 200
            assert connections_named(admin, "bound") <= 4
            return cache.stats.errors

    assert asyncio.run(many_tasks()) == 0

    with (
        Cache.from_url(redis_url, max_connections=2, client_name="bound2") as cache,
        ThreadPoolExecutor(16) as pool,
    ):
        cache.connect(raise_on_failure=True)
        cache.set("k", 1)
        assert list(pool.map(lambda _: cache.get("k"), range(400))) == [1] * 400
        assert cache.stats.errors == 0
        assert connections_named(admin, "bound2") <= 2
    admin.close()


def test_waiting_for_a_connection_is_bounded(redis_url: str) -> None:
    settings = KVCacheSettings(url=redis_url, op_timeout=1.0)
    store = AsyncRedisStore(lambda: async_client(settings), max_in_flight=1, wait_timeout=0.05)
    events: list[ErrorEvent] = []

    async def main() -> list[float]:
        cache = AsyncCache(store, namespace="n")
        await cache.connect(raise_on_failure=True)
        cache.on("error", events.append)
        await cache.set("k", 1)

        async def timed_get() -> float:
            started = time.perf_counter()
            assert await cache.get("k", "dflt") == "dflt"
            return time.perf_counter() - started

        with redis.Redis.from_url(redis_url) as admin:
            admin.client_pause(600, all=True)  # the one connection is stuck for 0.6 s
            holder = asyncio.ensure_future(cache.get("k"))  # takes the only slot
            await asyncio.sleep(0.05)
            waited = await timed_get()
            admin.client_unpause()
        await holder
        state = cache.state
        await cache.close()
        return [waited, state]

    waited, state = asyncio.run(main())
    assert waited < 0.5  # the slot wait (0.05 s) ended it, not the stuck command
    assert "no free connection" in str(events[0].error)
    assert isinstance(events[0].error, NoFreeConnectionError)
    assert isinstance(events[0].error, CacheUnavailableError)
    assert state is State.READY  # local overload is not an outage: the breaker stayed shut


LEAST_PRIVILEGE = "on >app-pass ~app:* +@read +@write +@keyspace +@transaction +ping"


def test_a_least_privilege_acl_user_can_use_every_operation(
    open_cache: Any, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", "app", *LEAST_PRIVILEGE.split())
        try:
            url = redis_url.replace("redis://", "redis://app:app-pass@")
            cache = open_cache(url, namespace="app", default_ttl=60)
            events: list[ErrorEvent] = []
            cache.on("error", events.append)
            assert cache.set("k", 1) is True
            assert cache.incr("k") == 2
            assert cache.set_many({"a": "x", "b": "y"}) is True
            assert cache.get_many(["a", "b"]) == {"a": "x", "b": "y"}
            assert cache.touch("a", 5) is True
            assert 0 < cache.ttl("a") <= 5
            assert cache.has("b") is True
            assert sorted(cache) == ["a", "b", "k"]
            assert cache.delete("a") is True
            assert cache.clear() == 2
            assert events == []
        finally:
            admin.execute_command("ACL", "DELUSER", "app")


def commands_served(admin: redis.Redis) -> int:
    stats = admin.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def test_bad_input_never_reaches_the_server(open_cache: Any, redis_url: str) -> None:
    cache = open_cache(redis_url, namespace="n")
    assert cache.set("warm", 1) is True  # connected: what follows would be sent at once
    with redis.Redis.from_url(redis_url) as admin:
        before = commands_served(admin)
        for call in (
            lambda: cache.get(""),
            lambda: cache.set("k", object()),
            lambda: cache.set("k", 1, ttl=-1),
            lambda: cache.set_many({"ok": 1, "k": b"bytes"}),
            lambda: cache.get_many(["ok", 5]),
            lambda: cache.incr("k", 1.5),
            lambda: cache.touch("k", 0),
            lambda: cache.get_or_set("k", lambda: 1, ttl=float("nan")),
        ):
            with pytest.raises(KVCacheError):
                call()
        assert commands_served(admin) == before


def test_a_test_server_started_with_a_quiet_log_still_starts() -> None:
    from kvcache.testing import RedisServer as Server

    with (
        Server(extra_args=("--loglevel", "warning")) as server,  # no "ready" line logged
        redis.Redis(port=server.port, password=server.password) as client,
    ):
        assert client.ping()


def test_a_cluster_node_port_comes_with_a_free_bus_port() -> None:
    """A cluster node also listens on port + 10000: both must be free, or it cannot start."""
    import socket

    from kvcache.testing.server import free_port

    for _ in range(20):
        port = free_port(with_bus=True)
        with socket.socket() as bus:
            bus.bind(("127.0.0.1", port + 10000))  # raises if taken


def test_a_call_whose_store_is_closed_under_it_meets_redis_away_not_a_value_error(
    redis_server: RedisServer,
) -> None:
    """A cluster node that leaves has its store closed while calls routed before the change
    may still be reading: redis-py then raises ValueError ("I/O operation on closed file"),
    which reached a caller under scale-in traffic. It is the store going away: unavailable."""
    from kvcache.errors import CacheUnavailableError
    from kvcache.stores import RedisStore
    from kvcache.testing import ChaosProxy

    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        store = RedisStore(redis.Redis(port=proxy.port, socket_timeout=5))
        store.get(b"x")
        proxy.latency(1000)
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(store.get, b"x")
            time.sleep(0.2)  # the GET is in flight, waiting for its reply
            store.close()
            with pytest.raises(CacheUnavailableError, match="closed during the call"):
                call.result(timeout=10)


def test_a_probe_cancelled_while_its_connection_fails_leaves_no_unretrieved_exception() -> None:
    """The soak's cluster run printed "Task exception was never retrieved" for a probe's
    ConnectionError: its caller was cancelled (close()) while the connection failed."""

    async def closing_while_cancelled() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # the server closed it meanwhile
            raise redis.ConnectionError("Connection closed by server.") from None

    reported: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["message"])
        )
        probe = asyncio.ensure_future(_within(closing_while_cancelled(), 5.0))
        await asyncio.sleep(0.01)
        probe.cancel()
        # (Python 3.11's wait_for answers a cancellation with CancelledError; from 3.12 on
        # it lets out what the cancelled call raised instead: either way, it is retrieved.)
        with pytest.raises((asyncio.CancelledError, redis.ConnectionError)):
            await probe
        del probe
        gc.collect()

    asyncio.run(main())
    gc.collect()
    assert reported == []


def test_idle_connections_that_do_not_close_in_time_do_not_fail_a_passed_probe(
    tmp_path: Path,
) -> None:
    """After a probe passes, ``reset()`` drops the idle pooled connections. A close that does
    not finish within its timeout (here a TLS close_notify that a partition never lets the
    server answer; in the 600 s soak a loaded event loop) drops the connection all the same:
    before, redis-py's TimeoutError failed the probe as an unexpected error, with a trace."""

    with (
        RedisServer(tls=TLSFiles.generate(str(tmp_path))) as server,
        ChaosProxy("127.0.0.1", server.port) as proxy,
    ):
        url = server.url.replace(f":{server.port}/", f":{proxy.port}/")

        async def main() -> None:
            store = open_async_store(KVCacheSettings(url=url, op_timeout=0.2))
            try:
                await store.set(b"k", b"v", None)  # one pooled connection, idle now
                proxy.blackhole()
                started = time.monotonic()
                await store.reset()
                assert time.monotonic() - started < 2
                proxy.up()
                assert await store.get(b"k") == b"v"  # on a new connection
            finally:
                await store.close()

        asyncio.run(main())


def test_a_read_names_its_keys_as_redis_py_helpers_do() -> None:
    """redis-py's client-side cache (a user's client with ``cache_config``) refuses a
    cacheable command sent without its keys ("Cannot create cache key"): the stores send one
    command with ``keys=``, as ``client.get`` does (the test server, 7.0, is older than the
    7.4 that redis-py's client-side cache needs, so it is checked at the plans)."""
    from redis.cache import CacheConfig

    from kvcache._redis import plans

    config = CacheConfig()
    reads = {
        "GET": plans.get(b"k"),
        "MGET": plans.get_many([b"a", b"b"]),
        "EXISTS": plans.exists(b"k"),
        "PTTL": plans.pttl(b"k"),
    }
    for name, plan in reads.items():
        (command,) = plan.commands
        assert command[0] == name
        assert plan.keys is not None
        assert list(plan.keys) == list(command[1:])
    assert all(config.is_allowed_to_cache(name) for name in ("GET", "MGET", "EXISTS"))
    assert plans.set(b"k", b"v", None).keys is None  # a write is never cached


def test_asyncio_s_error_for_a_write_on_a_lost_connection_is_a_connection_failure() -> None:
    """Python 3.12 and 3.13's selector transport raises AttributeError from ``writelines``
    on a connection the peer closed (CPython gh-136234; redis-py writes with it): an outage
    reached AsyncCache's callers as that AttributeError (test_outage's reset case and the
    soak, on 3.12.1). Told apart by where it arose; any other AttributeError stays a bug."""
    import operator
    import os

    from kvcache._redis.errors import lost_transport, translate

    where = os.path.join("lib", "python3.12", "asyncio", "selector_events.py")
    code = compile("loop = None\nloop._add_writer(7, print)", where, "exec")
    with pytest.raises(AttributeError) as caught:
        exec(code)  # noqa: S102  (a frame of asyncio's file, as the bug's innermost one is)
    lost = lost_transport(caught.value)
    assert isinstance(lost, ConnectionError)
    assert isinstance(translate(lost), CacheUnavailableError)  # the breaker opens
    with pytest.raises(AttributeError) as caught:  # a bug of ours: not a lost connection
        operator.attrgetter("_add_writer")(None)
    assert lost_transport(caught.value) is None
