"""The examples in examples/ run as the README says, against Redis and against memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(script: str, url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        # A generous bound: these check what the examples print, and a loaded machine (the
        # soak next door) can hold a call past the default 0.25 s, which counts an error.
        env={**os.environ, "KVCACHE_URL": url, "KVCACHE_OP_TIMEOUT": "2"},
        check=True,
    )
    return done.stdout


@pytest.fixture(params=["redis", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("redis_url") if request.param == "redis" else "memory://"


def test_basic(url: str) -> None:
    out = run("basic.py", url)
    assert "attempt 1: {'id': 7, 'name': 'user 7'}" in out
    assert "attempt 2: {'id': 7, 'name': 'user 7'}" in out
    assert "state: ready" in out
    assert "'hits': 1, 'misses': 1, 'fallback_hits': 0, 'fallback_misses': 0, 'sets': 1" in out
    assert "'errors': 0" in out
    assert "cache error" not in out


def test_async_basic(url: str) -> None:
    out = run("async_basic.py", url)
    assert "state: ready" in out
    assert "100 concurrent requests, 1 computation" in out
    assert "'errors': 0" in out


@pytest.mark.parametrize(
    ("script", "args"),
    [("django_app.py", ["check-pages"]), ("flask_app.py", []), ("fastapi_app.py", [])],
)
def test_web_apps_cache_their_expensive_call(script: str, args: list[str], url: str) -> None:
    out = run(script, url, *args).splitlines()
    first, second, state = out[-3:]
    assert first.startswith("/report/7 ")
    assert "'rows': 700" in first
    assert "'rows': 700" in second
    slow = float(first.partition("'ms': ")[2].partition(",")[0].rstrip("}"))
    fast = float(second.partition("'ms': ")[2].partition(",")[0].rstrip("}"))
    assert slow >= 250  # computed (0.3 s)
    assert fast < 100  # from the cache
    assert "'state': 'ready'" in state
