"""The near cache listener's connection to its invalidation stream (XINFO, XREAD, XADD)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis

from kvcache._core import forks
from kvcache._redis.commands import xadd_command
from kvcache._redis.errors import FAILURES, translate
from kvcache._redis.probe import probe_connection
from kvcache.errors import CacheUnavailableError, ConfigurationError


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
        forks.register(self)

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
        except (*FAILURES, ValueError) as exc:  # ValueError: closed under a blocked read
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
