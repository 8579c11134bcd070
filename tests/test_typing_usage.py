"""The README's snippets as a user writes them: run here against a real redis-server, and
type-checked by ``tox -e type`` with ``mypy --strict`` WITHOUT the pydantic mypy plugin (user
code does not have it). ``assert_type`` pins what the user's type checker infers."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import flask_caching
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from typing_extensions import assert_type

from kvcache import (
    FOREVER,
    AsyncCache,
    Cache,
    ErrorEvent,
    Health,
    KVCacheSettings,
    State,
    StateChange,
)
from kvcache.integrations.fastapi import get_cache, health, lifespan, open_cache
from kvcache.integrations.flask import KVCache
from kvcache.stores import RedisClusterStore
from kvcache.testing import ChaosProxy


def build_report() -> dict[str, int]:
    return {"rows": 3}


async def async_build_report() -> list[int]:
    await asyncio.sleep(0)
    return [1, 2, 3]


def test_use(redis_url: str) -> None:
    cache = Cache.from_url(redis_url, namespace="app", default_ttl=300)
    assert_type(cache, Cache)
    assert_type(cache.connect(timeout=2), State)
    assert_type(cache.set("user:7", {"name": "Ada"}), bool)
    assert cache.get("user:7") == {"name": "Ada"}
    assert cache.get("missing", default=0) == 0
    cache.set("token", "abc", ttl=30)
    cache.set("forever", "abc", ttl=FOREVER)
    report = cache.get_or_set("report", build_report, ttl=60)
    assert_type(report, dict[str, int])
    assert report == {"rows": 3}
    cache.set_many({"a": 1, "b": 2})
    found = cache.get_many(["a", "b", "c"])
    assert_type(found, dict[str, Any])
    assert found == {"a": 1, "b": 2}
    assert_type(cache.incr("visits"), int | None)
    assert_type(cache.ttl("token"), float | None)
    assert_type(cache.touch("token", 60), bool)
    assert "token" in cache
    keys = list(cache)
    assert_type(keys, list[str | bytes])
    assert sorted(k for k in keys if isinstance(k, str)) == sorted(
        ["user:7", "token", "forever", "report", "a", "b", "visits"]
    )
    assert_type(cache.clear(), int)
    cache.close()


def test_use_async(redis_url: str) -> None:
    async def main() -> None:
        async with AsyncCache.from_url(redis_url) as acache:
            assert_type(acache, AsyncCache)
            assert_type(await acache.connect(timeout=2), State)
            report = await acache.get_or_set("report", async_build_report, ttl=60)
            assert_type(report, list[int])  # the awaited value, not a coroutine
            assert report == [1, 2, 3]
            rows = await acache.get_or_set("rows", build_report)  # a plain factory too
            assert_type(rows, dict[str, int])
            assert rows == {"rows": 3}
            keys = [key async for key in acache]
            assert_type(keys, list[str | bytes])
            assert sorted(keys) == ["report", "rows"]

    asyncio.run(main())


def test_events_and_health(redis_url: str) -> None:
    errors: list[ErrorEvent] = []
    changes: list[StateChange] = []

    def on_error(event: ErrorEvent) -> None:
        errors.append(event)

    with Cache.from_url(redis_url, namespace="app") as cache:
        cache.on("error", on_error)
        cache.on("state", changes.append)
        cache.connect(timeout=2)
        report = cache.health()
        assert_type(report, Health)
        assert report.state is State.READY
        assert_type(report.last_error, str | None)
        # The first connect starts at construction: on a loaded machine it can end before
        # the handler is registered (CI, once), so the transition may not be seen.
        seen = [(c.previous, c.current) for c in changes]
        assert seen in ([], [(State.STARTING, State.READY)])
        assert errors == []


def test_set_while_redis_is_away(chaos_proxy: ChaosProxy, redis_url: str) -> None:
    """As the README says: True, stored in the fallback, and deleted in Redis on recovery."""
    with Cache.from_url(chaos_proxy.url, namespace="app", retry_max=0.05) as cache:
        assert cache.connect(timeout=2) is State.READY
        cache.set("k", "old")
        chaos_proxy.refuse()
        assert cache.set("k", "new") is True
        assert cache.state is State.DEGRADED
        assert cache.get("k") == "new"  # this process reads its own write
        assert cache.stats.fallback_hits == 1
        chaos_proxy.up()
        assert cache.connect(timeout=5) is State.READY
        assert cache.get("k") is None  # deleted in Redis: never the older "old"


def test_cluster_remap(redis_url: str) -> None:
    with Cache.from_url(f"{redis_url}?mode=cluster", connect_attempts=1) as cache:
        store = cache.store  # a Store, or in cluster mode a RedisClusterStore
        assert isinstance(store, RedisClusterStore)
        store.remap = lambda host_port: ("127.0.0.1", host_port[1])


def load_price() -> float:
    raise ConnectionError("the price service is down")


def test_fail_safe(redis_url: str) -> None:
    with Cache.from_url(redis_url, default_ttl=60, stale_ttl=3600) as cache:
        cache.connect(timeout=2)
        with pytest.raises(ConnectionError):  # nothing kept yet: the factory's error
            cache.get_or_set("price:42", load_price)
        cache.set("price:42", 9.5)
        price = cache.get_or_set("price:42", load_price)
        assert_type(price, float)
        assert price == 9.5


def test_settings_without_the_pydantic_plugin(redis_url: str) -> None:
    settings = KVCacheSettings(url=redis_url, namespace="app", default_ttl=60, op_timeout=0.25)
    # KVCacheSettings(**values) takes any keyword (a URL is a str, held as a SecretStr): a
    # typo is refused at construction, naming the closest setting.
    with pytest.raises(ValueError, match="did you mean 'namespace'"):
        KVCacheSettings(namespce="app")
    assert_type(settings.namespace, str)
    assert_type(settings.default_ttl, float | None)
    with Cache.from_settings(settings) as cache, Cache.from_settings() as from_env:
        assert_type(cache, Cache)
        assert_type(from_env, Cache)
        assert cache.namespace == "app"
    near = Cache.from_url(redis_url, namespace="app", near_cache=True)
    near.close()


User = dict[str, Any]


async def load_user(user_id: int) -> User:
    await asyncio.sleep(0)
    return {"id": user_id}


def test_fastapi(redis_url: str) -> None:
    app = FastAPI(lifespan=lifespan(KVCacheSettings(url=redis_url)))
    app.add_api_route("/health/cache", health)

    @app.get("/users/{user_id}")
    async def user(user_id: int, cache: AsyncCache = Depends(get_cache)) -> User:  # noqa: B008
        found = await cache.get_or_set(f"user:{user_id}", lambda: load_user(user_id), ttl=60)
        assert_type(found, User)
        return found

    with TestClient(app) as client:
        assert client.get("/users/7").json() == {"id": 7}
        assert client.get("/health/cache").status_code == 200


def test_fastapi_own_lifespan(redis_url: str) -> None:
    async def main() -> None:
        async with open_cache(KVCacheSettings(url=redis_url)) as cache:
            assert_type(cache, AsyncCache)
            assert cache.state is State.READY

    asyncio.run(main())


def test_flask(redis_url: str) -> None:
    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="kvcache.integrations.flask.KVCache",
        CACHE_REDIS_URL=redis_url,
        CACHE_KEY_PREFIX="myapp_",
        CACHE_DEFAULT_TIMEOUT=300,
        CACHE_OPTIONS={"op_timeout": 0.25},
        SECRET_KEY="not a real secret",
    )
    cache = flask_caching.Cache(app)

    @app.route("/report/<int:report_id>")
    @cache.memoize()
    def report(report_id: int) -> dict[str, int]:
        return {"id": report_id}

    assert app.test_client().get("/report/7").json == {"id": 7}
    # Flask-Caching types cache.cache as its own SimpleCache: a cast names the backend.
    backend = cast(KVCache, cache.cache)
    assert_type(backend.kvcache, Cache)
    assert backend.kvcache.state is State.READY
