"""Operation counters.

Plain ints, kept lock-free on purpose: they cost nothing on the hot path, and under heavy
contention between threads an increment can very rarely be lost (``+=`` is not atomic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class Stats:
    """Misses and failures are told apart:

    - ``hits`` / ``misses``: reads Redis answered (found / not found);
    - ``fallback_hits`` / ``fallback_misses``: reads the in-memory fallback answered while
      Redis was away (STARTING or DEGRADED);
    - ``errors``: calls that failed (a store error, a Redis command that opened the breaker,
      an unreadable payload);
    - ``sets``: values stored; ``deletes``: keys removed (by delete, delete_many, clear);
    - ``near_hits``: reads the near cache (``near_cache=True``) answered without Redis;
    - ``stale_hits``: ``get_or_set`` calls whose factory failed and that served a value past
      its logical expiry instead (fail-safe, ``stale_ttl``).
    """

    hits: int = 0
    misses: int = 0
    fallback_hits: int = 0
    fallback_misses: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0
    near_hits: int = 0
    stale_hits: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        for field in fields(self):
            setattr(self, field.name, 0)
