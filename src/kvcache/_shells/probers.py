"""The shells that run the adapter's prober: a daemon thread for ``Cache``, an asyncio task
for ``AsyncCache``. They decide nothing: when to probe and what a probe does come from the
pure core (``_core/state.py``, ``_core/breaker.py``). They
only sleep, run the probe, and wake waiters.

A prober lives only while the cache is STARTING or DEGRADED, and ends once READY. If it dies
(a forked child, an event loop that closed), the next call that finds Redis away starts one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from kvcache._core import forks
from kvcache._core.drivers import arun, run
from kvcache._core.resilience import ResilientAdapter
from kvcache._core.state import State

log = logging.getLogger("kvcache.supervisor")

READY_OR_CLOSED = frozenset({State.READY, State.CLOSED})


class ThreadSupervisor:
    is_async: ClassVar[bool] = False

    def __init__(self, adapter: ResilientAdapter) -> None:
        self._adapter = adapter
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._changed = threading.Condition()
        forks.register(self)

    def after_fork(self) -> None:
        # The parent's prober thread does not exist here; its locks may be held forever.
        self._thread = None
        self._start_lock = threading.Lock()
        self._changed = threading.Condition()

    def ensure_probing(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:
            thread = self._thread
            if (thread is not None and thread.is_alive()) or self._idle():
                return
            self._thread = threading.Thread(
                target=self._probe_loop,
                name=f"kvcache-prober-{self._adapter.namespace}",
                daemon=True,  # never holds up interpreter exit
            )
            self._thread.start()

    def _idle(self) -> bool:
        return self._adapter.machine.state in READY_OR_CLOSED

    def stop(self) -> None:
        """After close(): wait (bounded) for a probe in flight, so it does not touch the
        store while the store closes."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            with self._changed:
                self._changed.notify_all()
            thread.join(2 * self._adapter.probe_timeout)

    def _probe_loop(self) -> None:
        machine = self._adapter.machine
        while (wait := machine.seconds_to_probe()) is not None:
            with self._changed:  # close() wakes it
                if self._changed.wait_for(self._idle, timeout=wait):
                    return
            run(self._adapter.probe())

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def spawn(self, job: Generator[Any, Any, Any]) -> bool:
        """Run ``job`` (an operation of the core) once, in the background."""
        threading.Thread(target=self._job, args=(job,), name="kvcache-job", daemon=True).start()
        return True

    def _job(self, job: Generator[Any, Any, Any]) -> None:
        try:
            run(job)
        except Exception as exc:  # the job's own errors are its own; this is the unexpected
            _job_failed(self._adapter, exc)

    def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(done, timeout=max(0.0, timeout))

    def wait_for(self, states: frozenset[State], timeout: float) -> State:
        machine = self._adapter.machine
        self.wait_until(lambda: machine.state in states, timeout)
        return machine.state


class TaskSupervisor:
    """The asyncio shell. The prober task runs on the loop of the call that needed it; an
    ``AsyncCache`` used from several loops (one per thread, or per test) still has one."""

    is_async: ClassVar[bool] = True

    def __init__(self, adapter: ResilientAdapter) -> None:
        self._adapter = adapter
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._jobs: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()  # waiters may sit on loops in other threads
        forks.register(self)

    def after_fork(self) -> None:
        self._task = None
        self._waiters = []
        self._lock = threading.Lock()

    def ensure_probing(self) -> None:
        task = self._task
        if task is not None and not task.done():
            if task.get_loop().is_running():
                return  # probing, on this loop or on another thread's
            # Its loop stopped or closed with the task pending: it will never run again.
            self._adapter.machine.probe_abandoned()
        if self._adapter.machine.state in READY_OR_CLOSED:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside any loop: the next call in a loop starts it
            return
        self._task = loop.create_task(self._probe_loop(), name="kvcache-prober")

    def stop(self) -> None:
        """After close(): cancel the prober (on its own loop, which may be another thread's)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            loop = task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    async def _probe_loop(self) -> None:
        machine = self._adapter.machine
        while (wait := machine.seconds_to_probe()) is not None:
            if wait > 0:
                await self.wait_for(READY_OR_CLOSED, wait)  # close() wakes it
            if machine.state in READY_OR_CLOSED:
                return
            await arun(self._adapter.probe())

    def wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            loop = waiter.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)

    def spawn(self, job: Generator[Any, Any, Any]) -> bool:
        """Run ``job`` once, as a task on the running loop; False outside any loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            job.close()
            return False
        task = loop.create_task(self._job(job), name="kvcache-job")
        self._jobs.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._jobs.discard)
        return True

    async def _job(self, job: Generator[Any, Any, Any]) -> None:
        try:
            await arun(job)
        except Exception as exc:
            _job_failed(self._adapter, exc)

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiter = loop.create_future()
            with self._lock:
                self._waiters.append(waiter)
            if done():  # changed before we were listed
                break
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                break
            finally:
                with self._lock:  # a waiter left behind would pile up while DEGRADED
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    async def wait_for(self, states: frozenset[State], timeout: float) -> State:
        machine = self._adapter.machine
        await self.wait_until(lambda: machine.state in states, timeout)
        return machine.state


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _job_failed(adapter: ResilientAdapter, exc: Exception) -> None:
    """A background job (a topology check) failed unexpectedly: a close racing it is
    expected (DEBUG); anything else is a bug worth a WARNING, never a dead thread's trace."""
    closing = adapter.state is State.CLOSED
    log.log(logging.DEBUG if closing else logging.WARNING, "kvcache: background job: %r", exc)
