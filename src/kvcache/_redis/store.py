"""Plain Redis stores on redis-py: ``RedisStore`` (sync) and ``AsyncRedisStore`` (asyncio).

The two classes are thin shells around the same commands; what they share (error mapping,
the INCR transaction, batching) lives once at module level. Every redis-py exception is mapped to
a kvcache one here, so nothing above this module knows redis-py's exception types.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError
from redis.retry import Retry

from kvcache._cluster.slots import replace_command, set_command, slot_groups, xadd_command
from kvcache._core import forks as forksafe
from kvcache._core.keys import scan_pattern
from kvcache._core.timeouts import command_timeout, fits_a_call
from kvcache.errors import (
    NOT_A_COUNTER,
    BreakerOpenError,
    CacheUnavailableError,
    ConfigurationError,
    InvalidValueError,
    KVCacheError,
    NoFreeConnectionError,
    RedirectError,
    StoreError,
)

T = TypeVar("T")
log = logging.getLogger("kvcache.stores")

SCAN_COUNT = 1000  # keys per SCAN round trip
DEFAULT_MAX_IN_FLIGHT = 64  # commands at once (per event loop for AsyncRedisStore)
DEFAULT_WAIT_TIMEOUT = 0.25  # seconds to wait for a free slot
UNLINK_BATCH = 500  # keys per UNLINK, so clear() never sends one huge command


_FAILURES = (redis.RedisError, OSError, asyncio.TimeoutError)  # the last: Python 3.10
# What means "Redis cannot serve us now", so the breaker opens. ClusterDownError (a reply,
# not a network failure: CLUSTERDOWN, "CLUSTERDOWN Hash slot not served", MASTERDOWN) too:
# during a failover the healthy nodes answer it to every key until the cluster is whole.
_UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    asyncio.TimeoutError,
    ClusterDownError,
)


def translate(exc: BaseException) -> KVCacheError:
    """The kvcache exception for a redis-py (or socket) failure, caused by it from the start
    (the breaker, telemetry and logs see the cause before it is raised). Messages never hold
    secrets: redis-py's name host:port and the server's reply, not the credentials."""
    error = _translated(exc)
    error.__cause__ = exc
    return error


def _translated(exc: BaseException) -> KVCacheError:
    if isinstance(exc, _UNREACHABLE):
        return CacheUnavailableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, AskError):  # MovedError too: a cluster node points elsewhere
        kind = "MOVED" if isinstance(exc, MovedError) else "ASK"
        return RedirectError(kind, exc.slot_id, f"{exc.host}:{exc.port}")
    if isinstance(exc, TryAgainError):
        return RedirectError("TRYAGAIN", -1, "")
    if isinstance(exc, redis.ResponseError) and any(
        reason in str(exc) for reason in ("not an integer", "overflow")
    ):
        return InvalidValueError(NOT_A_COUNTER)
    return StoreError(f"{type(exc).__name__}: {exc}")


def no_free_connection(waited: float) -> NoFreeConnectionError:
    return NoFreeConnectionError(f"no free connection within {waited}s (max_connections busy)")


_DRIVER_INFO = "driver_info" in inspect.signature(redis.connection.AbstractConnection).parameters


def probe_connection(pool: Any, step_timeout: float, read_timeout: float | None = None) -> Any:
    """A fresh connection outside the pool, for a probe: it proves that a *new* connection
    can connect and authenticate (a pooled one may predate the outage), and every step of
    its handshake waits at most ``step_timeout`` (the connect timeout). ``read_timeout``:
    for replies slower than that on purpose (a blocked XREAD)."""
    kwargs = dict(pool.connection_kwargs)
    kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = step_timeout
    if read_timeout is not None:
        kwargs["socket_timeout"] = read_timeout
    # No retries either, whatever the client was given: one probe, one bounded attempt.
    retry = redis.asyncio.retry.Retry if isinstance(pool, redis.asyncio.ConnectionPool) else Retry
    kwargs["retry"] = retry(NoBackoff(), 0)
    if _DRIVER_INFO:  # no CLIENT SETINFO: two round trips less for a call that waits for
        kwargs["driver_info"] = None  # the first probe (redis-py 7.1 and later know it)
    return pool.connection_class(**kwargs)


PING: Final = ("PING",)
CLUSTER_INFO: Final = ("CLUSTER", "INFO")


class Probing:
    """A store's probe, the same for both shells: what it sends on its fresh connection,
    how long each step may take, and when it passed. A cluster node answers PING while the
    cluster is down (and refuses every key), so there the probe asks CLUSTER INFO: the same
    round trip, and it says whether the cluster serves."""

    def __init__(self, step: float, op_timeout: float) -> None:
        self.step = step  # the connect: connect_timeout
        # Each read as long as a call may wait, at least: a Redis slower than connect_timeout
        # but within op_timeout serves its calls, so it is no outage.
        self.read = max(step, command_timeout(op_timeout))
        self.op_timeout = op_timeout
        self.cluster_info = True  # False once a node refused it to the ACL user: PING then

    @property
    def timeout(self) -> float:
        """The longest a realistic failed probe takes: a connect, then one read."""
        return self.step + self.read

    @property
    def ceiling(self) -> float:
        """The async shell's bound on a whole probe: a connect, two handshake replies
        (HELLO, redis-py's maintenance notifications), and the probe's own reply."""
        return self.step + 3 * self.read

    def connection(self, pool: Any) -> Any:
        return probe_connection(pool, self.step, self.read)

    def command(self, cluster: bool) -> tuple[str, ...]:
        return CLUSTER_INFO if cluster and self.cluster_info else PING

    def verdict(self, command: tuple[str, ...], reply: Any, took: float) -> None:
        """Raise unless the probe passed: its round trip fits a call's bound, and a cluster
        node's cluster is up (cluster_state:ok)."""
        fits_a_call(" ".join(command), took, self.op_timeout)
        if command is not CLUSTER_INFO:
            return
        if isinstance(reply, redis.exceptions.NoPermissionError):
            # The node answered: it is up. (Users that were told to grant CLUSTER SLOTS
            # only would otherwise never see a shard recover after its first outage.)
            self.cluster_info = False
            log.warning(
                "kvcache: the ACL user may not run CLUSTER INFO; probes send PING instead, "
                "so a cluster that is down is noticed by calls only (grant +cluster|info)"
            )
            return
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        state = next((f for f in text.split() if f.startswith("cluster_state:")), "")
        if state != "cluster_state:ok":
            raise CacheUnavailableError(f"the cluster serves no keys ({state or text[:60]})")


def step_timeout(client: Any, connect_timeout: float | None) -> float:
    """A probe's per-step timeout: ``connect_timeout``, else what the client's pool uses."""
    if connect_timeout is not None:
        return connect_timeout
    kwargs = client.connection_pool.connection_kwargs
    return float(kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 1.0)


class Closeable(Protocol):
    def close(self) -> None: ...


class Breaker(Protocol):
    """What the adapter offers a store: see ``RedisStore``."""

    def admits(self) -> bool: ...

    def trips(self, error: StoreError) -> bool: ...


def failure(exc: BaseException, breaker: Breaker | None) -> KVCacheError:
    """The kvcache error for ``exc``, told to the breaker while the call still holds its slot."""
    error = translate(exc)
    if breaker is not None and isinstance(error, StoreError):
        breaker.trips(error)
    return error


def breaker_opened() -> BreakerOpenError:
    return BreakerOpenError("Redis became unavailable while this call waited for a connection")


def describe(client: redis.Redis | redis.asyncio.Redis) -> str:
    """Where a client connects, for reprs: address and db, never credentials."""
    where = client.connection_pool.connection_kwargs
    if "path" in where:
        return f"unix://{where['path']}?db={where.get('db', 0)}"
    return f"{where.get('host')}:{where.get('port')}/{where.get('db', 0)}"


def address_of(client: redis.Redis | redis.asyncio.Redis) -> tuple[str, int | None, int]:
    """(host or socket path, port or None, db): where a client connects, for telemetry."""
    where = client.connection_pool.connection_kwargs
    db = int(where.get("db") or 0)
    if "path" in where:
        return str(where["path"]), None, db
    return str(where.get("host")), int(where.get("port") or 6379), db


def _pairs(reply: Any) -> dict[bytes, Any]:
    """A map reply: a dict under RESP3, a flat [field, value, ...] list under RESP2."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's one stream: ``{stream: [[id, fields], ...]}`` under RESP3,
    ``[[stream, [[id, fields], ...]]]`` under RESP2; nil when nothing is new."""
    if not reply:
        return []
    found = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return [(entry_id, _pairs(fields)) for entry_id, fields in found]


class StreamReader:
    """The near cache listener's Redis calls, on one connection of its own: outside the pool
    (a blocked XREAD holds it for seconds), authenticated like the pool's connections (the
    ConnectionPolicy, IAM included, travels in the kwargs), re-opened after a failure.
    Replies are parsed here (raw RESP2, no redis-py response callbacks)."""

    is_async: ClassVar[bool] = False

    def __init__(self, pool: Any, step_timeout: float, block: float) -> None:
        self._pool = pool
        self._step = step_timeout
        self._read_timeout = block + step_timeout
        self._connection: Any = None
        self._closed = False
        self._lock = threading.Lock()  # close() may come from another thread
        forksafe.register(self)

    def after_fork(self) -> None:
        # The parent's socket: never used (nor closed: shutdown would cut the parent's) here.
        self._connection = None
        self._lock = threading.Lock()

    def position(self, stream: bytes) -> tuple[bytes, int] | None:
        """(last id, entries-added) now; None when the stream does not exist."""
        (info,) = self._run(("XINFO", "STREAM", stream))
        if isinstance(info, redis.ResponseError):
            _no_stream(info)
            return None
        fields = _pairs(info)
        return fields[b"last-generated-id"], _entries_added(fields)

    def snapshot(
        self, stream: bytes, after: bytes, count: int
    ) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], int, int] | None:
        """At one instant: up to ``count`` entries after ``after``, and the stream's
        entries-added and length; None when the stream does not exist."""
        replies = self._run(
            ("MULTI",),
            ("XINFO", "STREAM", stream),
            ("XREAD", "COUNT", count, "STREAMS", stream, after),
            ("EXEC",),
        )
        for reply in replies[1:]:  # refused when queued (MOVED: another node serves the
            if isinstance(reply, redis.ResponseError):  # stream, in cluster mode), EXECABORT
                raise translate(reply) from reply
        info, read = replies[-1]
        if isinstance(info, redis.ResponseError):
            _no_stream(info)
            return None
        fields = _pairs(info)
        return _entries(read), _entries_added(fields), int(fields[b"length"])

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        """XADD, as the store's ``publish``, on this connection."""
        (reply,) = self._run(xadd_command(stream, fields, maxlen))
        if isinstance(reply, redis.ResponseError):  # OOM, say
            raise translate(reply) from reply

    def wait(self, stream: bytes, after: bytes, block_ms: int) -> None:
        """Until an entry after ``after`` exists, or ``block_ms`` passed."""
        (reply,) = self._run(("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", stream, after))
        if isinstance(reply, redis.ResponseError):  # MOVED, say
            raise translate(reply) from reply

    def close(self, *, final: bool = False) -> None:
        """Drop the connection (the next call makes a new one); ``final``: for good."""
        with self._lock:
            connection, self._connection = self._connection, None
            self._closed = self._closed or final
        if connection is not None:
            connection.disconnect()

    def _run(self, *commands: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise CacheUnavailableError("the near cache listener is closed")
            if self._connection is None:
                self._connection = probe_connection(self._pool, self._step, self._read_timeout)
            connection = self._connection
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            return [_reply(connection) for _ in commands]
        except (*_FAILURES, ValueError) as exc:  # ValueError: closed under a blocked read
            self.close()
            raise translate(exc) from exc


def _reply(connection: Any) -> Any:
    """The next reply; a server error (no such stream) is a reply, the connection is fine."""
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc


def _no_stream(error: BaseException) -> None:
    """XINFO's error: fine when it says the stream does not exist, raised otherwise."""
    if "no such key" not in str(error).lower():
        raise translate(error) from error


def _entries_added(fields: dict[bytes, Any]) -> int:
    if b"entries-added" not in fields:
        raise ConfigurationError("the near cache needs Redis 7.0 or later (XINFO entries-added)")
    return int(fields[b"entries-added"])


def _batches(keys: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == UNLINK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _queue_incr(pipe: Any, key: bytes, amount: int, ttl_ms: int) -> None:
    # MULTI / SET NX PX / INCRBY / EXEC: a *new* counter gets the TTL, an existing one keeps
    # its own, atomically, in one round trip. (Not Lua: it turns replies into doubles, and
    # counters past 2**53 would come back rounded.)
    pipe.set(key, b"0", nx=True, px=ttl_ms).incrby(key, amount)


def _queue_unlink(pipe: Any, keys: Sequence[bytes], cluster: bool = False) -> None:
    # Many keys: UNLINK in batches (no one huge command), all in one round trip; on a
    # cluster node, one slot per UNLINK.
    for group in slot_groups(keys) if cluster else [keys]:
        for batch in _batches(iter(group)):
            pipe.unlink(*batch)


def _one_unlink(keys: Sequence[bytes], cluster: bool) -> bool:
    """Can one UNLINK carry ``keys``?"""
    return len(keys) <= UNLINK_BATCH and (not cluster or len(slot_groups(keys)) == 1)


def _queue_set_many(
    pipe: Any, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None, cluster: bool
) -> None:
    if ttl_ms is not None:
        for key, value in items:
            pipe.execute_command(*set_command(key, value, ttl_ms))
    elif not cluster:
        pipe.mset(dict(items))
    else:  # a cluster node takes MSET only within one slot
        values = dict(items)
        for group in slot_groups(list(values)):
            pipe.mset({key: values[key] for key in group})


def _queue_get_many(pipe: Any, groups: Sequence[Sequence[bytes]]) -> None:
    for group in groups:  # one MGET per slot: a cluster node refuses cross-slot MGET
        pipe.mget(group)


def _merge_get_many(
    keys: Sequence[bytes],
    groups: Sequence[Sequence[bytes]],
    replies: list[list[bytes | None]],
) -> list[bytes | None]:
    found = {
        key: value
        for group, values in zip(groups, replies, strict=True)
        for key, value in zip(group, values, strict=True)
    }
    return [found[key] for key in keys]


def _queue_asking(pipe: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    # ASKING holds for the next command only, so it goes before each.
    for command in commands:
        pipe.execute_command("ASKING")
        pipe.execute_command(*command)


def cluster_disabled(exc: BaseException) -> bool:
    """CLUSTER SLOTS answered by a server that is not in cluster mode."""
    return isinstance(exc, redis.ResponseError) and "cluster support disabled" in str(exc)


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
        forksafe.register(self)

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
        except _FAILURES as exc:
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
        except _FAILURES as exc:
            if cluster_disabled(exc):
                return None
            raise translate(exc) from exc
        finally:
            connection.disconnect()

    def asking(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run raw commands, each after ASKING (a slot being imported here)."""
        pipe = self._client.pipeline(transaction=False)
        _queue_asking(pipe, commands)
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
        except _FAILURES as exc:
            raise failure(exc, self.breaker) from exc
        except ValueError as exc:  # "I/O operation on closed file": closed under the call
            if not self._closed:  # (by close(), as for a cluster node that left)
                raise
            raise failure(OSError("the store was closed during the call"), self.breaker) from exc
        finally:
            self._slots.put(None)

    def get(self, key: bytes) -> bytes | None:
        return self._call(self._client.get, key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        groups = slot_groups(keys) if self.cluster else [keys]
        if len(groups) == 1:
            return self._call(self._client.mget, keys)
        pipe = self._client.pipeline(transaction=False)
        _queue_get_many(pipe, groups)
        return _merge_get_many(keys, groups, self._call(pipe.execute))

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        self._call(self._client.execute_command, *set_command(key, value, ttl_ms))

    def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        """GET and PTTL in one round trip (the near cache keeps a copy no longer than Redis)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key).pttl(key)
        value, pttl = self._call(pipe.execute)
        return value, int(pttl)

    def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        command = replace_command(key, old, new, ttl_ms)
        return bool(self._call(self._client.execute_command, *command))

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        """XADD an invalidation, trimming the stream to about ``maxlen`` entries."""
        self._call(self._client.execute_command, *xadd_command(stream, fields, maxlen))

    def stream_reader(self, block: float) -> StreamReader:
        """A connection of its own for the near cache's listener (see ``StreamReader``)."""
        return StreamReader(self._client.connection_pool, self._step, block)

    def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        command = set_command(key, value, ttl_ms, nx=True)
        return bool(self._call(self._client.execute_command, *command))

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        pipe = self._client.pipeline(transaction=False)
        _queue_set_many(pipe, items, ttl_ms, self.cluster)
        self._call(pipe.execute)

    def delete_many(self, keys: Sequence[bytes]) -> int:
        if _one_unlink(keys, self.cluster):
            return self._call(self._client.unlink, *keys) if keys else 0
        pipe = self._client.pipeline(transaction=False)
        _queue_unlink(pipe, keys, self.cluster)
        return sum(self._call(pipe.execute))

    def exists(self, key: bytes) -> bool:
        return self._call(self._client.exists, key) == 1

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        if ttl_ms is None:
            return self._call(self._client.incrby, key, amount)
        pipe = self._client.pipeline(transaction=True)
        _queue_incr(pipe, key, amount, ttl_ms)
        return self._call(pipe.execute)[1]

    def pttl(self, key: bytes) -> int:
        return self._call(self._client.pttl, key)

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        if ttl_ms is not None:
            return bool(self._call(self._client.pexpire, key, ttl_ms))
        pipe = self._client.pipeline(transaction=False)
        pipe.persist(key).exists(key)
        return self._call(pipe.execute)[1] == 1

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        keys = self._client.scan_iter(match=scan_pattern(prefix), count=SCAN_COUNT)
        while True:
            key = self._call(next, keys, None)
            if key is None:
                return
            yield key

    def clear(self, prefix: bytes) -> int:
        # Unlinking while scanning is safe: SCAN still returns every key that stays put.
        return sum(self.delete_many(batch) for batch in _batches(self.scan(prefix)))

    def close(self) -> None:
        self._closed = True
        self._client.close()
        if self._auth is not None:
            self._auth.close()


async def _within(call: Coroutine[Any, Any, T], ceiling: float) -> T:
    """``asyncio.wait_for(call, ceiling)``, except that an outcome nobody will await is
    marked as seen: when the caller is cancelled (a probe at ``close()``) while the call
    fails (its connection closed), wait_for leaves that exception in the task, and asyncio
    prints "Task exception was never retrieved" when it is collected."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_seen)
    return await asyncio.wait_for(task, ceiling)


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
        forksafe.register(self)

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
        except _FAILURES as exc:
            raise translate(exc) from exc
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
        except _FAILURES as exc:
            if cluster_disabled(exc):
                return None
            raise translate(exc) from exc
        finally:
            await connection.disconnect()

    async def asking(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        here = self._here()
        pipe = here.client.pipeline(transaction=False)
        _queue_asking(pipe, commands)
        return list((await here.run(pipe.execute))[1::2])

    async def reset(self) -> None:
        """Close this loop's idle pooled connections: after an outage they may be half dead."""
        await self._here().client.connection_pool.disconnect(inuse_connections=False)

    def __repr__(self) -> str:
        return f"AsyncRedisStore({self._described})"

    def _here(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is None or current.loop is not loop:
            with self._lock:
                current = self._clients.get(loop)
                if current is None:
                    client, self._spare = self._spare or self._connect(), None
                    current = _LoopClient(loop, client, self, self._max_in_flight)
                    self._clients[loop] = current
            self._current = current
        return current

    async def get(self, key: bytes) -> bytes | None:
        here = self._here()
        return await here.run(here.client.get, key)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        here = self._here()
        groups = slot_groups(keys) if self.cluster else [keys]
        if len(groups) == 1:
            return await here.run(here.client.mget, keys)
        pipe = here.client.pipeline(transaction=False)
        _queue_get_many(pipe, groups)
        return _merge_get_many(keys, groups, await here.run(pipe.execute))

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        here = self._here()
        await here.run(here.client.execute_command, *set_command(key, value, ttl_ms))

    async def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        here = self._here()
        pipe = here.client.pipeline(transaction=False)
        pipe.get(key).pttl(key)
        value, pttl = await here.run(pipe.execute)
        return value, int(pttl)

    async def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        here = self._here()
        command = replace_command(key, old, new, ttl_ms)
        return bool(await here.run(here.client.execute_command, *command))

    async def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        here = self._here()
        await here.run(here.client.execute_command, *xadd_command(stream, fields, maxlen))

    def stream_reader(self, block: float) -> StreamReader:
        """The near cache listener's connection: a sync one (the listener is a thread, for
        AsyncCache too), made by the ``reader`` factory ``open_async_store`` passes."""
        if self._reader is None:
            raise ConfigurationError(
                "near_cache needs a store opened from settings (open_async_store), or a "
                "reader factory"
            )
        return self._reader(block)

    async def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        here = self._here()
        command = set_command(key, value, ttl_ms, nx=True)
        return bool(await here.run(here.client.execute_command, *command))

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        here = self._here()
        pipe = here.client.pipeline(transaction=False)
        _queue_set_many(pipe, items, ttl_ms, self.cluster)
        await here.run(pipe.execute)

    async def delete_many(self, keys: Sequence[bytes]) -> int:
        here = self._here()
        if _one_unlink(keys, self.cluster):
            return await here.run(here.client.unlink, *keys) if keys else 0
        pipe = here.client.pipeline(transaction=False)
        _queue_unlink(pipe, keys, self.cluster)
        return sum(await here.run(pipe.execute))

    async def exists(self, key: bytes) -> bool:
        here = self._here()
        return await here.run(here.client.exists, key) == 1

    async def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        here = self._here()
        if ttl_ms is None:
            return await here.run(here.client.incrby, key, amount)
        pipe = here.client.pipeline(transaction=True)
        _queue_incr(pipe, key, amount, ttl_ms)
        return (await here.run(pipe.execute))[1]

    async def pttl(self, key: bytes) -> int:
        here = self._here()
        return await here.run(here.client.pttl, key)

    async def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        here = self._here()
        if ttl_ms is not None:
            return bool(await here.run(here.client.pexpire, key, ttl_ms))
        pipe = here.client.pipeline(transaction=False)
        pipe.persist(key).exists(key)
        return (await here.run(pipe.execute))[1] == 1

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

    async def close(self) -> None:
        """Close this loop's client; clients of loops that are gone go with their loops."""
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
        except _FAILURES as exc:
            raise failure(exc, self._store.breaker) from exc
        finally:
            self._slots.release()
