"""The connection state machine. Pure: no I/O, no threads; the clock and the jitter source
are injected, so every transition and every delay can be tested without waiting.

    STARTING ──first connect fails (attempts spent)──▶ DEGRADED
    STARTING, DEGRADED ──probe ok, then journal applied──▶ READY
    READY ──a command fails to reach Redis──▶ DEGRADED
    any ──close()──▶ CLOSED (terminal)

Probes (connect + AUTH + PING) run on an exponential backoff with "equal jitter": the n-th
delay is drawn from [d/2, d] with d = min(retry_max, retry_base * 2**n), so probes never come
in a storm and a recovered Redis is seen within ``retry_max`` plus one probe.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvcache._core import backoff
from kvcache.errors import ConfigurationError


class State(enum.Enum):
    STARTING = "starting"  # first connect in flight; calls wait for it (op_timeout at most)
    READY = "ready"  # commands go to Redis, each bounded by op_timeout
    DEGRADED = "degraded"  # breaker open: no call touches the network; a probe runs
    CLOSED = "closed"  # after close(); terminal


@dataclass(frozen=True, slots=True)
class Policy:
    """When to probe and when to give up on the first connect."""

    connect_attempts: int = 3  # probes in the first-connect phase before DEGRADED
    retry_base: float = 0.05  # seconds: the first delay between probes
    retry_max: float = 0.5  # seconds: the longest delay; bounds the time to notice recovery

    def __post_init__(self) -> None:
        if not isinstance(self.connect_attempts, int) or self.connect_attempts < 1:
            raise ConfigurationError("connect_attempts must be a positive integer")
        if not 0 < self.retry_base <= self.retry_max:
            raise ConfigurationError("need 0 < retry_base <= retry_max")

    def delay(self, failures: int, jitter: float) -> float:
        """Seconds before the next probe after ``failures`` failed ones; ``jitter`` in [0, 1)."""
        return backoff.delay(self.retry_base, self.retry_max, failures, jitter)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of state: emitted as a ``state`` event, logged once, counted once."""

    previous: State
    current: State
    error: BaseException | None = None  # what caused it (going DEGRADED)
    duration: float = 0.0  # seconds spent in ``previous``
    shard: str | None = None  # the cluster primary ("host:port") whose breaker changed
    journal_applied: bool = False  # going READY: keys written while away were deleted in Redis

    @property
    def first_connect_failed(self) -> bool:
        return self.previous is State.STARTING and self.current is State.DEGRADED


class StateMachine:
    """The state, why it is so, and when to probe next. Thread-safe: every mutation holds a
    lock; reading ``state`` is one attribute load, as the hot path wants."""

    def __init__(
        self,
        policy: Policy,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        *,
        initial: State = State.STARTING,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self.state = initial
        self.since = clock()
        self.last_error: BaseException | None = None
        self.failures = 0  # consecutive failed probes
        self.probes = 0  # probes started since the last READY
        # Recovering: the journal is being applied. Writes may go to Redis already (the
        # journal's deletes can only remove data, never bring back an old value), so no new
        # journal entries hold recovery up; reads still wait for READY.
        self.draining = False
        self.next_probe_at: float | None = self.since if initial is State.STARTING else None
        # The first connect attempt is in flight and nobody has given up on it: a call made
        # now waits for it (bounded by op_timeout) instead of going to the fallback.
        self.connecting = initial is State.STARTING

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held stays held, and a probe the parent
        had in flight never ends. Fresh lock; probe again now."""
        self._lock = threading.Lock()
        self.probe_abandoned()

    def _move(self, to: State, error: BaseException | None = None) -> StateChange:
        now = self._clock()
        change = StateChange(self.state, to, error, now - self.since)
        self.state, self.since = to, now
        if error is not None:
            self.last_error = error
        return change

    def command_failed(self, error: BaseException) -> StateChange | None:
        """A command could not reach Redis: open the breaker (once) and probe soon."""
        with self._lock:
            if self.state is not State.READY:
                self.draining = False  # failing again mid-recovery: back to the journal
                return None
            self.failures = self.probes = 0
            self.next_probe_at = self._clock() + self.policy.delay(0, self._jitter())
            return self._move(State.DEGRADED, error)

    def probe_started(self) -> bool:
        """Claim the due probe; False when none is due (READY, CLOSED, or not yet time)."""
        with self._lock:
            due = self.next_probe_at
            if self.state in (State.READY, State.CLOSED) or due is None or self._clock() < due:
                return False
            self.probes += 1
            self.next_probe_at = None  # in flight: nobody else may start one
            return True

    def probe_abandoned(self) -> None:
        """A probe was cut short (its task cancelled, its loop closed): let another run."""
        with self._lock:
            self.draining = False
            if self.state in (State.STARTING, State.DEGRADED) and self.next_probe_at is None:
                self.next_probe_at = self._clock()

    def gave_up_waiting(self) -> None:
        """A call waited ``op_timeout`` for the first connect attempt in vain: as a command
        that timed out opens the breaker, later calls go to the fallback without waiting."""
        self.connecting = False

    def probe_failed(self, error: BaseException) -> StateChange | None:
        """Schedule the next probe; the first-connect phase ends after ``connect_attempts``."""
        with self._lock:
            self.connecting = False
            if self.state is State.CLOSED:
                return None
            self.draining = False
            self.last_error = error
            self.failures += 1
            self.next_probe_at = self._clock() + self.policy.delay(self.failures, self._jitter())
            if self.state is State.STARTING and self.failures >= self.policy.connect_attempts:
                return self._move(State.DEGRADED, error)
            return None

    def start_draining(self) -> None:
        """Redis answered a probe: writes may go to it while the journal is applied."""
        with self._lock:
            if self.state in (State.STARTING, State.DEGRADED):
                self.draining = True

    def unless_ready(self, record: Callable[[], object]) -> bool:
        """Run ``record`` (journal a write that bypasses Redis) unless READY, atomically with
        the state check, so recovery cannot turn READY between the check and the record."""
        with self._lock:
            if self.state is State.READY:
                return False
            record()
            return True

    def recovered(
        self,
        still_pending: Callable[[], bool] = lambda: False,
        on_ready: Callable[[], object] = lambda: None,
    ) -> StateChange | None:
        """The probe succeeded and the journal was applied: READY, unless ``still_pending()``
        (checked under the lock, so no write can slip in between) says there is more to apply.
        ``on_ready`` runs under the lock too, atomically with the change (emptying the
        fallback: no one ever sees READY with outage-era data still in it)."""
        with self._lock:
            if self.state in (State.READY, State.CLOSED) or still_pending():
                return None
            on_ready()
            self.connecting = False
            self.failures = 0
            self.draining = False
            self.next_probe_at = None
            return self._move(State.READY)

    def close(self) -> StateChange | None:
        with self._lock:
            if self.state is State.CLOSED:
                return None
            self.next_probe_at = None
            self.draining = False
            self.connecting = False
            return self._move(State.CLOSED)

    def closed(self) -> bool:
        return self.state is State.CLOSED

    def elapsed(self) -> float:
        """Seconds in the current state."""
        return self._clock() - self.since

    def seconds_to_probe(self) -> float | None:
        """How long until the next probe is due (0 if overdue); None when none is scheduled."""
        due = self.next_probe_at
        return None if due is None else max(0.0, due - self._clock())

    def first_connect_bound(self, attempt_seconds: float) -> float:
        """The longest the first-connect phase can take: every attempt, every delay between."""
        policy = self.policy
        delays = sum(policy.delay(n, 1.0) for n in range(1, policy.connect_attempts))
        return policy.connect_attempts * attempt_seconds + delays
