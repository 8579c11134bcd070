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


def _from_url(client_class: type[C], pool_class: Any, retry: Any, settings: KVCacheSettings) -> C:
    try:
        pool = pool_class.from_url(
            settings.url,
            # A caller past max_connections waits for a free connection, at most op_timeout:
            # the plain pool would fail it at once with "Too many connections".
            max_connections=settings.max_connections,
            timeout=settings.op_timeout,
            # retry=0: redis-py 8 would otherwise retry a failed command 10 times with
            # backoff, turning one dead socket into seconds.
            retry=retry,
            socket_timeout=settings.op_timeout,
            socket_connect_timeout=settings.connect_timeout,
            decode_responses=False,
            # Off by default: CLIENT SETNAME is refused to least-privilege ACL users.
            client_name=settings.client_name,
        )
    except ValueError as exc:  # the message could quote the URL, so name only the setting
        raise ConfigurationError(f"url is not a valid Redis URL ({type(exc).__name__})") from None
    return client_class.from_pool(pool)  # the client owns the pool: close() releases it


def sync_client(settings: KVCacheSettings) -> redis.Redis:
    retry = redis.retry.Retry(NoBackoff(), 0)
    return _from_url(redis.Redis, redis.BlockingConnectionPool, retry, settings)


def async_client(settings: KVCacheSettings) -> redis.asyncio.Redis:
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    return _from_url(redis.asyncio.Redis, redis.asyncio.BlockingConnectionPool, retry, settings)
