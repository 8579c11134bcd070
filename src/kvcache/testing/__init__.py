"""Real Redis servers for tests: yours and ours. No mocks, no fakeredis."""

from kvcache.testing.chaos import ChaosProxy
from kvcache.testing.cluster import RedisClusterServer
from kvcache.testing.server import RedisServer, RedisServerNotFound, find_redis_server
from kvcache.testing.tls import TLSFiles

__all__ = [
    "ChaosProxy",
    "RedisClusterServer",
    "RedisServer",
    "RedisServerNotFound",
    "TLSFiles",
    "find_redis_server",
]
