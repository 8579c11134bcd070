"""Settings from code and KVCACHE_* variables; clear errors; no secret ever shown."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from kvcache import (
    AsyncCache,
    AsyncRedisStore,
    Cache,
    ConfigurationError,
    KVCacheError,
    KVCacheSettings,
    MemoryStore,
    PickleSerializer,
    Policy,
    RedisStore,
    State,
)
from kvcache.settings import redact_url

SECRET = "pa55-w0rd-in-url"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KVCACHE_"):
            monkeypatch.delenv(name)


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_URL", "memory://")
    monkeypatch.setenv("KVCACHE_NAMESPACE", "app")
    monkeypatch.setenv("KVCACHE_DEFAULT_TTL", "30")
    monkeypatch.setenv("KVCACHE_OP_TIMEOUT", "0.1")
    monkeypatch.setenv("KVCACHE_THROW_ON_ERRORS", "true")
    settings = KVCacheSettings()
    assert (settings.url, settings.namespace, settings.default_ttl) == ("memory://", "app", 30)
    assert settings.op_timeout == 0.1
    assert settings.throw_on_errors is True
    cache = Cache.from_settings()
    assert isinstance(cache.store, MemoryStore)
    assert cache.namespace == "app"
    cache.set("k", 1)
    assert 29 < (cache.ttl("k") or 0) <= 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("default_ttl", "-1"),
        ("op_timeout", "0"),
        ("connect_timeout", "abc"),
        ("namespace", ""),
        ("serializer", "yaml"),
        ("max_connections", "0"),
        ("compress_threshold", "-5"),
        ("url", "http://example.invalid"),
        ("retry_max", "0"),
        ("connect_attempts", "0"),
        ("fallback", "disk"),
        ("fallback_ttl", "0"),
        ("fallback_maxsize", "0"),
        ("journal_size", "-1"),
        ("journal_overflow", "drop"),
        ("non_blocking", "perhaps"),
    ],
)
def test_a_bad_setting_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"KVCACHE_{name.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        KVCacheSettings()
    assert {error["loc"][0] for error in caught.value.errors()} == {name}


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValidationError, match="namspace"):
        Cache.from_url("memory://", namspace="typo")


def test_passwords_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:6399/2"
    settings = KVCacheSettings(url=url, serializer="pickle", signing_key="k" * 20)
    assert SECRET not in repr(settings)
    assert "redis://***@127.0.0.1:6399/2" in repr(settings)
    assert "k" * 20 not in repr(settings)
    cache = Cache.from_settings(settings)
    assert SECRET not in repr(cache)
    assert "127.0.0.1:6399/2" in repr(cache)
    with pytest.raises(ValidationError) as caught:
        KVCacheSettings(url=f"redis://user:{SECRET}@host:notaport/0", op_timeout=-1)
    assert SECRET not in str(caught.value)
    monkeypatch.setenv("KVCACHE_URL", f"ftp://user:{SECRET}@host/")
    with pytest.raises(ValidationError) as caught:
        KVCacheSettings()
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@[::1]:6379/2", "redis://***@[::1]:6379/2"),
        (
            f"unix:///run/redis.sock?db=1&password={SECRET}",
            "unix:///run/redis.sock?db=1&password=***",
        ),
        (f"redis://h:1/0?Password={SECRET}&username=me", "redis://h:1/0?Password=***&username=***"),
        (f"redis://u:{SECRET}/with/slash@h/0", "redis://***@h/0"),
        (
            f"rediss://h:1/0?ssl_certfile=c.pem&ssl_password={SECRET}&ssl_ca_certs=ca.pem",
            "rediss://h:1/0?ssl_certfile=c.pem&ssl_password=***&ssl_ca_certs=ca.pem",
        ),
        ("memory://", "memory://"),
    ],
)
def test_every_url_form_of_a_password_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in repr(KVCacheSettings(url=url))


def test_a_signing_key_without_pickle_is_refused() -> None:
    with pytest.raises(ValidationError, match="signing_key"):
        KVCacheSettings(url="memory://", signing_key="k" * 20)
    with pytest.raises(ValidationError, match="signing_key"):
        KVCacheSettings(url="memory://", serializer=PickleSerializer(), signing_key="k" * 20)


def test_none_in_the_environment_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_COMPRESS_THRESHOLD", "none")
    monkeypatch.setenv("KVCACHE_DEFAULT_TTL", "none")
    settings = KVCacheSettings()
    assert settings.compress_threshold is None
    assert settings.default_ttl is None


def test_a_malformed_redis_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="url") as caught:
        Cache.from_url(f"redis://user:{SECRET}@host:notaport/0")
    assert SECRET not in str(caught.value)


def test_url_picks_the_store() -> None:
    assert isinstance(Cache.from_url("redis://127.0.0.1:6379/0").store, RedisStore)
    assert isinstance(Cache.from_url("rediss://127.0.0.1:6380/0").store, RedisStore)
    assert isinstance(Cache.from_url("unix:///tmp/redis.sock").store, RedisStore)
    assert isinstance(Cache.from_url("memory://").store, MemoryStore)
    assert isinstance(AsyncCache.from_url("redis://127.0.0.1:6379/0").store, AsyncRedisStore)
    assert isinstance(AsyncCache.from_url("memory://").store, MemoryStore)


def test_construction_does_no_io() -> None:
    # Nothing listens on port 1; building the cache must still succeed at once.
    started = time.perf_counter()
    cache = Cache.from_url("redis://127.0.0.1:1/0")
    acache = AsyncCache.from_url("redis://127.0.0.1:1/0")
    assert time.perf_counter() - started < 0.5
    assert cache.state is acache.state is State.STARTING
    cache.close()


def test_resilience_settings_reach_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_FALLBACK", "none")
    monkeypatch.setenv("KVCACHE_NON_BLOCKING", "false")
    monkeypatch.setenv("KVCACHE_RETRY_MAX", "0.8")
    monkeypatch.setenv("KVCACHE_CONNECT_ATTEMPTS", "5")
    monkeypatch.setenv("KVCACHE_JOURNAL_SIZE", "7")
    monkeypatch.setenv("KVCACHE_JOURNAL_OVERFLOW", "ignore")
    options = KVCacheSettings(url="redis://127.0.0.1:1/0").cache_options()
    assert options["fallback"] is None
    assert options["non_blocking"] is False
    assert options["policy"] == Policy(connect_attempts=5, retry_base=0.05, retry_max=0.8)
    assert (options["journal_size"], options["journal_overflow"]) == (7, "ignore")
    with Cache.from_settings(KVCacheSettings(url="redis://127.0.0.1:1/0")) as cache:
        assert cache.health().fallback is None


def test_the_fallback_is_bounded_and_caps_ttls() -> None:
    settings = KVCacheSettings(url="redis://127.0.0.1:1/0", fallback_maxsize=2, fallback_ttl=5)
    fallback = settings.cache_options()["fallback"]
    assert isinstance(fallback, MemoryStore)
    for i in range(4):
        fallback.set(b"k%d" % i, b"v", None)  # no expiry asked: capped at 5 s all the same
    assert len(list(fallback.scan(b""))) == 2
    assert 0 < fallback.pttl(b"k3") <= 5000


def test_retry_base_above_retry_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="retry_base"):
        KVCacheSettings(retry_base=2, retry_max=1)


def test_a_fallback_must_be_a_sync_store() -> None:
    async_store = AsyncCache.from_url("redis://127.0.0.1:6379/0").store
    with pytest.raises(ConfigurationError, match="fallback"):
        AsyncCache(async_store, fallback=async_store)


def test_serializer_from_a_name_or_an_object() -> None:
    signed = KVCacheSettings(url="memory://", serializer="pickle", signing_key="k" * 20)
    serializer = signed.cache_options()["serializer"]
    assert isinstance(serializer, PickleSerializer)
    assert "signed=True" in repr(serializer)
    mine = PickleSerializer()
    cache = Cache.from_url("memory://", serializer=mine)
    cache.set("k", {1, 2})
    assert cache.get("k") == {1, 2}


@pytest.mark.parametrize(
    "options",
    [
        {"namespace": ""},
        {"namespace": 5},
        {"namespace": "app:sessions"},  # would overlap namespace "app"
        {"namespace": "\ud800"},
        {"separator": None},
        {"separator": ""},
        {"default_ttl": -1},
        {"compress_threshold": -1},
        {"max_key_length": 0},
        {"serializer": "json"},
    ],
    ids=repr,
)
def test_bad_constructor_options_raise_configuration_or_ttl_errors(
    options: dict[str, object],
) -> None:
    with pytest.raises(KVCacheError) as caught:
        Cache(MemoryStore(), **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_a_store_of_the_wrong_kind_is_refused() -> None:
    async_store = AsyncCache.from_url("redis://127.0.0.1:6379/0").store
    with pytest.raises(ConfigurationError, match="AsyncCache"):
        Cache(async_store)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a kvcache store"):
        Cache(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PickleSerializer(protocol=99)


def test_memory_store_bounds() -> None:
    with pytest.raises(ConfigurationError):
        MemoryStore(0)
    cache = Cache(MemoryStore(maxsize=3))
    for i in range(10):
        cache.set(f"k{i}", i)
    assert len(list(cache)) == 3
    assert cache.get("k9") == 9


def test_async_cache_from_settings_runs() -> None:
    async def main() -> object:
        async with AsyncCache.from_settings(KVCacheSettings(url="memory://")) as cache:
            await cache.set("k", [1])
            return await cache.get("k")

    assert asyncio.run(main()) == [1]


def test_a_call_never_gets_more_network_time_than_op_timeout() -> None:
    from kvcache.client import async_client, sync_client

    settings = KVCacheSettings(op_timeout=0.25, connect_timeout=2.0)
    for client in (sync_client(settings), async_client(settings)):
        kwargs = client.connection_pool.connection_kwargs
        # a little under op_timeout: the call also has to open the breaker and ask the fallback
        assert 0.24 <= kwargs["socket_timeout"] < 0.25
        assert kwargs["socket_connect_timeout"] == kwargs["socket_timeout"]  # not 2 s
    cache = Cache.from_settings(settings.model_copy(update={"url": "redis://127.0.0.1:1/0"}))
    assert cache.store.probe_timeout == 4.0  # probes, in the background, get connect_timeout
    cache.close()
