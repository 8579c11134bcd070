"""TTL rules, in seconds at the API and milliseconds on the wire. Pure, no I/O."""

from __future__ import annotations

import math
from typing import Final

from kvcache.errors import InvalidTTLError


class _Forever(float):
    """Infinity that says "no expiry" on purpose: a ``float("inf")`` that an overflow or a
    parsed string produced is refused, so that only this constant stores a key forever."""

    def __repr__(self) -> str:
        return "kvcache.FOREVER"

    def __reduce__(self) -> str:  # unpickles (and copies) as the one constant
        return "FOREVER"


FOREVER: Final = _Forever(math.inf)
"""Pass as ``ttl`` to store without expiry even when the cache has a default TTL. It equals
``math.inf``, but only this constant is accepted: any other infinity is an error."""

TTL = float | None  # seconds; None means "the cache's default TTL"

MAX_TTL: Final = 100 * 365 * 86400.0  # far below Redis's PX limit; anything longer is a bug


def check_ttl(ttl: object, name: str = "ttl") -> float | None:
    """Validate a TTL in seconds: None, FOREVER, or a finite number > 0."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTLError(f"{name} must be a number of seconds, not {type(ttl).__name__}")
    if ttl is FOREVER:
        return FOREVER
    if math.isinf(ttl) and ttl > 0:
        raise InvalidTTLError(f"{name} must be finite: for no expiry pass kvcache.FOREVER")
    if math.isnan(ttl) or ttl <= 0:
        raise InvalidTTLError(
            f"{name} must be > 0 seconds (or None / kvcache.FOREVER), got {ttl!r}"
        )
    if ttl > MAX_TTL:
        raise InvalidTTLError(
            f"{name} must be at most {MAX_TTL:.0f} seconds or FOREVER, got {ttl!r}"
        )
    return float(ttl)


def to_millis(ttl: float | None) -> int | None:
    """Seconds (validated) to whole milliseconds for PX/PEXPIRE; None means no expiry."""
    if ttl is None or ttl == FOREVER:
        return None
    return max(1, math.ceil(ttl * 1000))


def from_pttl(pttl: int) -> float | None:
    """A PTTL reply to seconds: None for a missing key, FOREVER for a key without expiry."""
    if pttl == -2:
        return None
    if pttl == -1:
        return FOREVER
    return pttl / 1000
