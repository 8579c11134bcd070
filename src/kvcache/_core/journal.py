"""The recovery journal: which keys were written or deleted while Redis was away. Pure.

On recovery those keys are deleted in Redis before READY, so no process reads a value older
than a write it made during the outage. Deleting is always safe for a cache; replaying the
writes is not (another process may have written newer data since). When more keys were
touched than the journal holds, the whole namespace is cleared instead (``overflow="clear"``)
or the keys past the bound are forgotten (``overflow="ignore"``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

from kvcache.errors import ConfigurationError

Overflow = Literal["clear", "ignore"]


class Journal:
    __slots__ = (
        "_applying",
        "_applying_all",
        "_clear_all",
        "_keys",
        "_lock",
        "maxsize",
        "overflow",
        "overflowed",
    )

    def __init__(self, maxsize: int = 10_000, overflow: Overflow = "clear") -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ConfigurationError("journal_size must be a non-negative integer")
        if overflow not in ("clear", "ignore"):
            raise ConfigurationError("journal_overflow must be 'clear' or 'ignore'")
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self._keys: set[bytes] = set()
        self._clear_all = False  # clear the namespace on recovery (clear() or overflow)
        # Taken by a recovery and not yet applied: still shown by ``peek``.
        self._applying: set[bytes] = set()
        self._applying_all = False
        self.overflowed = False  # ever, since the last recovery: for health()
        self._lock = threading.Lock()

    def add(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            if self._clear_all:
                return  # the whole namespace goes anyway
            for key in keys:
                if len(self._keys) >= self.maxsize and key not in self._keys:
                    self.overflowed = True
                    if self.overflow == "clear":
                        self._clear_all = True
                        self._keys.clear()
                        return
                    continue  # "ignore": this key may read stale after recovery
                self._keys.add(key)

    def add_all(self) -> None:
        """The namespace was cleared during the outage: clear it in Redis too."""
        with self._lock:
            self._clear_all = True
            self._keys.clear()

    def take(self) -> tuple[list[bytes], bool]:
        """Everything recorded so far, as (keys, clear the namespace?), to apply; then
        ``applied()``, or ``restore()`` if applying it failed."""
        with self._lock:
            taken = (list(self._keys), self._clear_all)
            self._applying |= self._keys
            self._applying_all = self._applying_all or self._clear_all
            self._keys = set()
            self._clear_all = False
            return taken

    def applied(self) -> None:
        """What ``take`` returned is applied (deleted in Redis)."""
        with self._lock:
            self._applying = set()
            self._applying_all = False

    def peek(self) -> tuple[list[bytes], bool]:
        """What ``take`` would return, kept, and what was taken and is not applied yet: a
        hand-over to a new slot map must see the keys a recovery is applying by the old
        one at that moment (it would delete them where that map put them)."""
        with self._lock:
            return list(self._keys | self._applying), self._clear_all or self._applying_all

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def restore(self, keys: list[bytes], clear_all: bool) -> None:
        """Give back what ``take`` returned when applying it failed."""
        if clear_all:
            self.add_all()
        else:
            self.add(keys)
        self.applied()

    def pending(self) -> bool:
        with self._lock:
            return self._clear_all or bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def settled(self) -> None:
        """Recovery finished: forget that the journal ever overflowed."""
        self.overflowed = False
