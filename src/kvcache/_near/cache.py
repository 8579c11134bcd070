"""The near cache: a per-process L1 of decoded values in front of Redis, kept honest by an
invalidation stream per namespace. Pure: the listener (``Feed.listen``) is a generator that
yields its Redis calls for a shell (``_near/listener.py``) to carry out.

- Every write (set, add, incr, delete, clear, ...) evicts its keys here, before and after the
  Redis write, and XADDs them to the namespace's stream with this process's instance id.
- Each process's listener reads the stream from the last entry it processed. It took its
  position (last id and the stream's ``entries-added``) before it reported ready, so nothing
  written in between is missed. Each read is a snapshot (``MULTI / XINFO STREAM / XREAD /
  EXEC``): with ``entries-added`` and ``length`` it knows the ordinal of the first entry left,
  so it sees when entries it had not read were trimmed away (Redis's ``max-deleted-entry-id``
  does not move on trimming), and then flushes the whole L1.
- While the listener is not connected, or not caught up, the L1 is bypassed: not read, not
  filled. A fill is dropped if any eviction happened while its GET was in flight (``epoch``).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kvcache._core import forks
from kvcache._core.types import MISSING, Call, request
from kvcache.errors import ConfigurationError

ALL: Final = b"*"  # an entry's key list meaning "the whole namespace" (clear)
STREAM_PREFIX: Final = "__kvcache_invalidations__:"  # outside every namespace: clear() spares it
READ_COUNT: Final = 500  # entries per snapshot read
MAX_PENDING: Final = 10_000  # unannounced keys kept; past it, the whole namespace is announced


@dataclass(frozen=True, slots=True)
class NearCacheConfig:
    """``maxsize`` entries; an L1 copy lives at most ``ttl`` seconds (and never past the key's
    Redis TTL); the stream keeps about ``stream_maxlen`` entries (a listener that falls
    further behind flushes its L1); a blocked read wakes every ``block`` seconds."""

    maxsize: int = 10_000
    ttl: float = 60.0
    stream_maxlen: int = 10_000
    block: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.maxsize, int) or self.maxsize < 1:
            raise ConfigurationError("near cache maxsize must be a positive integer")
        if not 0 < self.ttl < math.inf:
            raise ConfigurationError("near cache ttl must be > 0 seconds")
        if not isinstance(self.stream_maxlen, int) or self.stream_maxlen < 100:
            raise ConfigurationError("near cache stream_maxlen must be an integer >= 100")
        if not 0 < self.block <= 60:
            raise ConfigurationError("near cache block must be in (0, 60] seconds")


def stream_key(namespace: str) -> bytes:
    return (STREAM_PREFIX + namespace).encode()


class NearCache:
    """The L1. Thread-safe; ``ready`` is the listener's word that it is connected and caught
    up (else every lookup misses and every fill is dropped)."""

    def __init__(
        self, config: NearCacheConfig, namespace: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.stream = stream_key(namespace)
        self.instance = uuid.uuid4().hex.encode()  # its own entries are skipped by its listener
        self.ready = False
        self.closed = False  # the cache closed: never ready again
        self.epoch = 0  # bumped by every eviction
        self._clock = clock
        # A plain dict: a lookup is one C-level get (cachetools' TLRUCache took 2.5 µs of a
        # 5 µs hit). Bounded by dropping the oldest insertion; expiry checked on read.
        # key -> (value, fresh until, kept until): past "fresh until" a copy is a miss, but
        # until "kept until" (its Redis expiry) the fail-safe may still serve it.
        self._entries: dict[bytes, tuple[Any, float, float]] = {}
        self._pending: set[bytes] = set()  # written, but the stream has not been told yet
        self.on_pending: Callable[[], object] | None = None  # wakes the listener (a fork's)
        self._lock = threading.Lock()  # writers only: a dict get is atomic
        forks.register(self)

    def after_fork(self) -> None:
        # The parent's listener does not exist here: bypass until this process's is ready.
        # A process of its own: its own id, or it would skip the parent's writes as its own.
        self._lock = threading.Lock()
        self.ready = False
        self.instance = uuid.uuid4().hex.encode()
        self._entries.clear()

    def lookup(self, key: bytes) -> Any:
        if not self.ready or self.closed:
            return MISSING
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            return MISSING
        return entry[0]

    def stale(self, key: bytes) -> Any:
        """Fail-safe: the copy of ``key``, fresh or not, while Redis still would keep it;
        even with the listener away (only an eviction it missed could make it older)."""
        entry = self._entries.get(key)
        if entry is None or self.closed or entry[2] <= self._clock():
            return MISSING
        return entry[0]

    def ticket(self) -> tuple[int, float]:
        """Taken before a read from Redis: the epoch, and the time (a copy's TTL counts from
        when the read started, so it never outlives the key in Redis)."""
        return self.epoch, self._clock()

    def fill(
        self,
        key: bytes,
        value: Any,
        pttl_ms: int,
        ticket: tuple[int, float],
        fresh_ms: int | None = None,
    ) -> None:
        """Keep ``value`` (read from Redis, whose PTTL was ``pttl_ms``; fresh for ``fresh_ms``
        more if it is kept for fail-safe) unless an eviction came while it was read (the
        ticket's epoch is old), or the listener is not ready."""
        if pttl_ms == -2 or not self.ready:  # -2: gone already
            return
        epoch, read_at = ticket
        kept = math.inf if pttl_ms < 0 else pttl_ms / 1000
        fresh = kept if fresh_ms is None else min(kept, fresh_ms / 1000)
        ttl = min(self.config.ttl, fresh)
        with self._lock:
            if epoch == self.epoch and self.ready and not self.closed:
                entries = self._entries
                entries.pop(key, None)  # re-inserted last: the oldest go first
                if len(entries) >= self.config.maxsize:
                    del entries[next(iter(entries))]
                entries[key] = (value, read_at + ttl, read_at + max(ttl, kept))

    def evict(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            self.epoch += 1
            for key in keys:
                self._entries.pop(key, None)

    def flush(self) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.clear()

    def unannounced(self, keys: Sequence[bytes]) -> None:
        """``keys`` changed (or may have: a write that failed half-way) and the stream could
        not be told: the listener tells it as soon as it can."""
        with self._lock:
            self._pending.update(keys)
            if len(self._pending) > MAX_PENDING:
                self._pending = {ALL}
        if self.on_pending is not None:  # a forked worker that only writes has none running
            self.on_pending()

    def take_pending(self) -> list[bytes]:
        with self._lock:
            pending, self._pending = self._pending, set()
        return [ALL] if ALL in pending else list(pending)

    def close(self) -> None:
        self.closed = True
        self.ready = False
        self.flush()

    def changed(self, keys: Sequence[bytes]) -> None:
        """``keys`` were written (``[ALL]``: the namespace was cleared). A full key always
        holds its namespace's prefix, so none is ``*`` itself."""
        if len(keys) == 1 and keys[0] == ALL:
            self.flush()
        else:
            self.evict(keys)

    def entry(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stream entry announcing a write of ``keys``."""
        fields = {b"by": self.instance, b"n": str(len(keys)).encode()}
        for index, key in enumerate(keys):
            fields[str(index).encode()] = key
        return fields

    def __len__(self) -> int:
        return len(self._entries)


def keys_of(fields: dict[bytes, bytes]) -> list[bytes]:
    count = int(fields.get(b"n", b"0"))
    return [fields[str(index).encode()] for index in range(count)]


Entry = tuple[bytes, dict[bytes, bytes]]  # (id, fields) of one stream entry


class Reader(Protocol):
    """The listener's own connection to the stream (``_redis/stream.py``)."""

    def position(self, stream: bytes) -> tuple[bytes, int] | None:
        """(last id, entries-added) now; None when the stream does not exist."""

    def snapshot(
        self, stream: bytes, after: bytes, count: int
    ) -> tuple[list[Entry], int, int] | None:
        """At one instant: up to ``count`` entries after ``after``, and the stream's
        entries-added and length; None when the stream does not exist."""

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None: ...

    def wait(self, stream: bytes, after: bytes, block_ms: int) -> None:
        """Until an entry after ``after`` exists, or ``block_ms`` passed."""


class Feed:
    """The listener's state across reconnects: the last entry applied (id and ordinal)."""

    def __init__(self, near: NearCache, reader: Any) -> None:
        self.near = near
        self.reader = reader  # position / snapshot / wait, on a connection of its own
        self.last_id = b"0-0"
        self.ordinal = 0  # the stream's entries-added count at last_id
        self.positioned = False
        self.flushes = 0  # gaps and lost streams seen (tests, telemetry)

    def listen(self) -> Generator[Call, Any, None]:
        """Runs until a call fails (the shell reconnects and calls it again)."""
        near = self.near
        try:
            if not self.positioned:
                position = yield self.reader, request(Reader.position, near.stream)
                if position is not None:
                    self.last_id, self.ordinal = position
                self.positioned = True  # before ready: what is written from now on is read
            while not near.closed:
                yield from self._announce_pending()
                caught_up = yield from self._catch_up()
                near.ready = caught_up and not near.closed
                if caught_up:
                    block_ms = max(1, int(near.config.block * 1000))
                    # A wake-up only: the entries are read again by the next snapshot, which
                    # checks for a gap; applying them here could skip one.
                    wait = request(Reader.wait, near.stream, self.last_id, block_ms)
                    yield self.reader, wait
        except BaseException:
            near.ready = False  # disconnected: bypass until caught up again
            raise

    def _catch_up(self) -> Generator[Call, Any, bool]:
        """One snapshot read; True when nothing more is pending."""
        read = request(Reader.snapshot, self.near.stream, self.last_id, READ_COUNT)
        snapshot = yield self.reader, read
        if snapshot is None:  # no stream: never written, or deleted (flushed, evicted)
            if self.ordinal:
                self._gap()
            self.last_id, self.ordinal = b"0-0", 0
            return True
        entries, added, length = snapshot
        if added < self.ordinal:  # the stream was deleted and made again: start over
            self._gap()
            self.last_id, self.ordinal = b"0-0", 0
            return False
        first = added - length + 1  # ordinal of the first entry still in the stream
        if length and first > self.ordinal + 1:
            self._gap()  # entries we had not read were trimmed away
            self.ordinal = first - 1
        for entry_id, fields in entries:
            self.last_id, self.ordinal = entry_id, self.ordinal + 1
            if fields.get(b"by") != self.near.instance:  # our own writes evicted at once
                self.near.changed(keys_of(fields))
        caught_up = len(entries) < READ_COUNT
        if caught_up and self.ordinal != added:
            # Read to the end, the count does not add up: the stream was deleted and made
            # again (FLUSHALL, an eviction) with as many entries as we had read, or emptied.
            self._gap()
            self.ordinal = added
        return caught_up

    def _announce_pending(self) -> Generator[Call, Any, None]:
        """Writes whose invalidation could not be published (Redis refused the XADD, or was
        away): published now, on the listener's own connection."""
        keys = self.near.take_pending()
        if not keys:
            return
        near = self.near
        try:
            fields, maxlen = near.entry(keys), near.config.stream_maxlen
            yield self.reader, request(Reader.publish, near.stream, fields, maxlen)
        except BaseException:
            near.unannounced(keys)
            raise

    def _gap(self) -> None:
        self.flushes += 1
        self.near.flush()
