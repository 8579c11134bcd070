"""Opt-in pytest fixtures. Enable with ``pytest_plugins = ["kvcache.testing.pytest_plugin"]``.

``redis_server`` is one private ``redis-server`` per test session; ``redis_url`` is its URL
with a database flushed before each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from .server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
