"""A randomized soak for kvcache: the history every operation leaves, and the checker that
reads it against the consistency model of docs/consistency.md.

This first part holds the pure half (no I/O): ``Record`` (one operation as a worker saw it)
and ``check`` (the rules, and the smallest sub-history that shows each violation). The
runner that drives worker processes through ChaosProxy faults is not built yet (issue 18)."""

from .checker import Violation, check
from .history import Record

__all__ = ["Record", "Violation", "check"]
