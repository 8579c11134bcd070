"""Operation counters.

Plain ints, kept lock-free on purpose: they cost nothing on the hot path, and under heavy
contention between threads an increment can very rarely be lost (``+=`` is not atomic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    """``sets``: values stored; ``deletes``: keys removed (by delete, delete_many, clear)."""

    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        self.hits = self.misses = self.sets = self.deletes = self.errors = 0
