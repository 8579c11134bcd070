"""When to check a cluster's topology: periodic with jitter, sooner when asked, rate-limited,
backing off while a shard is down. Pure: the clock and the jitter are injected."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from kvcache._core.backoff import ceiling


class RefreshSchedule:
    """When to check the topology: every ``interval`` seconds (±20 % jitter, so a fleet of
    processes does not ask in step), sooner when asked (a node failed, a MOVED came), but
    never more often than every ``min_gap`` seconds, and never two checks at once.

    While a shard is down (``done(urgent=True)``) the next check comes after ``min_gap``,
    then twice that, and so on up to ``interval``: a failed primary's replica is usually
    promoted within seconds, and its keys are served from memory until a check sees it."""

    def __init__(
        self,
        interval: float,
        min_gap: float,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.interval = interval
        self.min_gap = min_gap
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self.last = clock()
        self.next_at = self._after(self.last)
        self.in_flight = False
        self.checks = 0
        self._urgent = 0  # urgent checks in a row

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = False  # the parent's check does not go on in the child

    def _after(self, now: float) -> float:
        return now + self.interval * (0.8 + 0.4 * self._jitter())

    def claim(self) -> bool:
        """True if a check is due and the caller may run it (then ``done()`` must follow)."""
        if self._clock() < self.next_at:  # the hot path: no lock
            return False
        with self._lock:
            if self.in_flight or self._clock() < self.next_at:
                return False
            self.in_flight = True
            self.checks += 1
            return True

    def done(self, *, urgent: bool = False) -> None:
        with self._lock:
            self.in_flight = False
            self.last = self._clock()
            if urgent:
                self.next_at = self.last + ceiling(self.min_gap, self.interval, self._urgent)
                self._urgent += 1
            else:
                self._urgent = 0
                self.next_at = self._after(self.last)

    def soon(self) -> None:
        """Check as soon as the rate limit allows."""
        with self._lock:
            self.next_at = min(self.next_at, max(self._clock(), self.last + self.min_gap))
