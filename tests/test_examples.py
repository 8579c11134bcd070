"""The examples in examples/ run as the README says, against Redis and against memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(script: str, url: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KVCACHE_URL": url},
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
