"""``RedisStore``: the sync store on a redis-py client. What it shares with
``AsyncRedisStore`` (commands, error mapping, the probe) lives in the modules beside it."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator, Sequence
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
    batches,
    queue_asking,
)
from kvcache._redis.errors import (
    FAILURES,
    breaker_opened,
    cluster_disabled,
    failure,
    no_free_connection,
    translate,
)
from kvcache._redis.plans import Plan
from kvcache._redis.probe import Probing, address_of, describe, step_timeout
from kvcache._redis.stream import StreamReader

T = TypeVar("T")
log = logging.getLogger("kvcache.stores")


class RedisStore:
    """The sync store. At most ``max_in_flight`` commands run at once; past that a caller
    waits for a free slot, at most ``wait_timeout`` seconds, then gets NoFreeConnectionError.
    ``connect_timeout`` bounds each step of a probe (``ping``). ``breaker``, set by the
    adapter, hears of a failure to reach Redis *before* the failed call frees its slot, and is
    asked after a wait for a slot: so a call that waited while Redis went away does not go on
    to send its command there."""

    is_async: ClassVar[bool] = False

    def __init__(
        self,
        client: redis.Redis,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        connect_timeout: float | None = None,
        *,
        cluster: bool = False,
        auth: Closeable | None = None,
    ) -> None:
        """``auth``: what the client's connections authenticate with (an IAM token
        refresher), closed with the store."""
        self._client: Any = client  # redis-py types replies as Union[Awaitable, Any]
        self.cluster = cluster  # a cluster node: multi-key commands one slot at a time
        self._auth = auth
        self._max_in_flight = max_in_flight
        self._wait = wait_timeout
        self._step = step_timeout(client, connect_timeout)
        self._probing = Probing(self._step, wait_timeout)
        self.breaker: Breaker | None = None
        self.address = address_of(client)
        self._closed = False  # a call whose socket close() shut meets Redis "away"
        self._slots = self._new_slots()
        forks.register(self)

    def _new_slots(self) -> queue.SimpleQueue[None]:
        # A queue of tokens as the semaphore: SimpleQueue is C code (0.25 µs a get/put pair),
        # threading.BoundedSemaphore is Python over a Condition (1.7 µs).
        slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self._max_in_flight):
            slots.put(None)
        return slots

    def after_fork(self) -> None:
        # Tokens held by the parent's other threads would never come back in the child.
        # (redis-py's pool notices the new pid and drops the parent's connections itself.)
        self._slots = self._new_slots()

    @property
    def probe_timeout(self) -> float:
        return self._probing.timeout

    @property
    def op_timeout(self) -> float:
        """The bound of a call (``wait_timeout``; open_store sets it, and the client's
        socket timeouts, from ``op_timeout``): what a call made while STARTING waits for
        the first connect, at most."""
        return self._wait

    def ping(self) -> None:
        """The adapter's probe: connect + AUTH on a fresh connection, each step within the
        connect timeout, then PING (CLUSTER INFO on a cluster node), which must come back
        within the bound a call has (``Probing``)."""
        probing = self._probing
        connection = probing.connection(self._client.connection_pool)
        command = probing.command(self.cluster)
        try:
            connection.connect()
            started = time.monotonic()
            connection.send_command(*command)
            try:
                reply = connection.read_response()
            except redis.exceptions.NoPermissionError as refused:
                reply = refused
            took = time.monotonic() - started
        except FAILURES as exc:
            raise translate(exc) from exc
        finally:
            connection.disconnect()
        probing.verdict(command, reply, took)

    def cluster_slots(self) -> Any:
        """CLUSTER SLOTS on a fresh connection, every step bounded like a probe's; None
        when the server is not in cluster mode."""
        connection = self._probing.connection(self._client.connection_pool)
        try:
            connection.connect()
            connection.send_command("CLUSTER", "SLOTS")
            return connection.read_response()
        except FAILURES as exc:
            if cluster_disabled(exc):
                return None
            raise translate(exc) from exc
        finally:
            connection.disconnect()

    def asking(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run raw commands, each after ASKING (a slot being imported here)."""
        pipe = self._client.pipeline(transaction=False)
        queue_asking(pipe, commands)
        return list(self._call(pipe.execute)[1::2])

    def reset(self) -> None:
        """Close the idle pooled connections: after an outage they may be half dead."""
        self._client.connection_pool.disconnect(inuse_connections=False)

    def __repr__(self) -> str:
        return f"RedisStore({describe(self._client)})"

    def _call(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            self._slots.get_nowait()
        except queue.Empty:  # every slot busy: wait for one, bounded, then ask the breaker
            try:
                self._slots.get(timeout=self._wait)
            except queue.Empty:
                raise no_free_connection(self._wait) from None
            if self.breaker is not None and not self.breaker.admits():
                self._slots.put(None)
                raise breaker_opened() from None
        try:
            return command(*args, **kwargs)
        except FAILURES as exc:
            raise failure(exc, self.breaker) from exc
        except ValueError as exc:  # "I/O operation on closed file": closed under the call
            if not self._closed:  # (by close(), as for a cluster node that left)
                raise
            raise failure(OSError("the store was closed during the call"), self.breaker) from exc
        finally:
            self._slots.put(None)

    def _run(self, plan: Plan[T]) -> T:
        commands = plan.commands
        if len(commands) == 1 and not plan.transaction:
            return plan.finish(
                [self._call(self._client.execute_command, *commands[0], keys=plan.keys)]
            )
        if not commands:
            return plan.finish([])
        pipe = self._client.pipeline(transaction=plan.transaction)
        for command in commands:
            pipe.execute_command(*command)
        return plan.finish(self._call(pipe.execute))

    # The store calls: each one's commands and replies are planned in plans.py, once for
    # this store and AsyncRedisStore.

    def get(self, key: bytes) -> bytes | None:
        return self._run(plans.get(key))

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._run(plans.get_many(keys, self.cluster))

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        self._run(plans.set(key, value, ttl_ms))

    def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        return self._run(plans.get_with_ttl(key))

    def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        return self._run(plans.replace(key, old, new, ttl_ms))

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        self._run(plans.publish(stream, fields, maxlen))

    def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        return self._run(plans.add(key, value, ttl_ms))

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        self._run(plans.set_many(items, ttl_ms, self.cluster))

    def delete_many(self, keys: Sequence[bytes]) -> int:
        return self._run(plans.delete_many(keys, self.cluster))

    def exists(self, key: bytes) -> bool:
        return self._run(plans.exists(key))

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        return self._run(plans.incr(key, amount, ttl_ms))

    def pttl(self, key: bytes) -> int:
        return self._run(plans.pttl(key))

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        return self._run(plans.expire(key, ttl_ms))

    def stream_reader(self, block: float) -> StreamReader:
        """A connection of its own for the near cache's listener (see ``StreamReader``)."""
        return StreamReader(self._client.connection_pool, self._step, block)

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        keys = self._client.scan_iter(match=scan_pattern(prefix), count=SCAN_COUNT)
        while True:
            key = self._call(next, keys, None)
            if key is None:
                return
            yield key

    def clear(self, prefix: bytes) -> int:
        # Unlinking while scanning is safe: SCAN still returns every key that stays put.
        return sum(self.delete_many(batch) for batch in batches(self.scan(prefix)))

    def close(self) -> None:
        self._closed = True
        self._client.close()
        if self._auth is not None:
            self._auth.close()
