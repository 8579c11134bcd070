"""The store a cluster-aware cache is built on: a seed address, and one plain store per node.

It does no routing itself. ``sharding.ShardedAdapter`` routes each key to the store of its
slot's primary, gives every primary its own breaker, and keeps the topology fresh; this
class only makes, keeps and closes the per-node stores (``RedisStore`` / ``AsyncRedisStore``
with ``cluster=True``: multi-key commands one slot at a time). Construction does no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar

from kvcache._cluster.topology import Remap, address, split_address
from kvcache._core import forks
from kvcache._core.protocols import Closeable
from kvcache._redis.async_store import AsyncRedisStore
from kvcache._redis.store import RedisStore
from kvcache._redis.stream import StreamReader
from kvcache.errors import CacheUnavailableError, KVCacheError, RedirectError

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
        forks.register(self)

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # (a thread may have held it: the listener's node())

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

    @property
    def op_timeout(self) -> float:
        """The bound of a call, as the seed's store has it (every node's is the same)."""
        return self.node(self.seed).op_timeout

    def reachable(self, announced: str) -> str:
        """The address to dial for one the cluster announced ("host:port")."""
        remap = self.remap
        return announced if remap is None else address(*remap(split_address(announced)))

    def stream_reader(self, block: float, locate: Callable[[], str | None]) -> ClusterStreamReader:
        """The near cache listener's connection, to whichever primary serves the stream
        (``locate``: the router's current answer)."""
        return ClusterStreamReader(self, block, locate)

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


FOLLOW = 3  # MOVED replies followed in one call before giving up (the feed retries later)


class ClusterStreamReader:
    """The near cache listener's connection in cluster mode: a ``StreamReader`` to the
    primary that serves the stream's slot. It asks ``locate`` (the router's slot map) where
    that is each time it connects, and follows a MOVED reply at once (a resharding, a
    failover). ASK and TRYAGAIN (the slot half migrated) fail the call: the listener retries
    after a backoff, bypassing the near cache meanwhile."""

    is_async: ClassVar[bool] = False

    def __init__(
        self, nodes: _ClusterStoreBase[Any], block: float, locate: Callable[[], str | None]
    ) -> None:
        self._nodes = nodes
        self._block = block
        self._locate = locate
        self._moved_to: str | None = None  # where the last MOVED pointed
        self._reader: StreamReader | None = None
        self._closed = False
        self._lock = threading.Lock()  # close() comes from another thread
        forks.register(self)

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # (the StreamReader drops its own connection)

    def position(self, stream: bytes) -> tuple[bytes, int] | None:
        return self._call("position", stream)  # type: ignore[no-any-return]

    def snapshot(self, stream: bytes, after: bytes, count: int) -> Any:
        return self._call("snapshot", stream, after, count)

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        self._call("publish", stream, fields, maxlen)

    def wait(self, stream: bytes, after: bytes, block_ms: int) -> None:
        self._call("wait", stream, after, block_ms)

    def close(self, *, final: bool = False) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
            self._closed = self._closed or final
        if reader is not None:
            reader.close(final=True)

    def _call(self, method: str, *args: Any) -> Any:
        for _ in range(FOLLOW):
            reader = self._connected()
            try:
                return getattr(reader, method)(*args)
            except RedirectError as redirect:
                self.close()
                if redirect.kind != "MOVED":
                    raise
                self._moved_to = self._nodes.reachable(redirect.address)
            except KVCacheError:
                self.close()
                self._moved_to = None  # reconnect where the slot map says
                raise
        raise CacheUnavailableError("the near cache's stream keeps moving")

    def _connected(self) -> StreamReader:
        with self._lock:
            if self._closed:
                raise CacheUnavailableError("the near cache listener is closed")
            if self._reader is None:
                name = self._moved_to or self._locate() or self._nodes.seed
                self._reader = self._nodes.node(name).stream_reader(self._block)
            return self._reader
