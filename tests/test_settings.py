"""Settings from code and KVCACHE_* variables; clear errors; no secret ever shown."""

from __future__ import annotations

import asyncio
import pickle
import time
import warnings
from typing import Any

import pytest
import redis

from kvcache import (
    FOREVER,
    AsyncCache,
    AsyncRedisStore,
    Cache,
    ConfigurationError,
    ConfigurationWarning,
    InvalidTTLError,
    KVCacheError,
    KVCacheSettings,
    MemoryStore,
    PickleSerializer,
    Policy,
    RedisStore,
    State,
)
from kvcache._redis.url import redact_url
from kvcache.testing import RedisServer

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
    assert settings.url.get_secret_value() == "memory://"
    assert (settings.namespace, settings.default_ttl) == ("app", 30)
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
        ("fallback_max_bytes", "0"),
        ("fallback_max_bytes", "64MB"),
        ("fallback_max_bytes", "100"),  # less than an entry's bookkeeping: holds nothing
        ("max_value_size", "-1"),
        ("max_value_size", "1.5"),
        ("journal_size", "-1"),
        ("journal_overflow", "drop"),
        ("non_blocking", "perhaps"),
    ],
)
def test_a_bad_setting_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"KVCACHE_{name.upper()}", value)
    with pytest.raises(ConfigurationError) as caught:
        KVCacheSettings()
    assert isinstance(caught.value, ValueError)
    assert f"{name} (KVCACHE_{name.upper()}) = " in str(caught.value)  # the setting, the value
    assert repr(value) in str(caught.value) or name == "url"  # (the URL shown redacted)


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting 'namspace' .*'namespace'"):
        Cache.from_url("memory://", namspace="typo")
    with pytest.raises(ConfigurationError, match="unknown setting 'namspace'"):
        AsyncCache.from_url("memory://", namspace="typo")


def test_passwords_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:6399/2"
    settings = KVCacheSettings(url=url, serializer="pickle", signing_key="k" * 20)
    assert SECRET not in repr(settings)
    assert "redis://***@127.0.0.1:6399/2" in repr(settings)
    assert "k" * 20 not in repr(settings)
    cache = Cache.from_settings(settings)
    assert SECRET not in repr(cache)
    assert "127.0.0.1:6399/2" in repr(cache)
    with pytest.raises(ConfigurationError) as caught:
        KVCacheSettings(url=f"redis://user:{SECRET}@host:notaport/0", op_timeout=-1)
    assert SECRET not in str(caught.value)
    monkeypatch.setenv("KVCACHE_URL", f"ftp://user:{SECRET}@host/")
    with pytest.raises(ConfigurationError) as caught:
        KVCacheSettings()
    assert SECRET not in str(caught.value)
    assert "'ftp://***@host/'" in str(caught.value)  # the bad value, redacted
    with pytest.raises(ConfigurationError, match="signing_key") as caught:
        KVCacheSettings(url="memory://", serializer="pickle", signing_key=[SECRET])
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
    if "Password" in url or "/with/" in url:  # redis-py's names are lower case; a raw "/"
        with pytest.raises(ConfigurationError) as caught:
            KVCacheSettings(url=url)
        assert SECRET not in str(caught.value)
        return
    settings = KVCacheSettings(url=url)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump()) + settings.model_dump_json()


def test_a_signing_key_without_pickle_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="signing_key"):
        KVCacheSettings(url="memory://", signing_key="k" * 20)
    with pytest.raises(ConfigurationError, match="signing_key"):
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
    with pytest.raises(ConfigurationError, match="retry_base"):
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
        {"max_value_size": 0},
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
    for max_bytes in (0, -1, 2.5, True, 400):  # 400: an entry's bookkeeping alone
        with pytest.raises(ConfigurationError, match="max_bytes"):
            MemoryStore(max_bytes=max_bytes)  # type: ignore[arg-type]
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
    from kvcache._redis.factory import async_client, sync_client

    settings = KVCacheSettings(url="redis://127.0.0.1:1/0", op_timeout=0.25, connect_timeout=2.0)
    for client in (sync_client(settings), async_client(settings)):
        kwargs = client.connection_pool.connection_kwargs
        # a little under op_timeout: the call also has to open the breaker and ask the fallback
        assert 0.24 <= kwargs["socket_timeout"] < 0.25
        assert kwargs["socket_connect_timeout"] == kwargs["socket_timeout"]  # not 2 s
    cache = Cache.from_settings(settings)
    assert cache.store.probe_timeout == 4.0  # probes, in the background, get connect_timeout
    cache.close()


# --- Checked at construction (issue 16, section 2) ------------------------------------------


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("foo=1", "'foo' is not accepted"),
        ("ssl_cert_reqs=none", "'ssl_cert_reqs' needs a rediss://"),
        ("ssl_ca_certs=ca.pem", "'ssl_ca_certs' needs a rediss://"),
        ("timeout=1", "'timeout' is not accepted"),  # a BlockingConnectionPool's, not ours
        ("decode_responses=true", "'decode_responses' is not accepted"),  # kvcache's own
        ("max_connections=5", "'max_connections' is not accepted"),  # a setting
        ("socket_timout=0.1", "did you mean 'socket_timeout'"),
    ],
)
def test_a_url_option_redis_py_would_refuse_is_refused_at_construction(
    redis_url: str, query: str, named: str
) -> None:
    # Before: construction succeeded, then every connect died of a TypeError (an unknown
    # keyword to Connection) and the cache stayed STARTING, serving from memory.
    url = with_query(redis_url, query)
    for construct in (KVCacheSettings, Cache.from_url, AsyncCache.from_url):
        started = time.perf_counter()
        with pytest.raises(ConfigurationError, match=named):
            construct(url=url)  # type: ignore[operator]
        assert (
            time.perf_counter() - started < 0.5
        )  # no I/O, no waiting (as test_construction_does_no_io)


def test_unix_socket_urls_have_no_tcp_options() -> None:
    with pytest.raises(ConfigurationError, match="'socket_keepalive' is not accepted on unix"):
        KVCacheSettings(url="unix:///run/redis.sock?socket_keepalive=true")
    assert KVCacheSettings(url="unix:///run/redis.sock?db=2&socket_timeout=0.1")


def test_the_accepted_url_options_really_reach_redis(redis_url: str, open_cache: Any) -> None:
    query = (
        "db=3&socket_timeout=0.2&socket_connect_timeout=0.2&socket_keepalive=true"
        "&socket_read_size=32768&health_check_interval=5&mode=standalone"
    )
    cache = open_cache(with_query(redis_url, query), namespace="opts")
    assert cache.set("k", 1) is True
    with redis.Redis.from_url(with_query(redis_url, "db=3")) as admin:
        assert admin.exists("opts:k") == 1
    assert KVCacheSettings(url="rediss://h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false")


@pytest.mark.parametrize("name", ["socket_timeout", "socket_connect_timeout"])
def test_a_url_timeout_may_not_exceed_op_timeout(name: str) -> None:
    # Before: ?socket_timeout=3 silently replaced the op_timeout bound (a blackholed first get
    # took 3.0 s instead of 0.25 s).
    with pytest.raises(ConfigurationError, match=f"{name}=3 must be > 0 and at most op_timeout"):
        KVCacheSettings(url=f"redis://h:6379/0?{name}=3")
    with pytest.raises(ConfigurationError, match=name):
        Cache.from_url(f"redis://h:6379/0?{name}=0")
    assert KVCacheSettings(url=f"redis://h:6379/0?{name}=3", op_timeout=3)


def test_a_shorter_url_timeout_is_kept(redis_url: str) -> None:
    from kvcache._redis.factory import sync_client

    settings = KVCacheSettings(url=with_query(redis_url, "socket_timeout=0.05"))
    assert sync_client(settings).connection_pool.connection_kwargs["socket_timeout"] == 0.05


@pytest.mark.parametrize("path", ["/abc", "/0/1", "/1x"])
def test_a_url_path_that_is_no_database_number_is_refused(path: str) -> None:
    # Before: redis://h/abc silently used db 0.
    with pytest.raises(ConfigurationError, match="database number"):
        KVCacheSettings(url=f"redis://h:6379{path}")
    with pytest.raises(ConfigurationError, match="'db'"):
        KVCacheSettings(url="redis://h:6379?db=abc")
    for fine in ("redis://h:6379", "redis://h:6379/", "redis://h:6379/15"):
        assert KVCacheSettings(url=fine)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e308 * 10], ids=repr)
def test_an_infinite_or_nan_ttl_is_refused(redis_url: str, open_cache: Any, bad: float) -> None:
    # Before: ttl=float("inf") was stored without expiry; FOREVER is the way to say forever.
    cache = open_cache(redis_url, namespace="inf")
    for call in (
        lambda: cache.set("k", 1, ttl=bad),
        lambda: cache.touch("k", ttl=bad),
        lambda: cache.get_or_set("k", lambda: 1, ttl=bad),
    ):
        with pytest.raises(InvalidTTLError, match="ttl"):
            call()
    assert not cache.has("k")
    for option in ("default_ttl", "stale_ttl"):
        with pytest.raises(KVCacheError, match=option) as refused:
            Cache(MemoryStore(), **{option: bad})  # type: ignore[arg-type]
        assert isinstance(refused.value, ValueError)
        with pytest.raises(ConfigurationError, match=option):
            KVCacheSettings(url="memory://", **{option: bad})
    assert cache.set("forever", 1, ttl=FOREVER) is True
    assert cache.ttl("forever") == FOREVER
    assert cache.set("copied", 1, ttl=pickle.loads(pickle.dumps(FOREVER))) is True


def test_a_bad_environment_value_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCACHE_OP_TIMEOUT", "fast")
    with pytest.raises(ConfigurationError, match=r"op_timeout \(KVCACHE_OP_TIMEOUT\) = 'fast'"):
        Cache.from_url("memory://")
    monkeypatch.delenv("KVCACHE_OP_TIMEOUT")
    with pytest.raises(ConfigurationError, match=r"namespace .* = ''") as caught:
        AsyncCache.from_url("memory://", namespace="")
    assert isinstance(caught.value, ValueError)
    url = f"http://user:{SECRET}@x/"
    with pytest.raises(ConfigurationError, match="'http://\\*\\*\\*@x/'") as caught:
        Cache.from_url(url)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None  # no pydantic error chained, echoing the input


def test_an_unknown_kvcache_variable_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvcache._settings_messages

    monkeypatch.setattr(kvcache._settings_messages, "_warned", set())
    monkeypatch.setenv("KVCACHE_NAMESPCE", "app")
    monkeypatch.setenv("KVCACHE_NEAR_CACHE__ENABLED", "false")  # nested: a setting
    monkeypatch.setenv("KVCACHE_IAM__REGION", "eu-west-1")
    monkeypatch.setenv("KVCACHE_REDIS_SERVER", "/usr/bin/redis-server")  # kvcache.testing's
    monkeypatch.setenv("KVCACHE_URL", "memory://")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KVCacheSettings()
        Cache.from_url("memory://")
    assert [str(w.message) for w in caught] == [
        "KVCACHE_NAMESPCE names no kvcache setting: did you mean KVCACHE_NAMESPACE?"
    ]
    assert caught[0].category is ConfigurationWarning
    assert issubclass(ConfigurationWarning, UserWarning)


def test_get_or_set_refuses_a_factory_that_is_no_callable(redis_url: str, open_cache: Any) -> None:
    cache = open_cache(redis_url, namespace="factory")
    with pytest.raises(TypeError, match="get_or_set needs a factory to call on a miss"):
        cache.get_or_set("k", 5)
    assert cache.stats.misses == 0  # refused before any I/O
    assert not cache.has("k")


def test_dumps_never_show_secrets() -> None:
    # Before: model_dump() and model_dump_json() printed the URL's password in clear.
    key = "signing-key-" + SECRET
    with RedisServer(password=SECRET) as server:
        settings = KVCacheSettings(url=server.url, serializer="pickle", signing_key=key)
        for shown in (str(settings.model_dump()), settings.model_dump_json(), repr(settings)):
            assert SECRET not in shown
            assert f"redis://***@127.0.0.1:{server.port}/0" in shown
        assert settings.url.get_secret_value() == server.url  # for the code that needs it
        with Cache.from_settings(settings) as cache:  # ... which gets the password through
            assert cache.connect(timeout=5) is State.READY
            assert cache.set("k", {1}) is True
            assert cache.get("k") == {1}
