"""The consistency model of docs/consistency.md, checked over a whole history.

For each read that answered a value, the write that produced it (``older``) is found by the
value. The read is stale when some later write (one that *started* after ``older`` ended,
so the two are not concurrent) had become visible to the reader before the read started:

- rule 1, read-your-writes: the reader's own acknowledged write, once it returned;
- rule 2, no stale read after contact: another client's write acknowledged from Redis,
  once the reader's own next call answered by Redis on that key began after it; for a
  near-cache hit, also once ``near_window`` seconds passed after it (the documented bound
  on how long an L1 copy may outlive a write).

A stale read whose newer write was acknowledged inside a window where Redis itself may
lose acknowledged writes (``lossy``: the moments before a primary was killed, when it may
not have replicated them yet) is reported apart, as Redis's, not hidden.
Rule 3: no exception reaches a caller. Rule 4: no call lasts longer than ``bound(record)``.
A read of a value no write produced (or before its write began) is a violation of rule 2:
nothing may be invented.
A write *in doubt* (its call failed after it may have sent the command) may land in Redis
late, as Jepsen treats an indeterminate operation: it is concurrent with every call that
starts before the fault its call met ended (``faults``: a blackhole delivers what it held
when it lifts), plus ``DOUBT`` seconds for a loaded machine; not for ever.
Fail-safe answers (``source="stale"``) are stale by request and checked only for that. A
``get_many`` the near cache answered in part (``"l1-some"``) is checked for rule 1 only.
A ``get_or_set`` fill the fallback took is a value, not a write anyone must see after it:
kvcache never journals fills (``Record.fallback_fill``)."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kvcache.testing.soak.history import Record

_NEVER = math.inf
DOUBT = 1.0  # seconds past its fault (or its call) a write in doubt may still land
_Seen = tuple[float, Record | None]  # when a write became visible, and the call that made it so
_Newer = tuple[float, int, Record | None]  # (when, index of the write, that call)


@dataclass(frozen=True, slots=True)
class Violation:
    rule: int  # 1-4, as in docs/consistency.md
    what: str
    records: tuple[Record, ...]  # the smallest sub-history that shows it, in time order
    lossy: bool = False  # inside a window where Redis may lose acknowledged writes

    def show(self) -> str:
        origin = min(record.start for record in self.records)
        lines = [f"rule {self.rule}{' (Redis may lose writes here)' if self.lossy else ''}: "]
        lines[0] += self.what
        lines += ["  " + record.show(origin) for record in self.records]
        return "\n".join(lines)


class _Key:
    """One key's writes in start order, and each client's calls answered by Redis."""

    def __init__(self, records: Sequence[Record], faults: Sequence[tuple[float, float]]) -> None:
        self.faults = faults
        self.writes = sorted((r for r in records if r.kind == "write"), key=lambda r: r.start)
        self.starts = [w.start for w in self.writes]
        # The writes that may have produced a value: not an ``add`` that found the key.
        self.by_value = {
            w.value: w for w in self.writes if w.value is not None and (w.ok or w.in_doubt)
        }
        contacts: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            if record.contact and record.source != "l1":
                contacts[record.client].append(record)
        self.contacts = {c: sorted(rs, key=lambda r: r.start) for c, rs in contacts.items()}
        # Their starts, built once: per lookup, they made a 600 s soak's check quadratic.
        self.contact_starts = {c: [r.start for r in rs] for c, rs in self.contacts.items()}
        self._suffix: dict[tuple[str, bool], list[_Newer]] = {}

    def first_contact_after(self, client: str, when: float) -> Record | None:
        calls = self.contacts.get(client, [])
        i = bisect.bisect_right(self.contact_starts.get(client, []), when)
        return calls[i] if i < len(calls) else None

    def visible(self, write: Record, reader: str, l1: bool, window: float) -> _Seen:
        """When ``write`` became visible to ``reader`` (and the call that made it so)."""
        if not write.acknowledged or write.fallback_fill:
            return _NEVER, None
        if write.client == reader:
            return write.end, None
        if not write.contact:  # served by the writer's fallback: no one else can see it
            return _NEVER, None
        if l1:  # a copy lives on until its eviction comes, whatever the reader did since
            return write.end + window, None
        contact = self.first_contact_after(reader, write.end)
        return (contact.start if contact is not None else _NEVER), contact

    def landed_by(self, write: Record) -> float:
        """When ``write`` was in Redis, if ever: at its end, or for one in doubt, once the
        faults its call met were over (and ``DOUBT`` more)."""
        if not write.in_doubt:
            return write.end
        end = write.end
        for began, ended in self.faults:
            if began <= write.end and write.start <= ended:
                end = max(end, ended)
        return end + DOUBT

    def earliest_newer(self, older: Record, reader: str, l1: bool, window: float) -> _Newer:
        """Of the writes that started after ``older`` ended: the one visible to ``reader``
        first, as (when, index, contact)."""
        suffix = self._suffix.get((reader, l1))
        if suffix is None:  # suffix minima, built once per reader
            suffix = [(_NEVER, -1, None)] * (len(self.writes) + 1)
            for i in range(len(self.writes) - 1, -1, -1):
                when, contact = self.visible(self.writes[i], reader, l1, window)
                suffix[i] = min(suffix[i + 1], (when, i, contact), key=lambda t: t[0])
            self._suffix[reader, l1] = suffix
        return suffix[bisect.bisect_right(self.starts, self.landed_by(older))]


def check(
    records: Iterable[Record],
    *,
    bound: Callable[[Record], float],
    near_window: float = 0.0,
    lossy: Sequence[tuple[float, float]] = (),
    faults: Sequence[tuple[float, float]] = (),
) -> list[Violation]:
    """Every violation in ``records``, in the order of the calls that show them.
    ``faults``: when each fault began and ended (what bounds a write in doubt)."""
    records = list(records)
    violations: list[Violation] = []
    by_key: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)
        if record.error is not None:
            violations.append(Violation(3, f"{record.error} reached the caller", (record,)))
        if record.end - record.start > bound(record):
            took = (record.end - record.start) * 1000
            what = f"took {took:.0f} ms, over its bound of {bound(record) * 1000:.0f} ms"
            violations.append(Violation(4, what, (record,)))
    for key_records in by_key.values():
        key = _Key(key_records, faults)
        for read in key_records:
            if read.kind != "read" or read.value is None or read.error is not None:
                continue
            older = key.by_value.get(read.value)
            if older is None:
                violations.append(Violation(2, "read a value no write produced", (read,)))
                continue
            if older.start > read.end:
                what = f"read {older.value!r} before its write began"
                violations.append(Violation(2, what, (read, older)))
                continue
            if read.source == "stale":
                continue
            l1 = read.source == "l1"
            when, index, contact = key.earliest_newer(older, read.client, l1, near_window)
            if when > read.start:
                continue
            newer = key.writes[index]
            rule = 1 if newer.client == read.client else 2
            if rule == 2 and read.source == "l1-some":
                continue  # an L1 copy (by its window) or not (by contact): unknown which
            shown = sorted(
                {older, newer, read} | ({contact} if contact is not None else set()),
                key=lambda r: r.start,
            )
            what = f"read {older.value!r} after {newer.value!r} was visible to it"
            if l1 and rule == 2:
                what += f" (a near-cache copy {near_window * 1000:.0f} ms past the write)"
            in_lossy = any(lo <= newer.end <= hi for lo, hi in lossy)
            violations.append(Violation(rule, what, tuple(shown), lossy=in_lossy))
    return sorted(violations, key=lambda v: v.records[-1].start)
