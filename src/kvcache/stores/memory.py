"""An in-process store on cachetools: bounded (LRU), per-entry TTL, thread-safe, never blocks.

It is the store for tests and single-process apps, and the fallback that serves while Redis
is away; as a fallback its TTLs are capped (``max_ttl``) so outage-era data ages out.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

from cachetools import TLRUCache

from .. import forksafe
from ..codec import INT64_MAX, INT64_MIN
from ..errors import NOT_A_COUNTER, ConfigurationError, InvalidValueError

DEFAULT_MAXSIZE = 10_000
DEFAULT_FALLBACK_MAXSIZE = 10_000  # entries the fallback holds while Redis is away
DEFAULT_FALLBACK_TTL = 60.0  # seconds: the longest an outage-era entry lives

_Entry = tuple[bytes, float]  # (payload, monotonic expiry time or inf)


def _expiry(_key: bytes, entry: _Entry, _now: float) -> float:
    return entry[1]


class MemoryStore:
    is_async: ClassVar[bool] = False

    def __init__(
        self,
        maxsize: int = DEFAULT_MAXSIZE,
        timer: Callable[[], float] = time.monotonic,
        *,
        max_ttl: float | None = None,
    ) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError("maxsize must be a positive integer")
        if max_ttl is not None and not max_ttl > 0:
            raise ConfigurationError("max_ttl must be > 0 seconds, or None")
        self._entries: TLRUCache[bytes, _Entry] = TLRUCache(maxsize, _expiry, timer=timer)
        self._timer = timer
        self._max_ttl = math.inf if max_ttl is None else float(max_ttl)
        self._lock = threading.Lock()
        forksafe.register(self)

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork time

    def fresh(self) -> MemoryStore:
        """An empty store with the same bounds (a cluster shard's own fallback)."""
        max_ttl = None if self._max_ttl == math.inf else self._max_ttl
        return MemoryStore(int(self._entries.maxsize), self._timer, max_ttl=max_ttl)

    def __repr__(self) -> str:
        cap = "" if self._max_ttl == math.inf else f", max_ttl={self._max_ttl:g}"
        return f"MemoryStore(maxsize={self._entries.maxsize}, size={len(self._entries)}{cap})"

    def _deadline(self, ttl_ms: int | None) -> float:
        ttl = math.inf if ttl_ms is None else ttl_ms / 1000
        return self._timer() + min(ttl, self._max_ttl)

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._lock:
            entries = [self._entries.get(key) for key in keys]
        return [None if entry is None else entry[0] for entry in entries]

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        deadline = self._deadline(ttl_ms)
        with self._lock:
            self._entries[key] = (value, deadline)

    def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        return self.get(key), self.pttl(key)

    def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        deadline = self._deadline(ttl_ms)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != old:
                return False
            self._entries[key] = (new, deadline)
            return True

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        """Nothing to tell: a memory store is one process's (and the fallback never publishes
        for Redis; recovery tells the other processes to flush instead)."""

    def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        deadline = self._deadline(ttl_ms)
        with self._lock:
            if self._entries.get(key) is not None:
                return False
            self._entries[key] = (value, deadline)
            return True

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None:
        deadline = self._deadline(ttl_ms)
        with self._lock:
            for key, value in items:
                self._entries[key] = (value, deadline)

    def delete_many(self, keys: Sequence[bytes]) -> int:
        with self._lock:
            return sum(self._entries.pop(key, None) is not None for key in set(keys))

    def exists(self, key: bytes) -> bool:
        with self._lock:
            return key in self._entries

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = (b"0", self._deadline(ttl_ms))
            try:
                value = int(entry[0]) + amount
            except ValueError:
                raise InvalidValueError(NOT_A_COUNTER) from None
            if not INT64_MIN <= value <= INT64_MAX:  # as Redis: counters are signed 64-bit
                raise InvalidValueError(NOT_A_COUNTER)
            self._entries[key] = (b"%d" % value, entry[1])
            return value

    def pttl(self, key: bytes) -> int:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return -2
        if entry[1] == math.inf:
            return -1
        return max(0, math.ceil((entry[1] - self._timer()) * 1000))

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._entries[key] = (entry[0], self._deadline(ttl_ms))
            return True

    def scan(self, prefix: bytes) -> Iterator[bytes]:
        with self._lock:
            keys = [key for key in self._entries if key.startswith(prefix)]
        yield from keys

    def clear(self, prefix: bytes) -> int:
        with self._lock:
            doomed = [key for key in self._entries if key.startswith(prefix)]
            for key in doomed:
                self._entries.pop(key, None)
        return len(doomed)

    def close(self) -> None:
        """Nothing to release; the entries stay readable, as with any in-process dict."""
