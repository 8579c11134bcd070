"""The Django backend, through Django itself: ``caches``, settings overrides, the test client,
``cache_page``, the cache middleware and template fragment caching, against a real
redis-server, then with Redis blackholed through a ChaosProxy."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
import redis
from django.conf import settings

from conftest import PAGE_BOUND, planted_pickle, slowest_page

if not settings.configured:
    settings.configure(
        SECRET_KEY="a test secret key that is long enough",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes"],
        MIDDLEWARE=[],
        DATABASES={},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        USE_TZ=True,
    )
    django.setup()

from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache as default_cache
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.template import Context, Template
from django.test import Client, override_settings
from django.urls import path
from django.views.decorators.cache import cache_page

from kvcache import State, ValueTooLargeError
from kvcache._core.codec import PLAIN
from kvcache.integrations.django import close_all
from kvcache.testing import ChaosProxy, RedisServer

pytestmark = pytest.mark.redis
BACKEND = "kvcache.integrations.django.KVCache"
calls = {"expensive": 0}


@cache_page(60)
def expensive(request: HttpRequest) -> HttpResponse:
    calls["expensive"] += 1
    return HttpResponse(f"computed {calls['expensive']}")


def fragment(request: HttpRequest) -> HttpResponse:
    template = Template("{% load cache %}{% cache 60 box %}box {{ n }}{% endcache %}")
    return HttpResponse(template.render(Context({"n": request.GET["n"]})))


urlpatterns = [path("expensive", expensive), path("fragment", fragment)]


def caches_on(url: str, **extra: Any) -> dict[str, Any]:
    entry = {"BACKEND": BACKEND, "LOCATION": url, **extra}
    return {"default": entry, "other": {**entry, "KEY_PREFIX": "other"}}


@pytest.fixture(autouse=True)
def fresh_backends() -> Iterator[None]:
    yield
    close_all()  # no prober left behind on a proxy that is gone


@pytest.fixture
def cache(redis_url: str) -> Iterator[Any]:
    with override_settings(CACHES=caches_on(redis_url)):
        yield default_cache


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


# -- BaseCache, as Django documents it --------------------------------------------------------


def test_set_get_and_any_picklable_value(cache: Any, raw: redis.Redis) -> None:
    model = ContentType(app_label="shop", model="order")
    values = {"int": 7, "str": "text", "none": None, "dict": {"a": [1, 2]}, "model": model}
    for key, value in values.items():
        cache.set(key, value)
    assert cache.get("int") == 7
    assert cache.get("none", "default") is None  # a stored None is a value, not a miss
    assert cache.get("missing", "default") == "default"
    got = cache.get("model")
    assert isinstance(got, ContentType)
    assert (got.app_label, got.model) == ("shop", "order")
    assert raw.exists("django:1:int")  # Django's key layout: <prefix or namespace>:<version>:<key>


def test_add_only_stores_absent_keys(cache: Any) -> None:
    assert cache.add("k", 1) is True
    assert cache.add("k", 2) is False
    assert cache.get("k") == 1


def test_timeouts_none_zero_negative_and_default(cache: Any, raw: redis.Redis) -> None:
    cache.set("forever", 1, timeout=None)
    assert raw.ttl("django:1:forever") == -1
    cache.set("default", 1)
    assert 290 < raw.ttl("django:1:default") <= 300  # Django's default TIMEOUT
    cache.set("short", 1, timeout=2.5)
    assert 0 < raw.pttl("django:1:short") <= 2500
    cache.set("gone", 1)
    cache.set("gone", 2, timeout=0)  # 0: do not cache (and forget the old value)
    assert cache.get("gone") is None
    cache.set("negative", 1, timeout=-5)
    assert not cache.has_key("negative")
    assert cache.add("zero", 1, timeout=0) is True  # "would have been added", but is not kept
    assert not cache.has_key("zero")


def test_touch(cache: Any, raw: redis.Redis) -> None:
    cache.set("k", 1, timeout=100)
    assert cache.touch("k", None) is True
    assert raw.ttl("django:1:k") == -1
    assert cache.touch("k", 10) is True
    assert 0 < raw.ttl("django:1:k") <= 10
    assert cache.touch("missing", 10) is False
    assert cache.touch("k", 0) is True  # expires it now
    assert cache.get("k") is None


def test_delete_and_has_key(cache: Any) -> None:
    cache.set("k", 1)
    assert cache.has_key("k")
    assert "k" in cache
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert not cache.has_key("k")


def test_get_many_set_many_delete_many(cache: Any) -> None:
    assert cache.set_many({"a": 1, "b": {"x": 2}}) == []
    assert cache.get_many(["a", "b", "missing"]) == {"a": 1, "b": {"x": 2}}
    cache.delete_many(["a", "missing"])
    assert cache.get_many(["a", "b"]) == {"b": {"x": 2}}
    assert cache.set_many({}) == []


def test_incr_decr_follow_django(cache: Any) -> None:
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("missing")
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 6) == 10
    assert cache.get("n") == 10


def test_versions(cache: Any) -> None:
    cache.set("k", "v1")
    cache.set("k", "v2", version=2)
    assert cache.get("k") == "v1"
    assert cache.get("k", version=2) == "v2"
    assert cache.incr_version("k") == 2  # moves version 1 to 2
    assert cache.get("k") is None
    assert cache.get("k", version=2) == "v1"
    assert cache.decr_version("k", version=2) == 1
    assert cache.get("k") == "v1"
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("missing")


def test_get_or_set(cache: Any) -> None:
    assert cache.get_or_set("k", lambda: "computed") == "computed"
    assert cache.get_or_set("k", lambda: "again") == "computed"
    assert cache.get_or_set("none", None) is None


def test_key_prefixes_and_clear_stay_in_their_namespace(cache: Any, raw: redis.Redis) -> None:
    other = caches["other"]
    cache.set("k", "default's")
    other.set("k", "other's")
    assert raw.exists("other:1:k")  # KEY_PREFIX "other" is the namespace: Django's layout
    raw.set("foreign", b"not ours")
    cache.clear()
    assert cache.get("k") is None
    assert other.get("k") == "other's"
    assert raw.get("foreign") == b"not ours"  # never FLUSHDB


def test_custom_key_function(redis_url: str, raw: redis.Redis) -> None:
    entry = {
        "BACKEND": BACKEND,
        "LOCATION": redis_url,
        "KEY_PREFIX": "p",
        "KEY_FUNCTION": lambda key, prefix, version: f"{prefix}/{version}/{key}",
    }
    with override_settings(CACHES={"default": entry}):
        default_cache.set("k", 1)
        assert default_cache.get("k") == 1
    assert raw.exists("p:p/1/k")


def test_large_and_unpicklable_values(cache: Any) -> None:
    big = "x" * (2 * 1024 * 1024)
    cache.set("big", big)
    assert cache.get("big") == big
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError, ValueError)):
        cache.set("bad", lambda: None)
    assert cache.get("bad") is None


def test_values_are_signed_with_a_key_from_secret_key(cache: Any, raw: redis.Redis) -> None:
    cache.set("k", {"a": 1})
    stored = raw.get("django:1:k")
    assert stored == PLAIN + pickle.dumps({"a": 1}, pickle.HIGHEST_PROTOCOL) + stored[-32:]
    raw.set("django:1:k", PLAIN + pickle.dumps({"planted": True}))  # valid, but unsigned
    assert cache.get("k", "default") == "default"


def test_a_pickle_serializer_option_is_still_signed(
    redis_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    entry = caches_on(redis_url, OPTIONS={"SERIALIZER": "pickle"})
    with override_settings(CACHES=entry):
        default_cache.set("mine", {1, 2})
        assert default_cache.get("mine") == {1, 2}
        raw.set("django:1:k", planted_pickle(marker))
        assert default_cache.get("k", "default") == "default"  # a miss, not the planted code
        assert not marker.exists()


def test_async_methods_run_on_the_async_cache(cache: Any) -> None:
    async def scenario() -> None:
        assert await cache.aadd("k", 1) is True
        assert await cache.aadd("k", 2) is False
        assert await cache.aget("k") == 1
        await cache.aset("m", {"x": 1}, timeout=None)
        assert await cache.aget_many(["k", "m", "missing"]) == {"k": 1, "m": {"x": 1}}
        assert await cache.aincr("k", 4) == 5
        assert await cache.adecr("k") == 4
        with pytest.raises(ValueError, match="not found"):
            await cache.aincr("missing")
        assert await cache.ahas_key("m")
        assert await cache.atouch("m", 10) is True
        assert await cache.aset_many({"a": 1}) == []
        assert await cache.adelete("a") is True
        await cache.adelete_many(["k", "m"])
        assert await cache.aget("k", "gone") == "gone"
        assert await cache.aget_or_set("g", lambda: "made") == "made"
        await cache.aclear()
        assert await cache.aget("g") is None

    asyncio.run(scenario())
    assert cache.async_kvcache.stats.errors == 0
    assert cache.async_kvcache.stats.hits >= 3  # answered by the AsyncCache itself


def test_every_thread_shares_one_kvcache_cache(cache: Any) -> None:
    """Django makes a backend object per thread; they share one pool and one prober."""

    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(caches["default"]))
    thread.start()
    thread.join()
    assert seen[0] is not caches["default"]
    assert seen[0].kvcache is caches["default"].kvcache


def test_close_after_a_request_keeps_the_cache_usable(cache: Any) -> None:
    cache.set("k", 1)
    cache.close()  # what Django's request_finished signal does
    assert cache.get("k") == 1
    assert cache.kvcache.state is State.READY


# -- views --------------------------------------------------------------------------------------


def test_cache_page_and_template_fragments(cache: Any) -> None:
    client = Client()
    calls["expensive"] = 0
    assert client.get("/expensive").content == b"computed 1"
    assert client.get("/expensive").content == b"computed 1"  # from the cache
    assert calls["expensive"] == 1
    assert client.get("/fragment?n=1").content == b"box 1"
    assert client.get("/fragment?n=2").content == b"box 1"  # the fragment is cached


def test_cache_middleware(redis_url: str) -> None:
    middleware = [
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    with override_settings(
        CACHES=caches_on(redis_url), MIDDLEWARE=middleware, CACHE_MIDDLEWARE_SECONDS=30
    ):
        client = Client()
        calls["expensive"] = 0
        first = client.get("/fragment?n=7")
        second = client.get("/fragment?n=7")
        assert first.content == second.content == b"box 7"
        assert "max-age=30" in second["Cache-Control"]
        assert any(key.startswith(b"django:1:views.decorators.cache") for key in _keys(redis_url))


def _keys(url: str) -> list[bytes]:
    with redis.Redis.from_url(url) as client:
        return list(client.scan_iter("django:*"))


# -- with Redis cut off -------------------------------------------------------------------------


@pytest.fixture
def blackholed(redis_server: RedisServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(redis_server.host, redis_server.port) as proxy:
        yield proxy


def test_pages_keep_rendering_fast_while_redis_is_blackholed(blackholed: ChaosProxy) -> None:
    with override_settings(CACHES=caches_on(blackholed.url)):
        client = Client()
        calls["expensive"] = 0
        assert client.get("/expensive").status_code == 200
        assert caches["default"].kvcache.state is State.READY
        blackholed.blackhole()

        def page(n: int) -> None:
            assert client.get(f"/fragment?n={n}").status_code == 200
            assert client.get("/expensive").status_code == 200

        assert slowest_page(page) < PAGE_BOUND
        assert caches["default"].kvcache.state is State.DEGRADED
        blackholed.up()


def test_set_many_reports_every_key_when_nothing_can_store_them(
    blackholed: ChaosProxy,
) -> None:
    entry = caches_on(blackholed.url, OPTIONS={"FALLBACK": "none"})
    blackholed.refuse()
    with override_settings(CACHES=entry):
        assert sorted(default_cache.set_many({"a": 1, "b": 2})) == ["a", "b"]
        assert default_cache.get("a", "default") == "default"


def test_the_first_write_of_a_process_lands_in_redis(redis_url: str, raw: redis.Redis) -> None:
    """No connect wait of the backend's own: the core's first call waits for the first
    connect (op_timeout at most), so a fresh process's first set reaches Redis."""
    options = {"NAMESPACE": "first", "OP_TIMEOUT": 2.0}  # generous, for a loaded machine
    with override_settings(CACHES=caches_on(redis_url, OPTIONS=options)):
        caches["default"].set("a", 1)  # the backend's first call: no connect() before it
        assert raw.exists("first:1:a")
        assert asyncio.run(caches["default"].aget("a")) == 1


def test_no_use_waits_longer_than_op_timeout_while_redis_is_down_at_start(
    blackholed: ChaosProxy,
) -> None:
    """Django makes a backend per thread (per request task under ASGI): with Redis away at
    start, the first use waits at most op_timeout, later ones (any thread) not at all."""
    blackholed.blackhole()
    options = {"OP_TIMEOUT": 0.2, "CONNECT_TIMEOUT": 2.0}
    with override_settings(CACHES=caches_on(blackholed.url, OPTIONS=options)):
        started = time.monotonic()
        caches["default"].get("k")  # waits for the first attempt, at most op_timeout
        asyncio.run(caches["default"].aget("k"))
        assert time.monotonic() - started < 1.5  # not the attempt's 2 x connect_timeout
        took: list[float] = []

        def request() -> None:
            started = time.monotonic()
            caches["default"].get("k")  # a new backend object in this thread
            asyncio.run(caches["default"].aget("k"))
            took.append(time.monotonic() - started)

        threads = [threading.Thread(target=request) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(took) == 4
        assert max(took) < 0.3  # nobody waited again
        blackholed.up()


def test_backends_held_across_close_all_get_new_caches(cache: Any) -> None:
    cache.set("k", 1)
    close_all()
    cache.set("k", 2)  # the same backend object: new shared caches, no CacheClosedError
    assert cache.get("k") == 2
    assert cache.kvcache.state is State.READY


def test_option_names_in_any_case(redis_url: str, raw: redis.Redis) -> None:
    entry = {"BACKEND": BACKEND, "LOCATION": redis_url, "KEY_PREFIX": "p"}
    entry["OPTIONS"] = {"namespace": "ns", "Connect_Timeout": 0.5, "Op_Timeout": 0.5}
    with override_settings(CACHES={"default": entry}):
        default_cache.set("k", 1)
    assert raw.exists("ns:p:1:k")  # the prefix is kept when the namespace differs


def test_a_timeout_past_a_century_is_forever(cache: Any, raw: redis.Redis) -> None:
    cache.set("k", 1, timeout=200 * 365 * 86400)
    assert raw.ttl("django:1:k") == -1


def test_connect_wait_is_ignored_with_a_deprecation_warning(redis_url: str) -> None:
    with override_settings(CACHES=caches_on(redis_url, OPTIONS={"CONNECT_WAIT": 2})):
        with pytest.warns(DeprecationWarning, match="CONNECT_WAIT"):
            caches["default"].set("k", 1)
        assert caches["default"].get("k") == 1


def test_an_empty_secret_key_is_only_needed_for_pickle(redis_url: str) -> None:
    """SECRET_KEY is read only when signed pickle needs it: a JSON cache works without it,
    and default pickle without it is kvcache's clear error, not Django's."""
    from kvcache.errors import ConfigurationError

    json_cache = caches_on(redis_url, OPTIONS={"SERIALIZER": "json", "NAMESPACE": "nokey"})
    with override_settings(SECRET_KEY="", CACHES=json_cache):
        caches["default"].set("k", {"a": 1})
        assert caches["default"].get("k") == {"a": 1}
    with (
        override_settings(SECRET_KEY="", CACHES=caches_on(redis_url)),
        pytest.raises(ConfigurationError, match="SECRET_KEY"),
    ):
        caches["default"].set("k", 1)


def test_memory_bounds_come_from_the_options(redis_url: str) -> None:
    options = {"MAX_VALUE_SIZE": 1000, "FALLBACK_MAX_BYTES": 100_000}
    with override_settings(CACHES=caches_on(redis_url, OPTIONS=options)):
        with pytest.raises(ValueTooLargeError, match="max_value_size"):
            default_cache.set("big", "x" * 2000)
        assert default_cache.get("big") is None
        assert "max_bytes=100000," in (default_cache.kvcache.health().fallback or "")
