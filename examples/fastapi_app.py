"""A FastAPI app: an AsyncCache from the lifespan, a dependency, a readiness endpoint.

    pip install '.[fastapi]'   # FastAPI, uvicorn (the server) and httpx2 (for the TestClient)
    KVCACHE_URL=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app
    # then open http://127.0.0.1:8000/report/7 (twice) and http://127.0.0.1:8000/health/cache
    # (200 while Redis is READY, and also while DEGRADED: the cache serves from memory then)

    python examples/fastapi_app.py   # requests the pages with the TestClient, prints them

Settings come from KVCACHE_* variables.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Depends, FastAPI

from kvcache import AsyncCache
from kvcache.integrations.fastapi import get_cache, health, lifespan

app = FastAPI(lifespan=lifespan())
app.add_api_route("/health/cache", health)
CACHE = Depends(get_cache)


async def expensive_report(report_id: int) -> dict[str, Any]:
    await asyncio.sleep(0.3)  # stands for a slow query
    return {"id": report_id, "rows": report_id * 100}


@app.get("/report/{report_id}")
async def report(report_id: int, cache: AsyncCache = CACHE) -> dict[str, Any]:
    started = time.perf_counter()
    data = await cache.get_or_set(
        f"report:{report_id}", lambda: expensive_report(report_id), ttl=60
    )
    return {**data, "ms": round((time.perf_counter() - started) * 1000, 1)}


if __name__ == "__main__":
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for page in ("/report/7", "/report/7", "/health/cache"):
            print(page, client.get(page).json())
