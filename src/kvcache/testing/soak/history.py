"""One operation of a soak, as the client that made it saw it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Record:
    """A read or write of one key (a ``get_many`` or ``set_many`` leaves one per key).

    ``client``: the cache instance that made the call ("p2.sync": process 2's ``Cache``);
    the model's guarantees are per instance (two caches in one process share nothing).
    ``value``: what was written, or read; unique per write ("p2.sync:17"), so a read can be
    traced to the write that produced it; None for a delete, a miss, or an op with no value.
    ``start``/``end``: ``time.monotonic()`` (one clock for every process on Linux);
    ``wall``: ``time.time()`` at the start, for reading logs beside the history.
    ``contact``: the call was answered by Redis (the cache READY before and after it, and
    no state or error event meanwhile): only such a call can be a write acknowledged from
    Redis, or a process's contact with Redis after a write.
    ``source``: "" (Redis or the fallback), "l1" (a near-cache hit), "l1-some" (a
    ``get_many`` the near cache answered in part, which keys unknown), "stale" (fail-safe:
    a factory raised and ``get_or_set`` answered a stale value, as documented).
    ``error``: the exception that reached the caller, if one did (``repr``)."""

    client: str
    kind: str  # "read" | "write" | "other" (touch, incr: contact and bounds only)
    op: str
    key: str
    value: str | None
    start: float
    end: float
    wall: float = 0.0
    contact: bool = False
    source: str = ""
    error: str | None = None
    in_doubt: bool = False  # a write that started READY and ended in a failure: its command
    # may have been sent, and may still land in Redis after the call returned
    ok: bool = True  # what a write answered: False (the store failed, or ``add`` found the
    # key) is no acknowledgement, though the value may have reached Redis all the same

    @property
    def acknowledged(self) -> bool:
        """A write the caller was told succeeded."""
        return self.kind == "write" and self.error is None and self.ok

    @property
    def fallback_fill(self) -> bool:
        """A ``get_or_set`` fill the fallback took (Redis did not answer): kept in memory,
        never journaled, so once Redis is back its client may read Redis's value again.
        A fill computes a cache entry; it invalidates nothing (docs/consistency.md)."""
        return self.kind == "write" and self.op == "get_or_set" and not self.contact

    def show(self, origin: float) -> str:
        """One line of a sub-history, times in ms from ``origin``."""
        how = ", ".join(
            part
            for part in (
                "redis" if self.contact else "",
                self.source,
                f"raised {self.error}" if self.error else "",
                "" if self.ok else "answered False",
                "in doubt" if self.in_doubt else "",
            )
            if part
        )
        return (
            f"{(self.start - origin) * 1000:9.1f} .. {(self.end - origin) * 1000:9.1f} ms  "
            f"{self.client:<10} {self.op}({self.key!r}) {self.kind} {self.value!r}"
            + (f"  [{how}]" if how else "")
        )


FIELDS = tuple(f.name for f in fields(Record))


def to_row(record: Record) -> tuple[Any, ...]:
    """A record as a row, its fields in order: how a worker keeps and sends its history.
    ``dataclasses.asdict`` took 29 s for one worker's 1.25 M records of a 600 s soak (it
    copies deeply), past the runner's wait; and a tuple of plain values is one object the
    garbage collector stops tracking, where a million records made each full collection
    pause the worker's every thread (0.25 s on an idle machine, seconds on a loaded one).
    """
    return tuple(getattr(record, name) for name in FIELDS)


def from_row(row: Sequence[Any]) -> Record:
    return Record(*row)
