"""FastAPI: an ``AsyncCache`` made in the app's lifespan, handed to path operations by a
dependency, and a readiness endpoint.

    from fastapi import Depends, FastAPI
    from kvcache import AsyncCache
    from kvcache.integrations.fastapi import get_cache, health, lifespan

    app = FastAPI(lifespan=lifespan())          # settings from KVCACHE_* (or pass them)
    app.add_api_route("/health/cache", health)  # 200 while READY or DEGRADED, else 503

    @app.get("/users/{user_id}")
    async def user(user_id: int, cache: AsyncCache = Depends(get_cache)):
        return await cache.get_or_set(f"user:{user_id}", lambda: load_user(user_id), ttl=60)

With your own lifespan, open the cache inside it: ``async with open_cache() as cache:``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from kvcache._core.state import State
from kvcache._shells.async_cache import AsyncCache
from kvcache.settings import KVCacheSettings

CONNECT_WAIT = 1.0  # seconds the app's start waits for Redis (then it serves from memory)
SERVING = frozenset({State.READY, State.DEGRADED})  # DEGRADED still answers, from memory


@asynccontextmanager
async def open_cache(
    settings: KVCacheSettings | None = None, *, connect_wait: float = CONNECT_WAIT
) -> AsyncIterator[AsyncCache]:
    """An ``AsyncCache`` for the app's lifetime: connected (waiting at most
    ``connect_wait`` seconds for Redis), closed at the end."""
    cache = AsyncCache.from_settings(settings or KVCacheSettings())
    try:
        await cache.connect(connect_wait)
        yield cache
    finally:
        await cache.close()


def lifespan(
    settings: KVCacheSettings | None = None, *, connect_wait: float = CONNECT_WAIT
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """``FastAPI(lifespan=lifespan())``: the cache lives as long as the app."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_cache(settings, connect_wait=connect_wait) as cache:
            app.state.kvcache = cache
            yield {"kvcache": cache}

    return run


def get_cache(request: Request) -> AsyncCache:
    """The dependency: ``cache: AsyncCache = Depends(get_cache)``."""
    cache = getattr(request.state, "kvcache", None) or getattr(request.app.state, "kvcache", None)
    if not isinstance(cache, AsyncCache):
        raise RuntimeError(
            "no kvcache here: create the app with FastAPI(lifespan=lifespan()), or set "
            "app.state.kvcache to an AsyncCache"
        )
    return cache


async def health(request: Request, response: Response) -> dict[str, Any]:
    """For readiness probes: ``cache.health()`` as JSON, with status 200 while the cache
    serves (READY, or DEGRADED: from memory) and 503 while STARTING or CLOSED."""
    report = get_cache(request).health()
    response.status_code = 200 if report.state in SERVING else 503
    return _described(report)


def _described(report: Any) -> dict[str, Any]:
    described = {
        "state": report.state.value,
        "seconds_in_state": round(report.seconds_in_state, 3),
        "last_error": report.last_error,
        "journal_keys": report.journal_keys,
    }
    if report.shards:
        described["shards"] = {name: _described(s) for name, s in report.shards.items()}
    return described
