"""The root adapter's view of the cluster as one "store" (``RootStore``), and ``clear()``'s
scan over every primary (``ScanAll``)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from kvcache._cluster.handover import CANDIDATES
from kvcache._cluster.routing import SHAPES
from kvcache._core.types import Call, Request

if TYPE_CHECKING:
    from kvcache._cluster.sharded import ShardedAdapter


class RootStore:
    """The root adapter's "store": its probe fetches the topology, and what it applies on
    recovery (the journal) or lets through while draining goes through the router. Its
    methods answer with generators, which the drivers run in place."""

    is_async = False

    def __init__(self, sharded: ShardedAdapter) -> None:
        self._sharded = sharded

    @property
    def probe_timeout(self) -> float:
        """Up to three nodes asked, one after another."""
        seed = self._sharded.nodes.node(self._sharded.nodes.seed)
        return float((CANDIDATES + 1) * seed.probe_timeout)

    @property
    def op_timeout(self) -> float:
        return float(self._sharded.nodes.op_timeout)

    @property
    def address(self) -> tuple[str, int | None, int]:
        return self._sharded.nodes.address  # type: ignore[no-any-return]

    def ping(self) -> Generator[Call, Any, None]:
        return self._sharded.refresh()

    def reset(self) -> None:
        """Nothing pooled of its own: each shard resets its node's pool when it recovers."""

    def __getattr__(self, method: str) -> Callable[..., Generator[Call, Any, Any]]:
        if method not in SHAPES:
            raise AttributeError(method)

        def routed(*args: Any) -> Generator[Call, Any, Any]:
            result: Any
            result, _ = yield from self._sharded.route(Request(method, args))
            return result

        return routed

    def __repr__(self) -> str:
        return repr(self._sharded.nodes)


class ScanAll:
    """Iterate a namespace across every primary (each node's SCAN in turn)."""

    def __init__(self, stores: list[Any], is_async: bool) -> None:
        self._stores = stores
        self._is_async = is_async

    def scan(self, prefix: bytes) -> Any:
        return self._ascan(prefix) if self._is_async else self._scan(prefix)

    def _scan(self, prefix: bytes) -> Iterator[bytes]:
        for store in self._stores:
            yield from store.scan(prefix)

    async def _ascan(self, prefix: bytes) -> Any:
        for store in self._stores:
            async for key in store.scan(prefix):
                yield key
