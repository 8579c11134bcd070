"""The store boundary: ``Store`` and ``AsyncStore`` (what a cache needs from a backend), the
``Breaker`` a store may report to, and the optional capabilities a store may have. Defined
in ``kvcache._core.protocols`` (see its docstring)."""

from kvcache._core.protocols import (
    AsyncStore,
    Breaker,
    Closeable,
    Guarded,
    Located,
    Probeable,
    Sharded,
    Store,
    Streaming,
    Viewable,
)

__all__ = [
    "AsyncStore",
    "Breaker",
    "Closeable",
    "Guarded",
    "Located",
    "Probeable",
    "Sharded",
    "Store",
    "Streaming",
    "Viewable",
]
