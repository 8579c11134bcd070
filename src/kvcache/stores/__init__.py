"""Stores: where a cache keeps its bytes. ``open_store`` picks one from the settings' URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import AsyncStore, Store
from .memory import MemoryStore
from .redis import AsyncRedisStore, RedisStore

if TYPE_CHECKING:
    from ..settings import KVCacheSettings

__all__ = [
    "AsyncRedisStore",
    "AsyncStore",
    "MemoryStore",
    "RedisStore",
    "Store",
    "open_async_store",
    "open_store",
]


def open_store(settings: KVCacheSettings) -> Store:
    """The sync store the settings' URL names. No I/O: clients connect on first use."""
    from ..client import sync_client

    if settings.scheme == "memory":
        return MemoryStore(settings.memory_maxsize)
    return RedisStore(
        sync_client(settings),
        max_in_flight=settings.max_connections,
        wait_timeout=settings.op_timeout,
        connect_timeout=settings.connect_timeout,
    )


def open_async_store(settings: KVCacheSettings) -> Store | AsyncStore:
    from ..client import async_client

    if settings.scheme == "memory":
        return MemoryStore(settings.memory_maxsize)
    return AsyncRedisStore(
        lambda: async_client(settings),
        max_in_flight=settings.max_connections,
        wait_timeout=settings.op_timeout,
        connect_timeout=settings.connect_timeout,
    )
