"""In-process single-flight: concurrent callers asking for the same missing key share one
computation. Threads share a ``concurrent.futures.Future``; asyncio tasks share a ``Task``.

A computation that asks for its own key again (directly, or from a task it started) runs
its inner call without joining the flight: joining would wait for itself forever.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

# (flight group id, key) pairs being computed in this thread / task and the tasks it starts.
_computing: ContextVar[frozenset[tuple[int, Hashable]]] = ContextVar(
    "kvcache_computing", default=frozenset()
)


class _Flights:
    def _mark(self, key: Hashable) -> Any:
        """Enter ``key``'s computation in this context; returns the token to leave it."""
        return _computing.set(_computing.get() | {(id(self), key)})

    def _inside(self, key: Hashable) -> bool:
        return (id(self), key) in _computing.get()


class SingleFlight(_Flights):
    """For threads: the first caller computes; the others block until it is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[Any]] = {}

    def run(self, key: Hashable, compute: Callable[[], T]) -> T:
        if self._inside(key):
            return compute()
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            return flight.result()  # type: ignore[no-any-return]
        token = self._mark(key)
        try:
            value = compute()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            _computing.reset(token)
            with self._lock:
                del self._flights[key]


class AsyncSingleFlight(_Flights):
    """For asyncio: the computation runs as its own task, so a cancelled caller neither
    cancels it for the others nor leaves them waiting on nothing."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[Any]] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        if self._inside(key):
            return await compute()
        flight = self._flights.get(key)
        # A flight of another event loop (one that closed mid-flight, say) is not joinable.
        if flight is None or flight.get_loop() is not asyncio.get_running_loop():
            token = self._mark(key)  # the task copies this context, and so knows its key
            try:
                flight = asyncio.ensure_future(compute())
            finally:
                _computing.reset(token)
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: Hashable, flight: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # marks it retrieved even if every waiter was cancelled
