"""The cluster router: each call to the shards its keys live on (multi-key calls grouped per
shard), MOVED followed at once (the slot map patched), ASK re-sent after ASKING, TRYAGAIN
key by key. A mixin of ``ShardedAdapter``: pure, every network call is yielded."""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kvcache._cluster.refresh import RefreshSchedule
from kvcache._cluster.topology import Topology
from kvcache._core.breaker import Adapter
from kvcache._core.resilience import ALL_KEYS, UNJOURNALED, Offline, Routed
from kvcache._core.state import State
from kvcache._core.types import Call, Request, request
from kvcache._redis.plans import ask_commands
from kvcache._redis.store import RedisStore
from kvcache.errors import (
    CacheClosedError,
    CacheUnavailableError,
    RedirectError,
    StoreError,
)

if TYPE_CHECKING:
    import threading

    from kvcache._cluster.handover import Installing
    from kvcache._cluster.refresh import RefreshSchedule

_CLOSED = State.CLOSED

ONE, MANY, ITEMS, ALL = "one", "many", "items", "all"
SHAPES = {  # how each store method names its keys: args[0] is a key, a key list, items...
    "get": ONE,
    "exists": ONE,
    "pttl": ONE,
    "set": ONE,
    "add": ONE,
    "incr": ONE,
    "expire": ONE,
    "get_with_ttl": ONE,
    "replace": ONE,
    "publish": ONE,  # args[0]: the near cache's stream key
    "get_many": MANY,
    "delete_many": MANY,
    "set_many": ITEMS,
    "clear": ALL,
}
WRITES = frozenset({"set", "incr", "delete_many", "set_many", "clear"})  # journaled when away
MAX_REDIRECTS = 5
R = TypeVar("R")


class Routing:
    # Kept by ShardedAdapter (see there).
    nodes: Any
    topology: Topology | None
    shards: dict[str, Adapter]
    schedule: RefreshSchedule
    root: Adapter
    _lock: threading.Lock
    _installing: tuple[Installing, ...]

    if TYPE_CHECKING:

        def _shard(self, name: str) -> Adapter: ...

        def _left_behind(
            self, name: str, shard: Adapter, writes: Sequence[bytes]
        ) -> Generator[Call, Any, None]: ...

    def route(self, asked: Request[R], *, journal: bool = True) -> Routed[R]:
        """Send the request to the shards its keys live on; returns (reply, offline?).
        ``journal=False``: a write served offline is not journaled (a one-key fill)."""
        method = asked.method
        shape = SHAPES[method]
        for _attempt in range(MAX_REDIRECTS):
            try:
                if shape is ONE:
                    owner = self._owner(asked.args[0])
                    return (yield from self._on_shard(owner, asked, journal))
                if shape is ALL:
                    return (yield from self._everywhere(asked))
                return (yield from self._grouped(asked))
            except MapChanged:
                continue  # a new map was installed meanwhile: route by it
            except RedirectError as redirect:
                if redirect.kind == "MOVED":
                    self._moved(redirect)
                    continue
                if len(_keys(asked)) > 1:  # ASK / TRYAGAIN: mid-migration, key by key
                    return (yield from self._one_by_one(asked))
                if redirect.kind == "ASK":
                    return (yield from self._asking(redirect, asked))
                # TRYAGAIN for one key: the migration moves on; try again, a few times. Past
                # that the shard cannot serve it now: an outage, like CLUSTERDOWN (its breaker
                # opens, the fallback serves the call, a write is journaled).
                keys = _keys(asked)
                if _attempt == MAX_REDIRECTS - 1 and keys and keys is not ALL_KEYS:
                    busy = CacheUnavailableError(f"TRYAGAIN {MAX_REDIRECTS} times in a row")
                    if self._shard(self._owner(keys[0])).trips(busy):
                        return (yield from self.route(asked, journal=journal))
        raise StoreError(f"{method}: still redirected after {MAX_REDIRECTS} tries")

    def _on_shard(self, name: str, asked: Request[R], journal: bool = True) -> Routed[R]:
        method = asked.method
        writes: Sequence[bytes] | None
        if method not in WRITES:
            writes = None
        elif not journal:
            writes = UNJOURNALED
        elif SHAPES[method] is ALL:
            writes = ALL_KEYS
        else:
            writes = _keys(asked)
        shard = self._shard(name)
        if shard.machine.state is _CLOSED and self.root.machine.state is not _CLOSED:
            raise MapChanged(name)  # retired since the call picked it: its node left
        try:
            result, offline = yield from shard.call(asked, writes)
        except CacheClosedError:
            if self.root.machine.state is _CLOSED:
                raise
            raise MapChanged(name) from None  # retired during the call: its node left
        if offline and writes and writes is not ALL_KEYS:
            yield from self._left_behind(name, shard, writes)
        return result, offline

    def _grouped(self, asked: Request[Any]) -> Routed[Any]:
        """A multi-key call, one sub-call per shard (the node store pipelines per slot)."""
        method = asked.method
        offline: Offline = False
        if SHAPES[method] is ITEMS:
            items, ttl_ms = asked.args
            by_shard: dict[str, list[Any]] = {}
            for item in items:
                by_shard.setdefault(self._owner(item[0]), []).append(item)
            for name, group in by_shard.items():
                _, away = yield from self._on_shard(name, asked.again(group, ttl_ms))
                offline = offline or away
            return None, offline
        keys = asked.args[0]
        by_shard = {}
        for key in keys:
            by_shard.setdefault(self._owner(key), []).append(key)
        found: dict[bytes, Any] = {}
        served_offline: set[bytes] = set()
        removed = 0
        for name, group in by_shard.items():
            result, away = yield from self._on_shard(name, asked.again(group))
            offline = offline or away
            if method == "get_many":
                found.update(zip(group, result, strict=True))
                if away:
                    served_offline.update(group)
            else:
                removed += result
        if method == "get_many":
            return [found[key] for key in keys], _per_key(keys, served_offline)
        return removed, offline

    def _everywhere(self, asked: Request[Any]) -> Routed[Any]:
        """clear() on every primary. If the map changed meanwhile, slots may have carried
        keys from a primary not yet cleared to one already cleared: all over again."""
        topology = self.topology
        total = 0
        offline: Offline = False
        for name in self._primaries():
            result, away = yield from self._on_shard(name, asked)
            total += result
            offline = offline or away
        if self.topology != topology:
            raise MapChanged("the map changed during the call")
        return total, offline

    def _one_by_one(self, asked: Request[Any]) -> Routed[Any]:
        method, args = asked.method, asked.args
        results: list[Any] = []
        offline: Offline = False
        if SHAPES[method] is ITEMS:
            for item in args[0]:
                _, away = yield from self.route(asked.again([item], args[1]))
                offline = offline or away
            return None, offline
        served_offline: set[bytes] = set()
        for key in args[0]:
            result, away = yield from self.route(asked.again([key]))
            results.append(result)
            offline = offline or bool(away)
            if away:
                served_offline.add(key)
        if method == "get_many":
            return [values[0] for values in results], _per_key(args[0], served_offline)
        return sum(results), offline

    def _asking(self, redirect: RedirectError, asked: Request[R]) -> Routed[R]:
        """The key already moved to the importing node, which serves it after ASKING."""
        commands, finish = ask_commands(asked.method, asked.args)
        importing = self.nodes.node(self.nodes.reachable(redirect.address))
        replies = yield importing, request(RedisStore.asking, commands)
        return finish(replies), False

    def _owner(self, key: bytes) -> str:
        assert self.topology is not None  # the root is READY only with a topology
        name = self.topology.owner(key)
        if not name:
            raise StoreError("no cluster node serves this key's slot")
        return name

    def _primaries(self) -> list[str]:
        return sorted(self.topology.primaries) if self.topology is not None else []

    def _moved(self, redirect: RedirectError) -> None:
        """Patch the slot map at once; the rest of the topology is checked soon."""
        name = self.nodes.reachable(redirect.address)
        with self._lock:
            if self.topology is not None:
                self.topology = self.topology.moved(redirect.slot, name)
        self.schedule.soon()

    def owner_of(self, key: bytes) -> str | None:
        """The primary serving ``key``'s slot, as the slot map says; None if none is known."""
        topology = self.topology
        return (topology.owner(key) or None) if topology is not None else None


class MapChanged(Exception):
    """The shard a call was routed to left with the last topology change: route again."""


def _per_key(keys: Sequence[bytes], served_offline: set[bytes]) -> bool | list[bool]:
    """A get_many's "served offline": one flag for the call when its keys agree, else one per
    key (some shards answered from Redis, a degraded one from its fallback)."""
    if not served_offline:
        return False
    if len(served_offline) == len(set(keys)):
        return True
    return [key in served_offline for key in keys]


def _keys(asked: Request[Any]) -> Sequence[bytes]:
    shape, args = SHAPES[asked.method], asked.args
    if shape is ONE:
        return (args[0],)
    if shape is ITEMS:
        return [key for key, _ in args[0]]
    return args[0] if shape is MANY else ALL_KEYS
