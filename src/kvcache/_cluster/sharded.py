"""Per-shard degradation for Redis Cluster: one breaker per primary, and the router.

``ShardedAdapter`` stands where ``Adapter`` stands for a single server, and is built from it:

- a **root** ``Adapter`` covers the time before a topology is known (STARTING, or DEGRADED
  when no node answers): calls go to its fallback at once, writes to its journal. Its probe
  fetches the topology; its recovery applies its journal through the router below.
- one **shard** ``Adapter`` per primary, READY from the start, over that node's own store: a
  node that fails opens only its own breaker, so keys of healthy shards keep using Redis
  while one shard is down, each shard probes and recovers (journal, fallback) on its own.
- the **router** sends each key to its slot's shard (multi-key calls grouped per shard,
  one pipeline per node, one command per slot), follows MOVED (the slot map is patched at
  once) and ASK (ASKING on the importing node), and keeps the topology fresh: CLUSTER SLOTS
  from 1-2 random known primaries, with the configured endpoint as the last resort, on a
  jittered, rate-limited schedule that a failing shard or a MOVED brings forward. Shards
  whose node left the topology are closed (their prober stops dialling it), their pending
  journal is applied where their keys live now.

Pure like ``Adapter``: every network call is yielded for the drivers to carry out, so the
sync and the async cache share this code. The one thing done in the background (a topology
check) is handed to the shell's ``spawn``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from kvcache._cluster.handover import HandOver, Installing, retire
from kvcache._cluster.refresh import RefreshSchedule
from kvcache._cluster.routed import RootStore, ScanAll
from kvcache._cluster.routing import MapChanged, Routing
from kvcache._cluster.topology import Topology
from kvcache._core import forks
from kvcache._core.breaker import Adapter
from kvcache._core.journal import Journal
from kvcache._core.keys import KeySpace
from kvcache._core.protocols import is_viewable
from kvcache._core.resilience import UNJOURNALED, Health, Routed, Supervisor
from kvcache._core.state import State, StateChange, StateMachine
from kvcache._core.types import Call, Request
from kvcache.errors import (
    CacheUnavailableError,
    StoreError,
)

log = logging.getLogger("kvcache.cluster")
_READY = State.READY
R = TypeVar("R")
MIN_CHECK_GAP = 0.5  # seconds: the most often the topology is checked, however asked


class ShardedAdapter(Routing, HandOver):
    def __init__(
        self,
        nodes: Any,  # RedisClusterStore / AsyncRedisClusterStore
        fallback: Any | None,
        *,
        keys: KeySpace,
        journal: Journal,
        **options: Any,  # Adapter's: stats, events, policy, throw_on_errors, non_blocking
    ) -> None:
        self.nodes = nodes
        self.namespace = keys.namespace
        self.prefix = keys.prefix
        self.stats = options["stats"]
        self.events = options["events"]
        self.throw_on_errors = options.get("throw_on_errors", False)
        instruments = options.get("instruments")
        self._observed = instruments is not None and instruments.enabled
        self._options = {"keys": keys, **options}
        self._fallback = fallback
        self._journal_bounds = (journal.maxsize, journal.overflow)
        self.root = Adapter(RootStore(self), fallback, journal=journal, **self._options)
        self.topology: Topology | None = None
        self.shards: dict[str, Adapter] = {}  # replaced, never mutated: readers need no lock
        self.schedule = RefreshSchedule(nodes.topology_interval, MIN_CHECK_GAP)
        self._supervise: Callable[[Adapter], Supervisor] | None = None
        self._check_failing = False  # the last topology check met an unexpected error
        # Maps being installed (replaced, never mutated): a write served offline meanwhile
        # hands its keys over by them too.
        self._installing: tuple[Installing, ...] = ()
        self._lock = threading.Lock()
        forks.register(self)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._installing = ()  # the parent's checks, not the child's
        self.schedule.after_fork()

    # -- what the facade and the prober shell see (as on Adapter) ------------------------

    @property
    def machine(self) -> StateMachine:
        return self.root.machine

    @property
    def supervisor(self) -> Supervisor | None:
        return self.root.supervisor

    @supervisor.setter
    def supervisor(self, supervisor: Supervisor) -> None:
        """The root's prober; each shard gets one of the same kind."""
        self.root.supervisor = supervisor
        self._supervise = type(supervisor)

    @property
    def probe_timeout(self) -> float:
        return self.root.probe_timeout

    @property
    def first_connect_timeout(self) -> float:
        return self.root.first_connect_timeout

    def probe(self) -> Generator[Call, Any, None]:
        return self.root.probe()

    @property
    def state(self) -> State:
        """The root's state until a topology is known; then DEGRADED while any shard is."""
        state = self.root.machine.state
        if state is not _READY:
            return state
        shards = self.shards.values()
        return _READY if all(s.machine.state is _READY for s in shards) else State.DEGRADED

    def health(self) -> Health:
        shards = {name: shard.health() for name, shard in sorted(self.shards.items())}
        return replace(self.root.health(), state=self.state, shards=shards)

    def trips(self, error: StoreError) -> bool:
        """A node's own store already told its shard's breaker."""
        return isinstance(error, CacheUnavailableError)

    def close(self) -> None:
        self.root.close()
        with self._lock:
            shards, self.shards = list(self.shards.values()), {}
        for shard in shards:
            retire(shard)

    def scan_store(self) -> Generator[Call, Any, Any]:
        if self.root.machine.state is not _READY:
            store = yield from self.root.scan_store()
            if self.root.machine.state is not _READY:
                return store  # the root's fallback
        return ScanAll([self.nodes.node(name) for name in self._primaries()], self.nodes.is_async)

    # -- calls -----------------------------------------------------------------------------

    def call(self, asked: Request[R], writes: Sequence[bytes] | None = None) -> Routed[R]:
        if self.root.machine.state is not _READY:
            return (yield from self.root.call(asked, writes))
        if self.schedule.claim():
            self._check_topology()
        return (yield from self.route(asked, journal=writes is not UNJOURNALED))

    def _shard(self, name: str) -> Adapter:
        shard = self.shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            shard = self.shards.get(name)
            if shard is None and self.topology is not None and name not in self.topology.primaries:
                # The owner was picked by a map that has since been replaced (its node left):
                # a shard made for it now would dial the node that left, and never recover.
                raise MapChanged(name)
            if shard is None:
                cluster = self.topology is None or self.topology.cluster
                shard = self._new_shard(name, cluster)
                self.shards = {**self.shards, name: shard}
        return shard

    def _new_shard(self, name: str, cluster: bool) -> Adapter:
        """The breaker of primary ``name``, READY, with its own journal, fallback view and
        prober; its recovery applies its journal where each key lives then."""
        store = self.nodes.node(name)
        store.cluster = cluster
        shard = Adapter(
            store,
            self._fresh_fallback(),
            journal=Journal(*self._journal_bounds),
            starting=False,
            shard=name,
            on_change=self._shard_changed,
            recovery=functools.partial(self._recover, name),
            **self._options,
        )
        assert self._supervise is not None
        shard.supervisor = self._supervise(shard)
        return shard

    def _fresh_fallback(self) -> Any | None:
        """Each shard its own fallback: one shard's recovery empties only its own."""
        if is_viewable(self._fallback):
            return self._fallback.fresh()
        return self._fallback

    def _shard_changed(self, change: StateChange) -> None:
        if change.current is State.DEGRADED:  # the node may have left: look soon
            self.schedule.soon()
