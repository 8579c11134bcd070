"""An in-process store on cachetools: bounded (LRU), per-entry TTL, thread-safe, never blocks.

It is the store for tests and single-process apps, and the fallback that serves while Redis
is away; as a fallback its TTLs are capped (``max_ttl``) so outage-era data ages out, and
its memory is bounded in bytes (``max_bytes``) as well as in entries.

Bounds are a *pool's*: ``fresh()`` (a cluster shard's own fallback) is a new view on the
same pool, so a cache's fallback and its shards' share one entry cap, one byte cap and one
LRU order (a cache with 6 shards is not allowed 6 times the bound); each view still reads,
lists and clears only its own keys, so one shard's recovery empties only its own.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

from cachetools import Cache, TLRUCache

from kvcache._core import forks
from kvcache._core.types import INT64_MAX, INT64_MIN
from kvcache.errors import NOT_A_COUNTER, ConfigurationError, InvalidValueError

DEFAULT_MAXSIZE = 10_000
DEFAULT_FALLBACK_MAXSIZE = 10_000  # entries the fallback holds while Redis is away
DEFAULT_FALLBACK_TTL = 60.0  # seconds: the longest an outage-era entry lives
DEFAULT_FALLBACK_MAX_BYTES = 64 * 1024 * 1024  # the fallback's memory, all its shards' together
# Counted against max_bytes per entry besides its key and value: measured with tracemalloc
# (cachetools' dicts, LRU order and expiry heap, our tuple, two bytes headers: ~410 bytes).
ENTRY_OVERHEAD = 400
TIDY_INTERVAL = 1.0  # seconds: reads drop expired entries at most this often (a heap peek)

_Slot = tuple[int, bytes]  # (view, key): the pool's key
_Entry = tuple[bytes, float, bytes]  # (payload, monotonic expiry time or inf, key)


def _expiry(_slot: _Slot, entry: _Entry, _now: float) -> float:
    return entry[1]


def _cost(entry: _Entry) -> int:
    return len(entry[0]) + len(entry[2]) + ENTRY_OVERHEAD


class _Entries(TLRUCache[_Slot, _Entry]):
    """A TLRU cache bounded twice: cachetools' ``maxsize`` bounds the sum of ``_cost`` (the
    bytes), ``maxcount`` the number of entries; past either, least recently used go first."""

    def __init__(self, maxcount: int, max_bytes: float, timer: Callable[[], float]) -> None:
        super().__init__(max_bytes, _expiry, timer=timer, getsizeof=_cost)
        self.maxcount = maxcount

    def __setitem__(self, slot: _Slot, entry: _Entry) -> None:
        count = Cache.__len__  # (TLRUCache's len() first expires: a heap walk per write)
        if count(self) >= self.maxcount and slot not in self:
            self.expire()
            while count(self) >= self.maxcount:
                self.popitem()
        TLRUCache.__setitem__(self, slot, entry)


class _Pool:
    """What a store and its ``fresh()`` views share: the entries, their bounds, one lock."""

    def __init__(
        self, maxsize: int, max_bytes: int | None, timer: Callable[[], float], max_ttl: float
    ) -> None:
        self.entries = _Entries(maxsize, math.inf if max_bytes is None else max_bytes, timer)
        self.max_bytes = max_bytes
        self.largest = self.entries.maxsize - ENTRY_OVERHEAD  # one key and value, at most
        self.timer = timer
        self.max_ttl = max_ttl
        self.lock = threading.Lock()
        self.views = itertools.count()
        self.tidy_at = -math.inf
        forks.register(self)

    def tidy(self) -> None:
        """Drop expired entries (under the lock): cachetools does it on writes only, and
        an outage-era value must not hold its memory until the next write comes."""
        now = self.timer()
        if now >= self.tidy_at:
            self.tidy_at = now + TIDY_INTERVAL
            self.entries.expire(now)

    def after_fork(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it at fork time


class MemoryStore:
    is_async: ClassVar[bool] = False

    def __init__(
        self,
        maxsize: int = DEFAULT_MAXSIZE,
        timer: Callable[[], float] = time.monotonic,
        *,
        max_ttl: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """``maxsize`` entries and (unless None) ``max_bytes`` bytes at most, counting each
        entry's key, value and ``ENTRY_OVERHEAD``; ``max_ttl`` caps every entry's TTL."""
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError("maxsize must be a positive integer")
        if max_ttl is not None and not max_ttl > 0:
            raise ConfigurationError("max_ttl must be > 0 seconds, or None")
        if max_bytes is not None and (
            not isinstance(max_bytes, int)
            or isinstance(max_bytes, bool)
            or max_bytes <= ENTRY_OVERHEAD
        ):
            raise ConfigurationError(
                f"max_bytes must be an integer over {ENTRY_OVERHEAD} (what an entry's "
                "bookkeeping counts), or None"
            )
        max_ttl = math.inf if max_ttl is None else float(max_ttl)
        self._attach(_Pool(maxsize, max_bytes, timer, max_ttl))

    def _attach(self, pool: _Pool) -> None:
        self._pool = pool
        self._view = next(pool.views)
        self._entries = pool.entries
        self._timer = pool.timer
        self._max_ttl = pool.max_ttl

    def fresh(self) -> MemoryStore:
        """An empty view on this store's pool (a cluster shard's own fallback): its own
        keys, the same bounds, shared."""
        view = MemoryStore.__new__(MemoryStore)
        view._attach(self._pool)
        return view

    @property
    def max_bytes(self) -> int | None:
        return self._pool.max_bytes

    @property
    def size_bytes(self) -> int:
        """The bytes the pool's entries count against ``max_bytes`` (all views')."""
        with self._pool.lock:
            return self._size()[1]

    def _size(self) -> tuple[int, int]:
        """(entries, bytes), under the lock: cachetools' ``len()`` and ``currsize`` first
        expire entries, popping the expiry heap a write in another thread may be pushing."""
        return len(self._entries), int(self._entries.currsize)

    def __repr__(self) -> str:
        with self._pool.lock:
            size, size_bytes = self._size()
        cap = "" if self._max_ttl == math.inf else f", max_ttl={self._max_ttl:g}"
        if self.max_bytes is not None:
            cap += f", max_bytes={self.max_bytes}, size_bytes={size_bytes}"
        return f"MemoryStore(maxsize={self._entries.maxcount}, size={size}{cap})"

    def _deadline(self, ttl_ms: int | None) -> float:
        ttl = math.inf if ttl_ms is None else ttl_ms / 1000
        return self._timer() + min(ttl, self._max_ttl)

    def _find(self, key: bytes) -> _Entry | None:
        """The live entry of ``key`` (under the lock)."""
        return self._entries.get((self._view, key))

    def _put(self, key: bytes, value: bytes, deadline: float) -> bool:
        """Store (under the lock); a value larger than the whole bound is evicted at once,
        and takes any older value of its key with it."""
        if len(value) + len(key) > self._pool.largest:
            self._entries.pop((self._view, key), None)
            return False
        self._entries[self._view, key] = (value, deadline, key)
        return True

    def get(self, key: bytes) -> bytes | None:
        with self._pool.lock:
            self._pool.tidy()
            entry = self._find(key)
        return None if entry is None else entry[0]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._pool.lock:
            self._pool.tidy()
            entries = [self._find(key) for key in keys]
        return [None if entry is None else entry[0] for entry in entries]

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        deadline = self._deadline(ttl_ms)
        with self._pool.lock:
            self._put(key, value, deadline)

    def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        return self.get(key), self.pttl(key)

    def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        deadline = self._deadline(ttl_ms)
        with self._pool.lock:
            entry = self._find(key)
            if entry is None or entry[0] != old:
                return False
            return self._put(key, new, deadline)

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        """Nothing to tell: a memory store is one process's (and the fallback never publishes
        for Redis; recovery tells the other processes to flush instead)."""

    def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        deadline = self._deadline(ttl_ms)
        with self._pool.lock:
            if self._find(key) is not None:
                return False
            return self._put(key, value, deadline)

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        deadline = self._deadline(ttl_ms)
        with self._pool.lock:
            for key, value in items:
                self._put(key, value, deadline)

    def delete_many(self, keys: Sequence[bytes]) -> int:
        view = self._view
        with self._pool.lock:
            return sum(self._entries.pop((view, key), None) is not None for key in set(keys))

    def exists(self, key: bytes) -> bool:
        with self._pool.lock:
            self._pool.tidy()
            return (self._view, key) in self._entries

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        with self._pool.lock:
            entry = self._find(key)
            expiry = self._deadline(ttl_ms) if entry is None else entry[1]
            try:
                value = int(b"0" if entry is None else entry[0]) + amount
            except ValueError:
                raise InvalidValueError(NOT_A_COUNTER) from None
            if not INT64_MIN <= value <= INT64_MAX:  # as Redis: counters are signed 64-bit
                raise InvalidValueError(NOT_A_COUNTER)
            self._put(key, b"%d" % value, expiry)
            return value

    def pttl(self, key: bytes) -> int:
        with self._pool.lock:
            self._pool.tidy()
            entry = self._find(key)
        if entry is None:
            return -2
        if entry[1] == math.inf:
            return -1
        return max(0, math.ceil((entry[1] - self._timer()) * 1000))

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        with self._pool.lock:
            entry = self._find(key)
            if entry is None:
                return False
            return self._put(key, entry[0], self._deadline(ttl_ms))

    def _mine(self, prefix: bytes) -> list[bytes]:
        """This view's keys that start with ``prefix`` (under the lock)."""
        view = self._view
        return [key for owner, key in self._entries if owner == view and key.startswith(prefix)]

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        with self._pool.lock:
            self._pool.tidy()
            keys = self._mine(prefix)
        yield from keys

    def clear(self, prefix: bytes) -> int:
        view = self._view
        with self._pool.lock:
            doomed = self._mine(prefix)
            for key in doomed:
                self._entries.pop((view, key), None)
        return len(doomed)

    def close(self) -> None:
        """Nothing to release; the entries stay readable, as with any in-process dict."""
