"""The store a cluster-aware cache is built on: a seed address, and one plain store per node.

It does no routing itself. ``sharding.ShardedAdapter`` routes each key to the store of its
slot's primary, gives every primary its own breaker, and keeps the topology fresh; this
class only makes, keeps and closes the per-node stores (``RedisStore`` / ``AsyncRedisStore``
with ``cluster=True``: multi-key commands one slot at a time). Construction does no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar, Generic, Literal, TypeVar

from ..topology import Remap, address, split_address
from .redis import AsyncRedisStore, Closeable, RedisStore

N = TypeVar("N", RedisStore, AsyncRedisStore)
ClusterMode = Literal["auto", "cluster"]


class _ClusterStoreBase(Generic[N]):
    sharded: ClassVar[bool] = True  # the facade puts a ShardedAdapter in front of it
    is_async: ClassVar[bool]

    def __init__(
        self,
        make_node: Callable[[str, int], N],
        seed: tuple[str, int],
        *,
        mode: ClusterMode = "auto",
        address_remap: Remap | None = None,
        topology_interval: float = 5.0,
        auth: Closeable | None = None,
    ) -> None:
        """``make_node(host, port)``: a store for one node (no I/O). ``seed``: the
        configured endpoint; it stays a place to ask for the topology whatever the cluster
        says. ``mode``: "cluster" insists on a cluster; "auto" also serves a server that is
        not one (as a one-node topology). ``address_remap``: maps the addresses the cluster
        announces to ones this process can reach. ``auth``: what the nodes' connections
        authenticate with, closed with the store."""
        self._make_node: Callable[[str, int], N] = make_node
        self.seed = address(*seed)
        self.mode = mode
        self.remap = address_remap
        self.topology_interval = topology_interval
        self._auth = auth
        self._nodes: dict[str, N] = {}
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int | None, int]:
        """The configured endpoint, for telemetry (cluster nodes use database 0)."""
        host, port = split_address(self.seed)
        return host, port, 0

    def node(self, name: str) -> N:
        """The store for ``name`` ("host:port"), made on first use."""
        store = self._nodes.get(name)
        if store is None:
            with self._lock:
                store = self._nodes.get(name)
                if store is None:
                    store = self._nodes[name] = self._make_node(*split_address(name))
        return store

    def forget(self, name: str) -> N | None:
        """Drop a node that left the topology (the seed stays); the caller closes it."""
        if name == self.seed:
            return None
        with self._lock:
            return self._nodes.pop(name, None)

    def _all(self) -> list[N]:
        with self._lock:
            return list(self._nodes.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, mode={self.mode})"


class RedisClusterStore(_ClusterStoreBase[RedisStore]):
    is_async: ClassVar[bool] = False

    def close(self) -> None:
        for store in self._all():
            store.close()
        if self._auth is not None:
            self._auth.close()


class AsyncRedisClusterStore(_ClusterStoreBase[AsyncRedisStore]):
    is_async: ClassVar[bool] = True

    async def close(self) -> None:
        """Close this event loop's connections to every node."""
        for store in self._all():
            await store.close()
        if self._auth is not None:
            self._auth.close()
