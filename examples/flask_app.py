"""A Flask app whose view caches an expensive call through Flask-Caching on kvcache.

KVCACHE_URL=redis://127.0.0.1:6379/0 flask --app examples/flask_app.py run
# then open http://127.0.0.1:5000/report/7 (twice) and http://127.0.0.1:5000/cache

python examples/flask_app.py   # requests both pages with the test client, prints them
"""

from __future__ import annotations

import os
import time

from flask import Flask
from flask_caching import Cache

app = Flask(__name__)
app.config.update(
    SECRET_KEY="example only: set a real secret key in production",  # noqa: S106
    CACHE_TYPE="kvcache.integrations.flask.KVCache",
    CACHE_REDIS_URL=os.environ.get("KVCACHE_URL", "redis://127.0.0.1:6379/0"),
    CACHE_KEY_PREFIX="example_",
    CACHE_DEFAULT_TIMEOUT=60,
)
cache = Cache(app)


@cache.memoize()
def expensive_report(report_id: int) -> dict[str, object]:
    time.sleep(0.3)  # stands for a slow query
    return {"id": report_id, "rows": report_id * 100}


@app.route("/report/<int:report_id>")
def report(report_id: int) -> dict[str, object]:
    started = time.perf_counter()
    data = expensive_report(report_id)
    return {**data, "ms": round((time.perf_counter() - started) * 1000, 1)}


@app.route("/cache")
def cache_state() -> dict[str, object]:
    kv = cache.cache.kvcache  # the kvcache Cache under the Flask-Caching backend
    return {"state": kv.state.value, "stats": kv.stats.as_dict()}


if __name__ == "__main__":
    client = app.test_client()
    for page in ("/report/7", "/report/7", "/cache"):
        print(page, client.get(page).json)
