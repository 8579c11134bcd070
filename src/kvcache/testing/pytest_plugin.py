"""Opt-in pytest fixtures. Enable with ``pytest_plugins = ["kvcache.testing.pytest_plugin"]``.

``redis_server`` is one private ``redis-server`` per test session; ``redis_url`` is its URL
with a database flushed before each test. ``chaos_proxy`` is a fresh ``ChaosProxy`` in front of
that server for each test, so a test can break the network without breaking the server; it
forwards in a child process (``process=True``), so a test that keeps its own process busy
does not slow the network it measures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from kvcache.testing.chaos import ChaosProxy
from kvcache.testing.server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def chaos_proxy(redis_server: RedisServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(
        redis_server.host, redis_server.port, password=redis_server.password, process=True
    ) as proxy:
        yield proxy
