"""Real Redis servers for tests: yours and ours. No mocks, no fakeredis."""

from .chaos import ChaosProxy
from .cluster import RedisClusterServer
from .server import RedisServer, RedisServerNotFound, find_redis_server
from .tls import TLSFiles

__all__ = [
    "ChaosProxy",
    "RedisClusterServer",
    "RedisServer",
    "RedisServerNotFound",
    "TLSFiles",
    "find_redis_server",
]
