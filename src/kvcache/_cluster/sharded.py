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
import random
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvcache import _telemetry as telemetry
from kvcache._cluster.refresh import RefreshSchedule
from kvcache._cluster.topology import Topology, split_address
from kvcache._core import forks
from kvcache._core.breaker import ALL_KEYS, UNJOURNALED, Adapter, Health, Routed, Supervisor
from kvcache._core.journal import Journal
from kvcache._core.keys import KeySpace
from kvcache._core.state import State, StateChange, StateMachine
from kvcache._core.types import Call
from kvcache._redis.commands import ask_commands
from kvcache.errors import (
    CacheClosedError,
    CacheUnavailableError,
    KVCacheError,
    NoFreeConnectionError,
    RedirectError,
    StoreError,
)

log = logging.getLogger("kvcache.cluster")
_READY = State.READY
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
MIN_CHECK_GAP = 0.5  # seconds: the most often the topology is checked, however asked
CANDIDATES = 2  # random known primaries asked for the topology, before the seed


class ShardedAdapter:
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
        signals = options.get("signals")
        self._observed = signals is not None and signals.enabled
        self._options = {"keys": keys, **options}
        self._fallback = fallback
        self._journal_bounds = (journal.maxsize, journal.overflow)
        self.root = Adapter(_Routed(self), fallback, journal=journal, **self._options)
        self.topology: Topology | None = None
        self.shards: dict[str, Adapter] = {}  # replaced, never mutated: readers need no lock
        self.schedule = RefreshSchedule(nodes.topology_interval, MIN_CHECK_GAP)
        self._supervise: Callable[[Adapter], Supervisor] | None = None
        self._check_failing = False  # the last topology check met an unexpected error
        # Maps being installed (replaced, never mutated): a write served offline meanwhile
        # hands its keys over by them too.
        self._installing: tuple[_Installing, ...] = ()
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
            _retire(shard)

    def scan_store(self) -> Generator[Call, Any, Any]:
        if self.root.machine.state is not _READY:
            store = yield from self.root.scan_store()
            if self.root.machine.state is not _READY:
                return store  # the root's fallback
        return _ScanAll([self.nodes.node(name) for name in self._primaries()], self.nodes.is_async)

    # -- calls -----------------------------------------------------------------------------

    def call(self, method: str, *args: Any, writes: Sequence[bytes] | None = None) -> Routed:
        if self.root.machine.state is not _READY:
            return (yield from self.root.call(method, *args, writes=writes))
        if self.schedule.claim():
            self._check_topology()
        return (yield from self.route(method, args, journal=writes is not UNJOURNALED))

    def route(self, method: str, args: tuple[Any, ...], *, journal: bool = True) -> Routed:
        """Send the call to the shards its keys live on; returns (result, offline?).
        ``journal=False``: a write served offline is not journaled (a one-key fill)."""
        shape = SHAPES[method]
        for _attempt in range(MAX_REDIRECTS):
            try:
                if shape is ONE:
                    owner = self._owner(args[0])
                    return (yield from self._on_shard(owner, method, args, journal))
                if shape is ALL:
                    return (yield from self._everywhere(method, args))
                return (yield from self._grouped(method, args))
            except _MapChanged:
                continue  # a new map was installed meanwhile: route by it
            except RedirectError as redirect:
                if redirect.kind == "MOVED":
                    self._moved(redirect)
                    continue
                if len(_keys(method, args)) > 1:  # ASK / TRYAGAIN: mid-migration, key by key
                    return (yield from self._one_by_one(method, args))
                if redirect.kind == "ASK":
                    return (yield from self._asking(redirect, method, args))
                # TRYAGAIN for one key: the migration moves on; try again, a few times. Past
                # that the shard cannot serve it now: an outage, like CLUSTERDOWN (its breaker
                # opens, the fallback serves the call, a write is journaled).
                keys = _keys(method, args)
                if _attempt == MAX_REDIRECTS - 1 and keys and keys is not ALL_KEYS:
                    busy = CacheUnavailableError(f"TRYAGAIN {MAX_REDIRECTS} times in a row")
                    if self._shard(self._owner(keys[0])).trips(busy):
                        return (yield from self.route(method, args, journal=journal))
        raise StoreError(f"{method}: still redirected after {MAX_REDIRECTS} tries")

    def _on_shard(
        self, name: str, method: str, args: tuple[Any, ...], journal: bool = True
    ) -> Routed:
        writes: Sequence[bytes] | None
        if method not in WRITES:
            writes = None
        elif not journal:
            writes = UNJOURNALED
        elif SHAPES[method] is ALL:
            writes = ALL_KEYS
        else:
            writes = _keys(method, args)
        shard = self._shard(name)
        if shard.machine.state is _CLOSED and self.root.machine.state is not _CLOSED:
            raise _MapChanged(name)  # retired since the call picked it: its node left
        try:
            result, offline = yield from shard.call(method, *args, writes=writes)
        except CacheClosedError:
            if self.root.machine.state is _CLOSED:
                raise
            raise _MapChanged(name) from None  # retired during the call: its node left
        if offline and writes and writes is not ALL_KEYS:
            yield from self._left_behind(name, shard, writes)
        return result, offline

    def _left_behind(
        self, name: str, shard: Adapter, writes: Sequence[bytes]
    ) -> Generator[Call, Any, None]:
        """A write served offline by a shard that the map, changed while the write was on
        its way, no longer gives its keys: reads go to their new owner now, whose value may
        be older than this write. Hand them over as a map change does (the journal keeps
        them; the fallback's copy goes, so a map that flips back cannot serve it). So too
        for a map being installed: its hand-over may have read the journal before this
        write was in it, and reads go by that map as soon as it is installed."""
        # The maps being installed first: an install sets the map before it leaves that
        # list, so a write that reads the map in use after it misses none of them.
        installing = self._installing
        topology = self.topology
        assert topology is not None
        moved = [key for key in writes if topology.owner(key) != name]
        if moved:
            if shard.fallback is not None:
                shard.fallback.delete_many(moved)
            yield from self._forget_owned(moved, topology, self.shards)
        for pending in installing:
            moved = [key for key in writes if pending.topology.owner(key) != name]
            if moved:
                try:
                    yield from self._forget_owned(moved, pending.topology, pending.receivers)
                except (StoreError, CacheClosedError):
                    if self.root.machine.state is _CLOSED:
                        raise
                    # That map must not be installed now (the next check tries again); the
                    # write itself was served, and its keys are in this shard's journal
                    # and (by the map in use) its fallback.
                    pending.spoiled = True
                else:
                    if shard.fallback is not None:
                        shard.fallback.delete_many(moved)

    def _grouped(self, method: str, args: tuple[Any, ...]) -> Routed:
        """A multi-key call, one sub-call per shard (the node store pipelines per slot)."""
        offline = False
        if SHAPES[method] is ITEMS:
            items, ttl_ms = args
            by_shard: dict[str, list[Any]] = {}
            for item in items:
                by_shard.setdefault(self._owner(item[0]), []).append(item)
            for name, group in by_shard.items():
                _, away = yield from self._on_shard(name, method, (group, ttl_ms))
                offline = offline or away
            return None, offline
        keys = args[0]
        by_shard = {}
        for key in keys:
            by_shard.setdefault(self._owner(key), []).append(key)
        found: dict[bytes, Any] = {}
        served_offline: set[bytes] = set()
        removed = 0
        for name, group in by_shard.items():
            result, away = yield from self._on_shard(name, method, (group,))
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

    def _everywhere(self, method: str, args: tuple[Any, ...]) -> Routed:
        """clear() on every primary. If the map changed meanwhile, slots may have carried
        keys from a primary not yet cleared to one already cleared: all over again."""
        topology = self.topology
        total, offline = 0, False
        for name in self._primaries():
            result, away = yield from self._on_shard(name, method, args)
            total += result
            offline = offline or away
        if self.topology != topology:
            raise _MapChanged("the map changed during the call")
        return total, offline

    def _one_by_one(self, method: str, args: tuple[Any, ...]) -> Routed:
        results: list[Any] = []
        offline = False
        if SHAPES[method] is ITEMS:
            for item in args[0]:
                _, away = yield from self.route(method, ([item], args[1]))
                offline = offline or away
            return None, offline
        served_offline: set[bytes] = set()
        for key in args[0]:
            result, away = yield from self.route(method, ([key],))
            results.append(result)
            offline = offline or bool(away)
            if away:
                served_offline.add(key)
        if method == "get_many":
            return [values[0] for values in results], _per_key(args[0], served_offline)
        return sum(results), offline

    def _asking(self, redirect: RedirectError, method: str, args: tuple[Any, ...]) -> Routed:
        """The key already moved to the importing node, which serves it after ASKING."""
        commands, finish = ask_commands(method, args)
        importing = self.nodes.node(self.nodes.reachable(redirect.address))
        replies = yield (importing, "asking", commands)
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

    def _shard(self, name: str) -> Adapter:
        shard = self.shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            shard = self.shards.get(name)
            if shard is None and self.topology is not None and name not in self.topology.primaries:
                # The owner was picked by a map that has since been replaced (its node left):
                # a shard made for it now would dial the node that left, and never recover.
                raise _MapChanged(name)
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
        fresh = getattr(self._fallback, "fresh", None)
        return fresh() if fresh is not None else self._fallback

    def _shard_changed(self, change: StateChange) -> None:
        if change.current is State.DEGRADED:  # the node may have left: look soon
            self.schedule.soon()

    # -- topology --------------------------------------------------------------------------

    def _check_topology(self) -> None:
        supervisor = self.root.supervisor
        if supervisor is None or not supervisor.spawn(self._checked()):
            self.schedule.done()

    def _checked(self) -> Generator[Call, Any, None]:
        try:
            yield from self.refresh()
        except KVCacheError as exc:  # no node answered: the shards' breakers say the rest
            log.debug("kvcache: topology check failed: %s", type(exc).__name__)
        except Exception as exc:  # a bug: logged once per streak, and checks go on
            level = logging.DEBUG if self._check_failing else logging.ERROR
            self._check_failing = True
            log.log(level, "kvcache: topology check failed unexpectedly", exc_info=exc)
        else:
            self._check_failing = False
        finally:
            self.schedule.done(urgent=self.state is State.DEGRADED)

    def refresh(self) -> Generator[Call, Any, None]:
        """Fetch the slot map (CLUSTER SLOTS, on a fresh connection bounded like a probe)
        from up to two random known primaries, then the configured endpoint; install it if
        it changed. A node that does not answer (refused, timed out, gone from DNS) is
        skipped: if it left the cluster, the others say so."""
        candidates = random.sample(self._primaries(), min(CANDIDATES, len(self._primaries())))
        if self.nodes.seed not in candidates:
            candidates.append(self.nodes.seed)
        failure: StoreError | None = None
        for name in candidates:
            try:
                reply = yield (self.nodes.node(name), "cluster_slots")
                topology = self._topology_from(reply, name)
            except StoreError as exc:
                failure = exc
                continue
            try:
                changed = yield from self._install(topology)
            except BaseException:
                self._count_refresh("failed")
                raise
            self._count_refresh("changed" if changed else "unchanged")
            return
        self._count_refresh("failed")
        raise failure or CacheUnavailableError("no cluster node answered")

    def _count_refresh(self, outcome: str) -> None:
        if self._observed:
            telemetry.topology_checked(self.namespace, outcome)

    def _topology_from(self, reply: Any, name: str) -> Topology:
        if reply is None:
            if self.nodes.mode == "cluster":
                raise CacheUnavailableError(
                    f"{name} is not in cluster mode (mode=cluster; use auto or standalone)"
                )
            return Topology.single(name)
        topology = Topology.parse(reply, split_address(name)[0], self.nodes.remap)
        if not topology.primaries:
            raise CacheUnavailableError(f"{name}: the cluster has no slots assigned")
        return topology

    def _install(self, topology: Topology) -> Generator[Call, Any, bool]:
        """Install ``topology`` unless it is the one in use; True if it was installed."""
        with self._lock:
            old, shards = self.topology, dict(self.shards)
            if old == topology:
                return False
        # The primaries this map brings in get their breakers first: what is handed to one
        # that cannot be reached goes into its journal, not into an error that holds the
        # map off.
        joining = {
            name: self._new_shard(name, topology.cluster)
            for name in sorted(topology.primaries - shards.keys())
        }
        # What a shard wrote while it was away (its journal) may be older where those keys
        # live in the new map (a promoted replica, the node that took some or all of its
        # slots): delete it there *before* any call is routed by the new map, or a read
        # there could answer a value older than one written during the outage. If that
        # fails, the map is not installed; the next check tries again.
        # A write served offline from now on, by the old map, hands its keys over by this
        # one itself (``_left_behind``): the hand-over may read the journal before it.
        installing = _Installing(topology, {**shards, **joining})
        with self._lock:
            self._installing = (*self._installing, installing)
        installed = False
        try:
            for name, shard in shards.items():
                yield from self._hand_over(name, shard, old, topology, installing.receivers)
            with self._lock:
                # (else another check installed one meanwhile, or a write could not hand
                # its keys over by this one)
                if self.topology == old and not installing.spoiled:
                    self.topology = topology
                    current = {**self.shards, **joining}
                    left = {n: s for n, s in current.items() if n not in topology.primaries}
                    self.shards = {n: s for n, s in current.items() if n not in left}
                    installed = True
        finally:
            with self._lock:
                self._installing = tuple(i for i in self._installing if i is not installing)
            if not installed:
                for shard in joining.values():
                    _retire(shard)
        if not installed:
            return False
        # A line per change of primaries; slots moving between them (a resharding, where
        # nodes briefly disagree and the map flips back and forth) only at DEBUG.
        log.log(
            logging.INFO if joining or left else logging.DEBUG,
            "kvcache: cluster topology: %d primaries (joined: %s; left: %s)",
            len(topology.primaries),
            ", ".join(joining) or "none",
            ", ".join(sorted(left)) or "none",
        )
        for name, shard in left.items():
            _retire(shard)
            store = self.nodes.forget(name)
            if store is not None:
                yield (store, "close")  # no more connections to a node that left
            # Its journal is nobody's to recover now: through the router, whose breakers
            # journal it again where a node is away.
            keys, clear_all = shard.journal.take()
            if clear_all:
                yield from self.route("clear", (self.prefix,))
            elif keys:
                yield from self.route("delete_many", (keys,))
        # Journaled in the moment since, by calls routed by the old map: the same again.
        for name, shard in self.shards.items():
            yield from self._hand_over(name, shard, old, topology, self.shards)
        return True

    def _hand_over(
        self,
        name: str,
        shard: Adapter,
        old: Topology | None,
        new: Topology,
        receivers: Mapping[str, Adapter],
    ) -> Generator[Call, Any, None]:
        """Delete the keys of ``shard``'s journal that ``new`` puts on other primaries,
        there (the namespace on the primaries that took its slots, if its journal
        overflowed). The journal keeps them: the shard's own recovery applies all of it,
        where each key lives by then, so nothing is lost if that recovery runs meanwhile
        (a second delete costs a miss at most). Its fallback's entries in the slots it lost
        go: a map that gives them back later must not serve those from before."""
        keys, clear_all = shard.journal.peek()
        lost = _receivers(name, old, new)
        if lost and shard.fallback is not None and shard.machine.state is not _READY:
            fallback = shard.fallback
            fallback.delete_many([k for k in fallback.scan(self.prefix) if new.owner(k) != name])
        if clear_all:
            for owner in lost:
                yield from self._forget_at(receivers[owner], "clear", (self.prefix,), ALL_KEYS)
        else:
            yield from self._forget_owned([k for k in keys if new.owner(k) != name], new, receivers)

    def _forget_owned(
        self, keys: Sequence[bytes], topology: Topology, receivers: Mapping[str, Adapter]
    ) -> Generator[Call, Any, None]:
        """Delete ``keys`` on the primaries that own them in ``topology``. A key of a slot
        that no node serves is left alone: no read can reach it (its journal keeps it)."""
        by_owner: dict[str, list[bytes]] = {}
        for key in keys:
            by_owner.setdefault(topology.owner(key), []).append(key)
        by_owner.pop("", None)
        for owner, group in by_owner.items():
            shard = receivers[owner] if owner in receivers else self._shard(owner)
            yield from self._forget_at(shard, "delete_many", (group,), group)

    @staticmethod
    def _forget_at(
        shard: Adapter, method: str, args: tuple[Any, ...], writes: Sequence[bytes]
    ) -> Generator[Call, Any, None]:
        """Delete through ``shard``'s breaker: in Redis, or, where that node is away (or
        fails now), into its journal, touching no network: one dead node cannot hold a map
        off. (With ``throw_on_errors`` the breaker raises after journaling: swallowed.)"""
        try:
            yield from shard.call(method, *args, writes=writes)
        except NoFreeConnectionError:
            raise  # local overload: nothing was journaled; the next check tries again
        except CacheUnavailableError:
            pass

    def _recover(self, name: str, keys: list[bytes], clear_all: bool) -> Generator[Call, Any, int]:
        """A shard's recovery: apply its journal where each key lives now. Its own node's
        keys are deleted there (a failure fails the probe); keys whose slots have moved go
        through the router (their owner's breaker journals them if that node is away). A
        MOVED from its own node (its slots moved before any check saw it) fetches the map
        at once, instead of failing the probe."""
        shard = self.shards.get(name)
        if shard is None:
            raise CacheUnavailableError(f"{name} left the cluster")
        store = shard.primary
        if clear_all:  # the namespace: here, and wherever its slots may have gone
            deleted = int((yield (store, "clear", self.prefix)))
            for other, receiver in self.shards.items():
                if other != name:
                    yield from self._forget_at(receiver, "clear", (self.prefix,), ALL_KEYS)
            return deleted
        owners = [self._owner(key) for key in keys]  # a slot nobody serves: try again later
        mine = [key for key, owner in zip(keys, owners, strict=True) if owner == name]
        elsewhere = [key for key, owner in zip(keys, owners, strict=True) if owner != name]
        deleted = 0
        if elsewhere:
            removed, _ = yield from self.route("delete_many", (elsewhere,))
            deleted += removed
        if mine:
            try:
                deleted += int((yield (store, "delete_many", mine)))
            except RedirectError as redirect:
                if redirect.kind != "MOVED":
                    raise  # ASK, TRYAGAIN: a slot half migrated; the next probe tries again
                # Back into the journal, then the map: its hand-over deletes them where they
                # live before any read is routed there, and the probe's next round applies
                # the rest by it (all the slots that moved at once, not one per MOVED).
                shard.journal.add(mine)
                before = self.topology
                yield from self.refresh()
                if self.topology is before:
                    raise  # the nodes disagree for a moment: the next probe tries again
        return deleted


@dataclass(slots=True, eq=False)
class _Installing:
    """A map being installed, the shards that would receive keys by it, and whether a write
    failed to hand its keys over by it (then it is not installed)."""

    topology: Topology
    receivers: Mapping[str, Adapter]
    spoiled: bool = False


class _MapChanged(Exception):
    """The shard a call was routed to left with the last topology change: route again."""


def _per_key(keys: Sequence[bytes], served_offline: set[bytes]) -> bool | list[bool]:
    """A get_many's "served offline": one flag for the call when its keys agree, else one per
    key (some shards answered from Redis, a degraded one from its fallback)."""
    if not served_offline:
        return False
    if len(served_offline) == len(set(keys)):
        return True
    return [key in served_offline for key in keys]


def _receivers(name: str, old: Topology | None, new: Topology) -> list[str]:
    """The primaries that serve, in ``new``, slots that ``name`` served in ``old``."""
    if old is None:
        return []
    pairs = zip(old.owners, new.owners, strict=True)
    return sorted({n for o, n in pairs if o == name and n not in (name, "")})


def _retire(shard: Adapter) -> None:
    shard.close()
    if shard.supervisor is not None:
        shard.supervisor.stop()


def _keys(method: str, args: tuple[Any, ...]) -> Sequence[bytes]:
    shape = SHAPES[method]
    if shape is ONE:
        return (args[0],)
    if shape is ITEMS:
        return [key for key, _ in args[0]]
    return args[0] if shape is MANY else ALL_KEYS


class _Routed:
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
            result, _ = yield from self._sharded.route(method, args)
            return result

        return routed

    def __repr__(self) -> str:
        return repr(self._sharded.nodes)


class _ScanAll:
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
