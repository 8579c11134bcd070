"""``kvcache demo`` runs end to end, with a private redis-server or without one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvcache.cli import main


def run_demo(*args: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kvcache.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    )
    return done.stdout


def test_demo_on_a_private_redis_server() -> None:
    out = run_demo()
    assert "Started a private redis-server" in out
    assert "RedisStore(127.0.0.1:" in out
    assert "get_many(['a', 'b', 'missing'])" in out
    assert "{'a': 1, 'b': [2, 3]}" in out
    assert "state=ready" in out
    assert (
        "Stats: {'hits': 4, 'misses': 2, 'fallback_hits': 0, 'fallback_misses': 0, "
        "'sets': 4, 'deletes': 5, 'errors': 0}"
    ) in out
    assert "Stopped the private redis-server" in out


def test_demo_without_redis_server_uses_memory() -> None:
    out = run_demo(KVCACHE_REDIS_SERVER="/nonexistent/redis-server")
    assert "running on the embedded memory store" in out
    assert "MemoryStore(" in out
    assert "'errors': 0" in out


def test_demo_against_a_given_url(redis_url: str) -> None:
    out = run_demo("--url", redis_url)
    assert f"Using the Redis at {redis_url}" in out
    assert "'errors': 0" in out


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("kvcache ")
