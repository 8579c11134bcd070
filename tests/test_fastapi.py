"""The FastAPI integration through FastAPI's TestClient (its lifespan runs): the dependency,
the readiness endpoint, against a real redis-server and with Redis blackholed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from conftest import PAGE_BOUND, slowest_page
from kvcache import AsyncCache
from kvcache.integrations.fastapi import get_cache, health, lifespan
from kvcache.settings import KVCacheSettings
from kvcache.testing import ChaosProxy, RedisServer

pytestmark = pytest.mark.redis


CACHE = Depends(get_cache)


def make_app(url: str) -> tuple[FastAPI, dict[str, int]]:
    app = FastAPI(lifespan=lifespan(KVCacheSettings(url=url, namespace="api")))
    app.add_api_route("/health/cache", health)
    loads = {"user": 0}

    async def load_user(user_id: int) -> dict[str, Any]:
        loads["user"] += 1
        return {"id": user_id, "name": f"user {user_id}"}

    @app.get("/users/{user_id}")
    async def user(user_id: int, cache: AsyncCache = CACHE) -> dict[str, Any]:
        return await cache.get_or_set(f"user:{user_id}", lambda: load_user(user_id), ttl=60)

    return app, loads


@pytest.fixture
def client(redis_url: str) -> Iterator[tuple[TestClient, dict[str, int]]]:
    app, loads = make_app(redis_url)
    with TestClient(app) as made:
        yield made, loads


def test_the_dependency_serves_a_cache_from_the_lifespan(
    client: tuple[TestClient, dict[str, int]], redis_url: str
) -> None:
    http, loads = client
    assert http.get("/users/7").json() == {"id": 7, "name": "user 7"}
    assert http.get("/users/7").json() == {"id": 7, "name": "user 7"}
    assert loads["user"] == 1
    report = http.get("/health/cache")
    assert report.status_code == 200
    assert report.json()["state"] == "ready"


def test_health_is_503_while_the_cache_cannot_serve(redis_url: str) -> None:
    app = FastAPI()
    app.add_api_route("/health/cache", health)
    app.state.kvcache = cache = AsyncCache.from_url(redis_url)  # not connected: STARTING
    with TestClient(app) as http:
        report = http.get("/health/cache")
        assert (report.status_code, report.json()["state"]) == (503, "starting")
        asyncio.run(cache.close())
        report = http.get("/health/cache")
        assert (report.status_code, report.json()["state"]) == (503, "closed")


def test_without_the_lifespan_the_dependency_says_what_to_do(redis_url: str) -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(cache: AsyncCache = CACHE) -> None:
        return None

    with TestClient(app) as http, pytest.raises(RuntimeError, match="lifespan"):
        http.get("/x")


def test_pages_keep_answering_fast_while_redis_is_blackholed(redis_server: RedisServer) -> None:
    with ChaosProxy(redis_server.host, redis_server.port) as proxy:
        app, _ = make_app(proxy.url)
        with TestClient(app) as http:
            assert http.get("/users/1").status_code == 200
            proxy.blackhole()

            def page(n: int) -> None:
                response = http.get(f"/users/{n % 3}")
                assert response.status_code == 200
                assert response.json()["id"] == n % 3

            assert slowest_page(page) < PAGE_BOUND
            report = http.get("/health/cache")
            assert report.status_code == 200  # DEGRADED still serves
            assert report.json()["state"] == "degraded"
            assert report.json()["last_error"] == "TimeoutError"
            proxy.up()


def test_the_first_write_through_the_lifespan_lands_in_redis(redis_url: str) -> None:
    import redis

    app = FastAPI(lifespan=lifespan(KVCacheSettings(url=redis_url, namespace="api")))

    @app.post("/remember")
    async def remember(cache: AsyncCache = CACHE) -> bool:
        return await cache.set("a", 1)

    with TestClient(app) as http:
        assert http.post("/remember").json() is True
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.get("api:a") == b"1"
