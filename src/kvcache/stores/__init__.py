"""Stores: where a cache keeps its bytes. ``open_store`` picks one from the settings' URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvcache._cluster.store import AsyncRedisClusterStore, RedisClusterStore
from kvcache._core.protocols import AsyncStore, Store
from kvcache._redis.async_store import AsyncRedisStore
from kvcache._redis.store import RedisStore
from kvcache._redis.stream import StreamReader
from kvcache.stores.memory import MemoryStore

if TYPE_CHECKING:
    from redis.credentials import CredentialProvider

    from kvcache.settings import KVCacheSettings

__all__ = [
    "AsyncRedisClusterStore",
    "AsyncRedisStore",
    "AsyncStore",
    "MemoryStore",
    "RedisClusterStore",
    "RedisStore",
    "Store",
    "open_async_store",
    "open_store",
]


def _limits(settings: KVCacheSettings) -> dict[str, Any]:
    return {
        "max_in_flight": settings.max_connections,
        "wait_timeout": settings.op_timeout,
        "connect_timeout": settings.connect_timeout,
    }


def _cluster_options(settings: KVCacheSettings, policy: Any) -> dict[str, Any]:
    return {
        "mode": settings.resolved_mode,
        "topology_interval": settings.topology_interval,
        "auth": policy,
    }


def _clustered(settings: KVCacheSettings) -> bool:
    """Cluster-aware (auto or cluster mode)? A unix socket is one server by nature."""
    return settings.scheme != "unix" and settings.resolved_mode != "standalone"


def open_store(
    settings: KVCacheSettings, *, credential_provider: CredentialProvider | None = None
) -> Store | RedisClusterStore:
    """The sync store the settings' URL names. No I/O: clients connect on first use.
    ``credential_provider``: what every connection authenticates with, instead of the
    URL's password or the IAM provider ``settings.iam`` describes."""
    from kvcache._redis.auth import connection_policy
    from kvcache._redis.factory import seed_address, sync_client

    if settings.scheme == "memory":
        return MemoryStore(settings.memory_maxsize)
    policy = connection_policy(settings, credential_provider)  # one for every node
    if not _clustered(settings):
        return RedisStore(sync_client(settings, policy=policy), **_limits(settings), auth=policy)
    return RedisClusterStore(
        lambda host, port: RedisStore(
            sync_client(settings, (host, port), policy), cluster=True, **_limits(settings)
        ),
        seed_address(settings),
        **_cluster_options(settings, policy),
    )


def open_async_store(
    settings: KVCacheSettings, *, credential_provider: CredentialProvider | None = None
) -> Store | AsyncStore | AsyncRedisClusterStore:
    """As ``open_store``, for ``AsyncCache``."""
    from kvcache._redis.auth import connection_policy
    from kvcache._redis.factory import async_client, seed_address, sync_client

    if settings.scheme == "memory":
        return MemoryStore(settings.memory_maxsize)
    policy = connection_policy(settings, credential_provider)

    def reader(node: tuple[str, int] | None) -> Callable[[float], StreamReader]:
        def open_reader(block: float) -> StreamReader:  # the near cache's listener: a thread
            sync = RedisStore(sync_client(settings, node, policy), **_limits(settings))
            return sync.stream_reader(block)

        return open_reader

    if not _clustered(settings):
        return AsyncRedisStore(
            lambda: async_client(settings, policy=policy),
            **_limits(settings),
            auth=policy,
            reader=reader(None),
        )
    return AsyncRedisClusterStore(
        lambda host, port: AsyncRedisStore(
            lambda: async_client(settings, (host, port), policy),
            cluster=True,
            **_limits(settings),
            reader=reader((host, port)),
        ),
        seed_address(settings),
        **_cluster_options(settings, policy),
    )
