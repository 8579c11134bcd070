"""``AsyncRedisStore``: the asyncio store, one redis.asyncio client per event loop. What it
shares with ``RedisStore`` (commands, error mapping, the probe) lives in the modules beside it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry

from kvcache._core import forks
from kvcache._core.keys import scan_pattern
from kvcache._core.protocols import Breaker, Closeable
from kvcache._redis import plans
from kvcache._redis.commands import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_WAIT_TIMEOUT,
    SCAN_COUNT,
    UNLINK_BATCH,
    queue_asking,
)
from kvcache._redis.errors import (
    FAILURES,
    breaker_opened,
    cluster_disabled,
    failure,
    lost_transport,
    no_free_connection,
    translate,
)
from kvcache._redis.plans import Plan
from kvcache._redis.probe import Probing, address_of, describe, step_timeout
from kvcache._redis.stream import StreamReader
from kvcache.errors import ConfigurationError

T = TypeVar("T")
log = logging.getLogger("kvcache.stores")


async def _within(call: Coroutine[Any, Any, T], ceiling: float) -> T:
    """``asyncio.wait_for(call, ceiling)``, except that an outcome nobody will await is
    marked as seen: when the caller is cancelled (a probe at ``close()``) while the call
    fails (its connection closed), wait_for leaves that exception in the task, and asyncio
    prints "Task exception was never retrieved" when it is collected."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_seen)
    return await asyncio.wait_for(task, ceiling)


def _lost(exc: AttributeError | TypeError) -> ConnectionError:
    """asyncio's error for a write on a connection lost meanwhile (``lost_transport``), as
    the connection failure it is; any other such error is a bug, and goes on as it is."""
    lost = lost_transport(exc)
    if lost is None:
        raise exc
    return lost


def _seen(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class AsyncRedisStore:
    """The asyncio store. A redis.asyncio client belongs to the event loop it first ran on,
    so this store asks ``connect()`` for one client per event loop: an app-wide cache then
    keeps working under per-test loops, repeated ``asyncio.run`` calls, or one loop a thread.
    Commands in flight are bounded per loop, as in ``RedisStore``."""

    is_async: ClassVar[bool] = True

    def __init__(
        self,
        connect: Callable[[], redis.asyncio.Redis],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        connect_timeout: float | None = None,
        *,
        cluster: bool = False,
        auth: Closeable | None = None,
        reader: Callable[[float], StreamReader] | None = None,
    ) -> None:
        self._connect = connect
        self._reader = reader  # the near cache listener's connections (stream_reader)
        self.cluster = cluster  # see RedisStore
        self._auth = auth  # see RedisStore
        self._max_in_flight = max_in_flight
        self._wait_timeout = wait_timeout
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )
        self._current: _LoopClient | None = None  # the last loop's, swapped as one reference
        self._spare: redis.asyncio.Redis | None = connect()  # for the first loop; no I/O yet
        self._described = describe(self._spare)
        self.address = address_of(self._spare)
        self._step = step_timeout(self._spare, connect_timeout)
        self._probing = Probing(self._step, wait_timeout)
        self.breaker: Breaker | None = None  # see RedisStore
        self._lock = threading.Lock()  # loops in several threads may meet the store at once
        forks.register(self)

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def probe_timeout(self) -> float:
        return self._probing.timeout

    @property
    def op_timeout(self) -> float:
        return self._wait_timeout  # see RedisStore

    async def ping(self) -> None:
        """As ``RedisStore.ping``, and all of it within ``Probing.ceiling``."""
        probing = self._probing
        connection = probing.connection(self._here().client.connection_pool)
        command = probing.command(self.cluster)
        try:
            reply, took = await _within(self._ping_on(connection, *command), probing.ceiling)
        except FAILURES as exc:
            raise translate(exc) from exc
        except (AttributeError, TypeError) as exc:
            raise translate(_lost(exc)) from exc
        finally:
            await connection.disconnect()
        probing.verdict(command, reply, took)

    @staticmethod
    async def _ping_on(connection: Any, *command: Any) -> tuple[Any, float]:
        """Connect (+ AUTH), then ``command``: its reply, and how long its round trip took."""
        await connection.connect()
        started = time.monotonic()
        await connection.send_command(*command)
        try:
            reply = await connection.read_response()
        except redis.exceptions.NoPermissionError as refused:  # (Probing.verdict says)
            reply = refused
        return reply, time.monotonic() - started

    async def cluster_slots(self) -> Any:
        """CLUSTER SLOTS on a fresh connection, within ``probe_timeout``; None when the
        server is not in cluster mode."""
        connection = self._probing.connection(self._here().client.connection_pool)
        try:
            reply, _ = await _within(
                self._ping_on(connection, "CLUSTER", "SLOTS"), self._probing.ceiling
            )
            if isinstance(reply, redis.exceptions.NoPermissionError):
                raise reply
            return reply
        except FAILURES as exc:
            if cluster_disabled(exc):
                return None
            raise translate(exc) from exc
        except (AttributeError, TypeError) as exc:
            raise translate(_lost(exc)) from exc
        finally:
            await connection.disconnect()

    async def asking(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        here = self._here()
        pipe = here.client.pipeline(transaction=False)
        queue_asking(pipe, commands)
        return list((await here.run(pipe.execute))[1::2])

    async def reset(self) -> None:
        """Close this loop's idle pooled connections: after an outage they may be half dead.
        A close that times out (a TLS peer that never answers close_notify, a loaded loop)
        has dropped its connection all the same (redis-py clears it in a ``finally``): no
        reason to fail the probe that just passed."""
        try:
            await self._here().client.connection_pool.disconnect(inuse_connections=False)
        except FAILURES as exc:
            log.debug("kvcache: closing idle connections: %r", exc)

    def __repr__(self) -> str:
        return f"AsyncRedisStore({self._described})"

    def _here(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is None or current.loop is not loop:
            with self._lock:
                current = self._clients.get(loop)
                if current is None:
                    self._forget_closed_loops()
                    client, self._spare = self._spare or self._connect(), None
                    current = _LoopClient(loop, client, self, self._max_in_flight)
                    self._clients[loop] = current
            self._current = current
        return current

    # The store calls: each one's commands and replies are planned in plans.py, once for
    # this store and RedisStore.

    async def get(self, key: bytes) -> bytes | None:
        return await self._here().execute(plans.get(key))

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self._here().execute(plans.get_many(keys, self.cluster))

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        await self._here().execute(plans.set(key, value, ttl_ms))

    async def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        return await self._here().execute(plans.get_with_ttl(key))

    async def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        return await self._here().execute(plans.replace(key, old, new, ttl_ms))

    async def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        await self._here().execute(plans.publish(stream, fields, maxlen))

    async def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        return await self._here().execute(plans.add(key, value, ttl_ms))

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        await self._here().execute(plans.set_many(items, ttl_ms, self.cluster))

    async def delete_many(self, keys: Sequence[bytes]) -> int:
        return await self._here().execute(plans.delete_many(keys, self.cluster))

    async def exists(self, key: bytes) -> bool:
        return await self._here().execute(plans.exists(key))

    async def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        return await self._here().execute(plans.incr(key, amount, ttl_ms))

    async def pttl(self, key: bytes) -> int:
        return await self._here().execute(plans.pttl(key))

    async def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        return await self._here().execute(plans.expire(key, ttl_ms))

    def stream_reader(self, block: float) -> StreamReader:
        """The near cache listener's connection: a sync one (the listener is a thread, for
        AsyncCache too), made by the ``reader`` factory ``open_async_store`` passes."""
        if self._reader is None:
            raise ConfigurationError(
                "near_cache needs a store opened from settings (open_async_store), or a "
                "reader factory"
            )
        return self._reader(block)

    async def scan(self, prefix: bytes) -> AsyncIterator[bytes]:
        here = self._here()
        keys = here.client.scan_iter(match=scan_pattern(prefix), count=SCAN_COUNT)
        while True:
            key = await here.run(anext, keys, None)
            if key is None:
                return
            yield key

    async def clear(self, prefix: bytes) -> int:
        removed = 0
        batch: list[bytes] = []
        async for key in self.scan(prefix):
            batch.append(key)
            if len(batch) == UNLINK_BATCH:
                removed += await self.delete_many(batch)
                batch = []
        if batch:
            removed += await self.delete_many(batch)
        return removed

    def _forget_closed_loops(self) -> None:
        """Drop the clients of loops closed since (under the lock). A client references its
        loop (its connections, its semaphore), so the weak keys alone never let one go: an
        AsyncCache used by one ``asyncio.run`` after another kept a client and its sockets per
        loop, for as long as it lived. Their connections cannot be closed without their loop;
        dropped, they are collected (redis-py warns of each, as of any client so left)."""
        for loop in [loop for loop in self._clients if loop.is_closed()]:
            del self._clients[loop]

    async def close(self) -> None:
        """Close this loop's client, and forget those of loops closed since."""
        with self._lock:
            self._forget_closed_loops()
        current = self._clients.pop(asyncio.get_running_loop(), None)
        if self._current is current:
            self._current = None
        if current is not None:
            await current.client.aclose()
        if self._auth is not None:
            self._auth.close()


class _LoopClient:
    """One event loop's client, and the slots that bound its commands in flight."""

    __slots__ = ("_slots", "_store", "client", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: redis.asyncio.Redis,
        store: AsyncRedisStore,
        max_in_flight: int,
    ) -> None:
        self.loop = loop
        self.client: Any = client
        self._store = store  # for its wait timeout and its admit check
        self._slots = asyncio.Semaphore(max_in_flight)

    async def execute(self, plan: Plan[T]) -> T:
        """As ``RedisStore._run``: one command alone, more in one pipeline, none not sent."""
        commands = plan.commands
        if len(commands) == 1 and not plan.transaction:
            return plan.finish(
                [await self.run(self.client.execute_command, *commands[0], keys=plan.keys)]
            )
        if not commands:
            return plan.finish([])
        pipe = self.client.pipeline(transaction=plan.transaction)
        for command in commands:
            pipe.execute_command(*command)
        return plan.finish(await self.run(pipe.execute))

    async def run(self, command: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._slots.locked():  # every slot busy: wait for one, bounded, then ask the breaker
            wait = self._store._wait_timeout
            try:
                await asyncio.wait_for(self._slots.acquire(), wait)
            except asyncio.TimeoutError:
                raise no_free_connection(wait) from None
            breaker = self._store.breaker
            if breaker is not None and not breaker.admits():
                self._slots.release()
                raise breaker_opened()
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            return await command(*args, **kwargs)
        except FAILURES as exc:
            raise failure(exc, self._store.breaker) from exc
        except (AttributeError, TypeError) as exc:
            raise failure(_lost(exc), self._store.breaker) from exc
        finally:
            self._slots.release()
