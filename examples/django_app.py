"""A one-file Django project whose view caches an expensive call through kvcache.

    KVCACHE_URL=redis://127.0.0.1:6379/0 python examples/django_app.py runserver
    # then open http://127.0.0.1:8000/report/7 (twice) and http://127.0.0.1:8000/cache

    python examples/django_app.py check-pages   # requests both pages, prints them, exits

Any Django command works (``runserver``, ``shell``, …). The cache is configured as any
Django cache is: CACHES with the kvcache backend and the URL from KVCACHE_URL.
"""

from __future__ import annotations

import os
import sys
import time

import django
from django.conf import settings

settings.configure(
    DEBUG=True,
    SECRET_KEY="example only: set a real secret key in production",  # noqa: S106
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    CACHES={
        "default": {
            "BACKEND": "kvcache.integrations.django.KVCache",
            "LOCATION": os.environ.get("KVCACHE_URL", "redis://127.0.0.1:6379/0"),
            "KEY_PREFIX": "example",
            "TIMEOUT": 60,
        }
    },
)
django.setup()

from django.core.cache import cache  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def expensive_report(report_id: int) -> dict[str, object]:
    time.sleep(0.3)  # stands for a slow query
    return {"id": report_id, "rows": report_id * 100}


def report(request: HttpRequest, report_id: int) -> JsonResponse:
    started = time.perf_counter()
    data = cache.get_or_set(f"report:{report_id}", lambda: expensive_report(report_id))
    return JsonResponse({**data, "ms": round((time.perf_counter() - started) * 1000, 1)})


def cache_state(request: HttpRequest) -> JsonResponse:
    kv = cache.kvcache  # the kvcache Cache under the Django backend
    return JsonResponse({"state": kv.state.value, "stats": kv.stats.as_dict()})


urlpatterns = [path("report/<int:report_id>", report), path("cache", cache_state)]


def check_pages() -> None:
    from django.test import Client

    client = Client()
    for page in ("/report/7", "/report/7", "/cache"):
        print(page, client.get(page).json())


if __name__ == "__main__":
    if sys.argv[1:] == ["check-pages"]:
        check_pages()
    else:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
