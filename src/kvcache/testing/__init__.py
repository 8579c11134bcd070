"""Real Redis servers for tests: yours and ours. No mocks, no fakeredis."""

from .server import RedisServer, RedisServerNotFound, find_redis_server

__all__ = ["RedisServer", "RedisServerNotFound", "find_redis_server"]
