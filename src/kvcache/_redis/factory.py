"""redis-py clients built from ``KVCacheSettings``: bounded timeouts, no hidden retry loops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from kvcache._core.timeouts import command_timeout
from kvcache._redis.auth.policy import ConnectionPolicy
from kvcache.errors import ConfigurationError

if TYPE_CHECKING:  # the settings import this package (url.py): a type only here
    from kvcache.settings import KVCacheSettings

C = TypeVar("C", redis.Redis, redis.asyncio.Redis)


def at_address(url: str, host: str, port: int) -> str:
    """``url`` pointed at another node (a cluster primary), credentials and options kept."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    where = f"[{host}]" if ":" in host else host
    netloc = f"{user}@{where}:{port}" if user else f"{where}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def seed_address(settings: KVCacheSettings) -> tuple[str, int]:
    """The URL's (host, port): a cluster's configured endpoint."""
    parts = urlsplit(settings.redis_url)
    try:
        return parts.hostname or "127.0.0.1", parts.port or 6379
    except ValueError:
        raise ConfigurationError("url is not a valid Redis URL (bad port)") from None


def _from_url(
    client_class: type[C],
    retry: Any,
    settings: KVCacheSettings,
    node: tuple[str, int] | None = None,
    policy: ConnectionPolicy | None = None,
) -> C:
    """A client on a plain, unbounded pool: the store bounds the commands in flight itself
    (well under 1 µs a command; redis.asyncio's BlockingConnectionPool costs ~24 µs of CPU per
    command, the sync one ~4 µs). ``retry`` is zero retries: redis-py 8 would
    otherwise retry a failed command 10 times with backoff, turning one dead socket into
    seconds."""
    url = settings.redis_url if node is None else at_address(settings.redis_url, *node)
    options: dict[str, Any] = {
        "retry": retry,
        "socket_timeout": command_timeout(settings.op_timeout),
        # A call that must open a connection stays within op_timeout too; the longer
        # connect_timeout is for probes, which run in the background.
        "socket_connect_timeout": min(
            settings.connect_timeout, command_timeout(settings.op_timeout)
        ),
        "decode_responses": False,
        # Off by default: CLIENT SETNAME is refused to least-privilege ACL users.
        "client_name": settings.client_name,
    }
    try:
        if policy is None:
            return client_class.from_url(url, **options)
        client = client_class(
            connection_pool=policy.pool(url, client_class is redis.asyncio.Redis, **options)
        )
        client.auto_close_connection_pool = True  # as from_url does: close() closes the pool
        return client
    except ValueError as exc:  # the message could quote the URL, so name only the setting
        raise ConfigurationError(f"url is not a valid Redis URL ({type(exc).__name__})") from None


def sync_client(
    settings: KVCacheSettings,
    node: tuple[str, int] | None = None,
    policy: ConnectionPolicy | None = None,
) -> redis.Redis:
    """A client for the URL's address, or for ``node`` (host, port) with the URL's options;
    ``policy``: how its connections authenticate (one per cache, see ``_redis/auth``)."""
    return _from_url(redis.Redis, redis.retry.Retry(NoBackoff(), 0), settings, node, policy)


def async_client(
    settings: KVCacheSettings,
    node: tuple[str, int] | None = None,
    policy: ConnectionPolicy | None = None,
) -> redis.asyncio.Redis:
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    return _from_url(redis.asyncio.Redis, retry, settings, node, policy)
