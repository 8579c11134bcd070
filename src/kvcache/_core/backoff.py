"""Exponential backoff, the one formula of every retry loop in kvcache: the probes, the
near cache listener's reconnects, and the topology checks while a shard is down.

The n-th wait (n from 0) is at most ``min(cap, base * 2**n)``; with "equal jitter" it is
drawn from [ceiling/2, ceiling], so a fleet of processes never retries in step and the
longest wait stays ``cap``. Pure: the jitter (in [0, 1)) is the caller's."""

from __future__ import annotations


def ceiling(base: float, cap: float, n: int) -> float:
    """The n-th wait without jitter."""
    return min(cap, base * 2.0 ** min(n, 62))  # 2**62: no float overflow, long past any cap


def delay(base: float, cap: float, n: int, jitter: float) -> float:
    """The n-th wait with equal jitter, ``jitter`` in [0, 1)."""
    return ceiling(base, cap, n) * (0.5 + jitter / 2)
