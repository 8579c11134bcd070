"""The shells that run the adapter's prober: a daemon thread for ``Cache``, an asyncio task
for ``AsyncCache``; and, last, the near cache listener's thread. They decide nothing: when
to probe and what a probe does come from the pure core (``state.py``, ``adapter.py``). They
only sleep, run the probe, and wake waiters.

A prober lives only while the cache is STARTING or DEGRADED, and ends once READY. If it dies
(a forked child, an event loop that closed), the next call that finds Redis away starts one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from kvcache._cluster.sharded import ShardedAdapter
from kvcache._core import backoff, forks
from kvcache._core.breaker import Adapter
from kvcache._core.drivers import arun, run
from kvcache._core.state import State
from kvcache._near.cache import Feed
from kvcache.errors import ConfigurationError, KVCacheError

log = logging.getLogger("kvcache.supervisor")

RECONNECT_BASE = 0.05  # seconds: the listener's first wait after a failure
READY_OR_CLOSED = frozenset({State.READY, State.CLOSED})


class ThreadSupervisor:
    is_async: ClassVar[bool] = False

    def __init__(self, adapter: Adapter | ShardedAdapter) -> None:
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

    def __init__(self, adapter: Adapter | ShardedAdapter) -> None:
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


def _job_failed(adapter: Adapter | ShardedAdapter, exc: Exception) -> None:
    """A background job (a topology check) failed unexpectedly: a close racing it is
    expected (DEBUG); anything else is a bug worth a WARNING, never a dead thread's trace."""
    closing = adapter.state is State.CLOSED
    log.log(logging.DEBUG if closing else logging.WARNING, "kvcache: background job: %r", exc)


class ListenerThread:
    """The near cache's listener shell: a daemon thread that runs ``Feed.listen`` (pure,
    ``nearcache.py``), and after a failure reconnects on a jittered backoff (0.05 s up to
    ``retry_max``). Until the feed is caught up again the near cache is bypassed. A forked
    child starts its own on its first use of ``ensure_running``."""

    def __init__(self, feed: Feed, retry_max: float = 1.0) -> None:
        self._feed = feed
        self._retry_max = retry_max
        self._disabled = False  # Redis cannot do it (< 7.0): never restarted
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        forks.register(self)

    def after_fork(self) -> None:
        # The parent's thread does not exist here; the next get starts this process's own.
        self._thread = None
        self._lock = threading.Lock()
        stopped, self._stopped = self._stopped.is_set(), threading.Event()
        if stopped:
            self._stopped.set()

    def ensure_running(self) -> None:
        thread = self._thread
        if (thread is None or not thread.is_alive()) and not self._stopped.is_set():
            if self._disabled:
                return
            with self._lock:
                if self._thread is thread:
                    self._thread = threading.Thread(
                        target=self._loop, name="kvcache-near-listener", daemon=True
                    )
                    self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """For good: the reader refuses to reconnect (a read in flight fails at once) and the
        thread ends (``wait``: up to that many seconds for it)."""
        self._stopped.set()
        self._feed.reader.close(final=True)
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _loop(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                run(self._feed.listen())
            except ConfigurationError as exc:  # Redis cannot do it (< 7.0): stay bypassed
                self._disabled = True
                log.warning("kvcache: near cache disabled: %s", exc)
                return
            except Exception as exc:  # never die: the near cache would stay bypassed for good
                if self._stopped.is_set():
                    return
                if failures == 0:
                    level = logging.INFO if isinstance(exc, KVCacheError) else logging.ERROR
                    log.log(level, "kvcache: near cache listener failed (%r); reconnecting", exc)
                failures += 1
                wait = backoff.delay(RECONNECT_BASE, self._retry_max, failures, random.random())
                self._stopped.wait(wait)
            else:
                failures = 0
