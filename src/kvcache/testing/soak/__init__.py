"""A randomized soak for kvcache (``python -m kvcache.testing.soak``): worker processes
drive caches through ChaosProxies of their own while a seeded schedule injects faults, and
every call's record is checked against the consistency model of docs/consistency.md.

``Record`` (one operation as a worker saw it) and ``check`` (the rules, and the smallest
sub-history that shows each violation) are the pure half; ``runner.run`` the whole soak."""

from kvcache.testing.soak.checker import Violation, check
from kvcache.testing.soak.history import Record

__all__ = ["Record", "Violation", "check"]
