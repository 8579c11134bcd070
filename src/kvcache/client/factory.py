"""redis-py clients built from ``KVCacheSettings``: bounded timeouts, no hidden retry loops."""

from __future__ import annotations

from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from ..errors import ConfigurationError
from ..settings import KVCacheSettings

C = TypeVar("C", redis.Redis, redis.asyncio.Redis)


def _from_url(client_class: type[C], pool_class: Any, settings: KVCacheSettings, **pool: Any) -> C:
    try:
        connections = pool_class.from_url(
            settings.url,
            socket_timeout=settings.op_timeout,
            socket_connect_timeout=settings.connect_timeout,
            decode_responses=False,
            # Off by default: CLIENT SETNAME is refused to least-privilege ACL users.
            client_name=settings.client_name,
            **pool,
        )
    except ValueError as exc:  # the message could quote the URL, so name only the setting
        raise ConfigurationError(f"url is not a valid Redis URL ({type(exc).__name__})") from None
    return client_class.from_pool(connections)  # the client owns the pool: close() releases it


# retry=0 on both: redis-py 8 would otherwise retry a failed command 10 times with backoff,
# turning one dead socket into seconds.


def sync_client(settings: KVCacheSettings) -> redis.Redis:
    """Past ``max_connections`` a caller waits for a free connection, at most ``op_timeout``
    (the plain pool would fail it at once with "Too many connections")."""
    return _from_url(
        redis.Redis,
        redis.BlockingConnectionPool,
        settings,
        retry=redis.retry.Retry(NoBackoff(), 0),
        max_connections=settings.max_connections,
        timeout=settings.op_timeout,
    )


def async_client(settings: KVCacheSettings) -> redis.asyncio.Redis:
    """An unbounded pool: ``AsyncRedisStore`` bounds the commands in flight itself, with a
    semaphore (under 1 µs a command, where redis.asyncio's BlockingConnectionPool costs ~24 µs
    of CPU per command: an asyncio.Condition, a timeout context and metrics hooks)."""
    return _from_url(
        redis.asyncio.Redis,
        redis.asyncio.ConnectionPool,
        settings,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )
