"""The names every layer shares, defined once: the effects the core yields, "no value", and
the outcome vocabulary of stats, telemetry and logs."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final, TypeVar

T = TypeVar("T")

Call = tuple[Any, ...]
"""One store call the core asks its shell to carry out: (store, method name, *arguments)."""

Op = Generator[Call, Any, T]
"""An operation of the core: yields calls, is sent their results, returns a ``T``."""

MISSING: Any = object()  # "no value" where None is a value

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # Redis counters (INCRBY) are signed 64-bit

# Outcomes: what a call ended as (reads count one per key).
HIT: Final = "hit"
MISS: Final = "miss"
FALLBACK_HIT: Final = "fallback_hit"
FALLBACK_MISS: Final = "fallback_miss"
NEAR_HIT: Final = "near_hit"  # answered by the near cache (L1)
STALE_HIT: Final = "stale_hit"  # get_or_set's factory failed: a stale value served (fail-safe)
OK: Final = "ok"
FALLBACK: Final = "fallback"
ERROR: Final = "error"

Outcome = str | BaseException  # an outcome, or the error a call ended with
