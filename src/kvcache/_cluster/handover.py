"""When slots move: a new slot map is checked, its hand-over deletes every shard's journaled
keys at their new owners before it is installed, a write served offline meanwhile hands its
keys over too, and a shard's recovery applies its journal where each key lives now (see
docs/architecture.md, "When slots move"). A mixin of ``ShardedAdapter``: pure."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kvcache import _telemetry as telemetry
from kvcache._cluster.refresh import RefreshSchedule
from kvcache._cluster.topology import Topology, split_address
from kvcache._core.breaker import Adapter
from kvcache._core.protocols import Store
from kvcache._core.resilience import ALL_KEYS, Routed
from kvcache._core.state import State
from kvcache._core.types import Call, Request, request
from kvcache._redis.store import RedisStore
from kvcache.errors import (
    CacheClosedError,
    CacheUnavailableError,
    KVCacheError,
    NoFreeConnectionError,
    RedirectError,
    StoreError,
)

if TYPE_CHECKING:
    import threading

    from kvcache._cluster.refresh import RefreshSchedule

log = logging.getLogger("kvcache.cluster")
_READY = State.READY
_CLOSED = State.CLOSED
CANDIDATES = 2  # random known primaries asked for the topology, before the seed
R = TypeVar("R")


class HandOver:
    # Kept by ShardedAdapter (see there).
    nodes: Any
    namespace: str
    prefix: bytes
    topology: Topology | None
    shards: dict[str, Adapter]
    schedule: RefreshSchedule
    root: Adapter
    _lock: threading.Lock
    _installing: tuple[Installing, ...]
    _check_failing: bool
    _observed: bool

    if TYPE_CHECKING:

        @property
        def state(self) -> State: ...

        def _shard(self, name: str) -> Adapter: ...

        def _new_shard(self, name: str, cluster: bool) -> Adapter: ...

        def route(self, asked: Request[R], *, journal: bool = True) -> Routed[R]: ...

        def _owner(self, key: bytes) -> str: ...

        def _primaries(self) -> list[str]: ...

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
                reply = yield self.nodes.node(name), request(RedisStore.cluster_slots)
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
        installing = Installing(topology, {**shards, **joining})
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
                    retire(shard)
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
            retire(shard)
            store = self.nodes.forget(name)
            if store is not None:
                yield store, request(Store.close)  # no more connections to a node that left
            # Its journal is nobody's to recover now: through the router, whose breakers
            # journal it again where a node is away.
            keys, clear_all = shard.journal.take()
            if clear_all:
                yield from self.route(request(Store.clear, self.prefix))
            elif keys:
                yield from self.route(request(Store.delete_many, keys))
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
                yield from self._forget_at(
                    receivers[owner], request(Store.clear, self.prefix), ALL_KEYS
                )
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
            yield from self._forget_at(shard, request(Store.delete_many, group), group)

    @staticmethod
    def _forget_at(
        shard: Adapter, asked: Request[int], writes: Sequence[bytes]
    ) -> Generator[Call, Any, None]:
        """Delete through ``shard``'s breaker: in Redis, or, where that node is away (or
        fails now), into its journal, touching no network: one dead node cannot hold a map
        off. (With ``throw_on_errors`` the breaker raises after journaling: swallowed.)"""
        try:
            yield from shard.call(asked, writes)
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
            deleted = int((yield store, request(Store.clear, self.prefix)))
            for other, receiver in self.shards.items():
                if other != name:
                    yield from self._forget_at(
                        receiver, request(Store.clear, self.prefix), ALL_KEYS
                    )
            return deleted
        owners = [self._owner(key) for key in keys]  # a slot nobody serves: try again later
        mine = [key for key, owner in zip(keys, owners, strict=True) if owner == name]
        elsewhere = [key for key, owner in zip(keys, owners, strict=True) if owner != name]
        deleted = 0
        if elsewhere:
            removed, _ = yield from self.route(request(Store.delete_many, elsewhere))
            deleted += removed
        if mine:
            try:
                deleted += int((yield store, request(Store.delete_many, mine)))
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
class Installing:
    """A map being installed, the shards that would receive keys by it, and whether a write
    failed to hand its keys over by it (then it is not installed)."""

    topology: Topology
    receivers: Mapping[str, Adapter]
    spoiled: bool = False


def _receivers(name: str, old: Topology | None, new: Topology) -> list[str]:
    """The primaries that serve, in ``new``, slots that ``name`` served in ``old``."""
    if old is None:
        return []
    pairs = zip(old.owners, new.owners, strict=True)
    return sorted({n for o, n in pairs if o == name and n not in (name, "")})


def retire(shard: Adapter) -> None:
    shard.close()
    if shard.supervisor is not None:
        shard.supervisor.stop()
