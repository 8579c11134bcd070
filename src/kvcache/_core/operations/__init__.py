"""The cache operations, written once for the sync and the async facade (see ``base.py``):
``Operations`` is the reads and the writes over one cache's parts."""

from kvcache._core.operations.base import (
    UNREACHED,
    OperationsBase,
    Stale,
    check_amount,
    check_factory,
    wall_ms,
)
from kvcache._core.operations.reads import Reads
from kvcache._core.operations.writes import Writes


class Operations(Reads, Writes):
    """Every facade operation, as a generator the shells' drivers run."""


__all__ = [
    "UNREACHED",
    "Operations",
    "OperationsBase",
    "Stale",
    "check_amount",
    "check_factory",
    "wall_ms",
]
