"""The resilient adapter: routes every store call to Redis or to the in-memory fallback,
opens the breaker, journals writes that bypass Redis, and recovers. Pure: it performs no
I/O itself. Like the operations (``operations/``) it is written as generators that ``yield``
store calls ``(store, method, *args)``; the sync and async shells (``drivers.py``,
``_shells/probers.py``) carry them out. So the whole policy exists once for both.

Contracts (see docs/architecture.md):
- READY: the call goes to Redis. A failure to reach Redis (refused, reset, timed out, auth)
  opens the breaker at once (READY -> DEGRADED) and the same call is served by the fallback.
- STARTING, first connect attempt in flight: a call waits for that attempt, at most
  ``op_timeout`` (the bound of a READY call), then goes to Redis if it connected. A wait that
  runs out ends the waiting for everyone, as a timed-out command opens the breaker.
- STARTING after that, DEGRADED: no call touches the network; the fallback serves at once
  (or, with ``throw_on_errors`` or no fallback, the call fails at once with
  CacheUnavailableError). Nothing is queued for later. Every write's keys go into the
  journal (reads never: a miss is no reason to delete anything in Redis).
- A prober (the shell's thread or task) probes on a backoff; on success the journaled keys
  are deleted in Redis, then READY, then the fallback is emptied.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar

from kvcache._core import forks
from kvcache._core.events import Emitter
from kvcache._core.instruments import Instruments
from kvcache._core.journal import Journal
from kvcache._core.keys import KeySpace
from kvcache._core.protocols import Probeable, Store, is_guarded, is_probeable
from kvcache._core.resilience import ALL_KEYS, Health, Recovery, Routed, Supervisor
from kvcache._core.state import Policy, State, StateChange, StateMachine
from kvcache._core.stats import Stats
from kvcache._core.transitions import log_transition, reason
from kvcache._core.types import OK, Call, Outcome, Request, request
from kvcache.errors import (
    BreakerOpenError,
    CacheClosedError,
    CacheUnavailableError,
    NoFreeConnectionError,
    StoreError,
)

log = logging.getLogger("kvcache.adapter")
DEFAULT_OP_TIMEOUT: Final = 0.25  # seconds: a probeable store that names no bound of its own
_READY: Final = State.READY  # a module constant: the hot path's one comparison
R = TypeVar("R")


class Adapter:
    def __init__(
        self,
        primary: Any,
        fallback: Any | None,
        *,
        keys: KeySpace,
        stats: Stats,
        events: Emitter,
        policy: Policy | None = None,
        journal: Journal | None = None,
        throw_on_errors: bool = False,
        non_blocking: bool = True,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
        starting: bool = True,
        shard: str | None = None,
        on_change: Callable[[StateChange], object] | None = None,
        instruments: Instruments | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        """``starting=False``: READY at once (a cluster shard, found in a topology just
        fetched). ``shard``: the primary this adapter is the breaker of, named in its state
        events. ``on_change``: told of each transition (the cluster router listens).
        ``instruments``: the cache's telemetry (state gauge, journal size, probe spans).
        ``recovery``: applies the journal on recovery (a cluster shard's: where each key
        lives now); by default it is deleted on ``primary``."""
        self.primary = primary
        # A store that can be probed can fail and come back: it gets the breaker. One that
        # cannot (MemoryStore, a custom store) is always READY and its errors pass through.
        self.probeable = is_probeable(primary)
        self.fallback = fallback if self.probeable else None
        self.namespace = keys.namespace
        self.prefix = keys.prefix
        self.stats = stats
        self.events = events
        self.journal = journal if journal is not None else Journal()
        self.throw_on_errors = throw_on_errors
        self.non_blocking = non_blocking
        self.shard = shard
        self._on_change = on_change
        initial = State.STARTING if self.probeable and starting else State.READY
        machine_args = (clock,) if jitter is None else (clock, jitter)
        self.machine = StateMachine(policy or Policy(), *machine_args, initial=initial)
        if self.probeable and is_guarded(primary):
            # The store tells us of an outage before the failed call frees its connection,
            # and asks us before a call that waited for one sends its command.
            primary.breaker = self
        self.supervisor: Supervisor | None = None  # attached by the facade's shell
        self._recovery = recovery or self._delete_on_primary
        self._probe_broken = False  # the last probe raised something unexpected (logged)
        # What observes this breaker (None: nothing does); it is told, never asked.
        self._instruments = instruments if instruments is not None and instruments.enabled else None
        if self._instruments is not None and self.probeable:
            self._instruments.watch(self, shard)
        forks.register(self)

    @property
    def state(self) -> State:
        return self.machine.state

    def admits(self) -> bool:
        """May a call that waited for a connection still go to Redis?"""
        return self.machine.state is _READY

    def after_fork(self) -> None:
        self.machine.after_fork()
        self.journal.after_fork()

    @property
    def probe_timeout(self) -> float:
        """The longest one probe takes (the store says; 1 s for a store that does not)."""
        return float(getattr(self.primary, "probe_timeout", 1.0))

    @property
    def op_timeout(self) -> float:
        """The bound of one call to Redis (the store says; 0.25 s for a store that does not)."""
        return float(getattr(self.primary, "op_timeout", DEFAULT_OP_TIMEOUT))

    @property
    def first_connect_timeout(self) -> float:
        """The longest the first-connect phase can last (what blocking callers may wait)."""
        return self.machine.first_connect_bound(self.probe_timeout)

    # -- calls -----------------------------------------------------------------------------

    def call(self, asked: Request[R], writes: Sequence[bytes] | None = None) -> Routed[R]:
        """Carry out ``asked`` on the primary, or on the fallback; returns (reply, offline).
        ``writes``: the keys the call changes (journaled when it bypasses Redis)."""
        state = self.machine.state
        if state is not _READY:  # the rare path; the hot one is two loads and a compare
            state = yield from self._route_while_away(writes)
        failure: CacheUnavailableError | None = None
        if state is _READY:
            try:
                return (yield (self.primary, asked)), False
            except CacheUnavailableError as exc:
                if not self.trips(exc):
                    raise
                failure = exc
        return (yield from self._offline(asked, writes, failure))

    def _route_while_away(self, writes: Sequence[bytes] | None) -> Generator[Call, Any, State]:
        """READY if the call may go to Redis after all, else the state it met."""
        machine = self.machine
        if not self.non_blocking:
            yield from self._wait_for_first_connect()
        elif machine.connecting:
            yield from self._wait_for_first_attempt()
        if machine.state is not _READY and writes is not None and machine.draining:
            # Recovering: the write goes to Redis (the journal's deletes can only remove it,
            # never bring back an older value); the fallback must not keep an outage-era one.
            self._forget(writes)
            return _READY
        return machine.state

    def _wait_for_first_connect(self) -> Generator[Call, Any, None]:
        """``non_blocking=False``: wait for the whole first-connect phase (bounded)."""
        machine = self.machine
        if machine.state is State.STARTING:
            assert self.supervisor is not None
            self.supervisor.ensure_probing()

            def settled() -> bool:
                return machine.state is not State.STARTING

            yield (
                self.supervisor,
                request(Supervisor.wait_until, settled, self.first_connect_timeout),
            )

    def _wait_for_first_attempt(self) -> Generator[Call, Any, None]:
        """Wait for the first connect attempt, at most ``op_timeout``: on a healthy network
        the first calls of a process reach Redis instead of the fallback."""
        machine = self.machine
        assert self.supervisor is not None
        self.supervisor.ensure_probing()

        def attempted() -> bool:
            return not machine.connecting

        yield self.supervisor, request(Supervisor.wait_until, attempted, self.op_timeout)
        if machine.connecting and machine.state is State.STARTING:
            machine.gave_up_waiting()
            self.supervisor.wake()  # the calls waiting since give up too, not each in turn

    def _offline(
        self,
        asked: Request[R],
        writes: Sequence[bytes] | None,
        failure: CacheUnavailableError | None,
    ) -> Routed[R]:
        """Serve a call without Redis. The fallback is a sync store that never blocks, so it
        is called here directly; a write is journaled and applied to it under the state lock,
        so it cannot land after recovery emptied the fallback."""
        machine = self.machine
        fallback = self._serving()
        served: list[Any] = []
        if asked.method == "add":  # only Redis knows who holds the key (add is often a lock)
            served.append(False)  # and the fallback must not hold a value it said it refused
        elif writes is None:
            if fallback is not None:
                served.append(getattr(fallback, asked.method)(*asked.args))
        else:

            def record() -> None:
                self._journal(writes)
                if fallback is not None:
                    served.append(getattr(fallback, asked.method)(*asked.args))

            if not machine.unless_ready(record):
                # Recovery finished since we looked: Redis takes the write after all.
                return (yield (self.primary, asked)), False
        if not served:
            raise failure or self._unavailable()
        if failure is not None:
            self.stats.errors += 1  # Redis failed this call; the fallback answers it
        return served[0], True

    def _forget(self, writes: Sequence[bytes]) -> None:
        if self.fallback is not None:
            if writes is ALL_KEYS:
                self.fallback.clear(self.prefix)
            else:
                self.fallback.delete_many(writes)

    def _journal(self, writes: Sequence[bytes]) -> None:
        if writes is ALL_KEYS:
            self.journal.add_all()
        else:
            self.journal.add(writes)

    def trips(self, error: StoreError) -> bool:
        """A Redis call failed: open the breaker if this failure means an outage. Local
        overload (no free connection) and stores that cannot be probed never trip it."""
        if not isinstance(error, CacheUnavailableError) or isinstance(error, NoFreeConnectionError):
            return False
        if not self.probeable:
            return False
        if isinstance(error, BreakerOpenError):
            return True  # refused before it was sent: nothing new about Redis
        change = self.machine.command_failed(error)
        if change is not None:
            self.publish(change)
        return True

    def scan_store(self) -> Generator[Call, Any, Any]:
        """The store to iterate this namespace's keys in (while STARTING, after waiting for
        the first connect attempt like any call)."""
        if self.machine.state is not _READY:
            yield from self._route_while_away(None)
        if self.machine.state is _READY:
            return self.primary
        fallback = self._serving()
        if fallback is None:
            raise self._unavailable()
        return fallback

    def _serving(self) -> Any | None:
        """Redis is away: make sure a prober runs, and say which store may answer instead
        (None: the call must fail, for want of a fallback or by ``throw_on_errors``)."""
        if self.machine.state is State.CLOSED:
            raise CacheClosedError("the cache is closed")
        assert self.supervisor is not None
        self.supervisor.ensure_probing()
        return None if self.throw_on_errors else self.fallback

    def _unavailable(self) -> CacheUnavailableError:
        machine = self.machine
        return CacheUnavailableError(
            f"Redis is unavailable ({machine.state.value}{reason(machine.last_error)}); "
            "the call was not sent"
        )

    # -- the prober's side -----------------------------------------------------------------

    def probe(self) -> Generator[Call, Any, None]:
        """One probe, if one is due: connect + AUTH + PING on a fresh connection; on success
        delete the journaled keys in Redis, turn READY, and empty the fallback."""
        if not self.machine.probe_started():
            return
        instruments = self._instruments
        span = instruments.start_probe(self) if instruments is not None else None
        outcome: Outcome = OK
        try:
            outcome = yield from self._probe()
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if instruments is not None:
                instruments.end_probe(span, outcome)

    def _probe(self) -> Generator[Call, Any, Outcome]:
        """The probe begun: its outcome is OK, or the error it failed with."""
        machine = self.machine
        deleted = 0
        applied = False  # anything taken from the journal (deleted in Redis) on the way
        change: StateChange | None = None
        failure: Exception | None = None
        try:
            yield self.primary, request(Probeable.ping)
            if machine.closed():  # close() came while we waited: leave the store alone
                return OK
            yield (
                self.primary,
                request(Probeable.reset),
            )  # pooled connections from before the outage go
            machine.start_draining()  # from now on writes go to Redis: the journal only shrinks
            while not machine.closed():
                keys, clear_all = self.journal.take()
                applied = applied or clear_all or bool(keys)
                try:
                    if clear_all or keys:
                        deleted += yield from self._recovery(keys, clear_all)
                except BaseException:
                    self.journal.restore(keys, clear_all)
                    raise
                self.journal.applied()
                # READY only with nothing left to apply, checked under the state lock that
                # every journal write also takes: no write can slip between.
                change = machine.recovered(self.journal.pending, self._settle)
                if change is not None:
                    break
        except StoreError as exc:
            failure = exc
            self._probe_broken = False
            change = machine.probe_failed(exc)
        except Exception as exc:  # a bug, a client that cannot be built: a failed probe too,
            # never a dead prober and a cache stuck in STARTING; the trace once per streak
            if not self._probe_broken:
                log.error("kvcache: probing %r failed unexpectedly", self.primary, exc_info=exc)
            self._probe_broken = True
            failure = exc
            change = machine.probe_failed(exc)
        except BaseException:  # cancelled (task, loop gone): let the next prober try
            machine.probe_abandoned()
            raise
        if failure is None:
            self._probe_broken = False
        if change is not None:
            self.publish(replace(change, journal_applied=applied), deleted)
        elif self.supervisor is not None:  # calls waiting for the first attempt may go on
            self.supervisor.wake()
        return failure or OK

    def _delete_on_primary(self, keys: list[bytes], clear_all: bool) -> Generator[Call, Any, int]:
        if clear_all:
            return (yield self.primary, request(Store.clear, self.prefix))  # type: ignore[no-any-return]
        return (yield self.primary, request(Store.delete_many, keys))  # type: ignore[no-any-return]

    def _settle(self) -> None:
        """Runs as the state turns READY, atomically with it."""
        self.journal.settled()
        if self.fallback is not None:
            self.fallback.clear(self.prefix)

    def close(self) -> None:
        change = self.machine.close()
        if self._instruments is not None:
            self._instruments.unwatch(self)
        if change is not None:
            self.publish(change)

    # -- observability ---------------------------------------------------------------------

    def publish(self, change: StateChange, deleted: int = 0) -> None:
        """One log line, one telemetry signal, one event per transition; never per call."""
        log_transition(change, repr(self.primary), self.namespace, self.shard, deleted)
        if self.shard is not None:
            change = replace(change, shard=self.shard)
        if self._on_change is not None:
            self._on_change(change)
        if self._instruments is not None:
            self._instruments.state_changed(change)
        self.events.emit("state", change)
        if change.first_connect_failed:
            self.events.emit("connect_error", change)
        if self.supervisor is not None:
            self.supervisor.wake()

    def health(self) -> Health:
        machine = self.machine
        error = machine.last_error
        wait = machine.seconds_to_probe()
        return Health(
            state=machine.state,
            seconds_in_state=max(0.0, machine.elapsed()),
            # The redis-py class behind our CacheUnavailableError says most: TimeoutError...
            last_error=None if error is None else type(error.__cause__ or error).__name__,
            probes=machine.probes,
            failed_probes=machine.failures,
            next_probe_in=None if wait is None or math.isinf(wait) else wait,
            journal_keys=len(self.journal),
            journal_overflowed=self.journal.overflowed,
            fallback=None if self.fallback is None else repr(self.fallback),
        )
