"""The store boundary: what a cache needs from a backend, in full keys and encoded bytes.

Stores know nothing of namespaces' meaning, serializers or TTL defaults; the facade does that.
TTLs arrive in whole milliseconds (``None`` = no expiry). A store raises only kvcache
exceptions: ``StoreError`` (``CacheUnavailableError`` when the backend cannot be reached) or
``InvalidValueError``. ``AsyncStore`` is the same contract with coroutines. Public as
``kvcache.stores.base``; defined here because the core is what asks it of a store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeGuard

if TYPE_CHECKING:
    from kvcache.errors import StoreError


class Store(Protocol):
    is_async: ClassVar[bool]  # False: every method returns at once, so async code may call it too

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None: ...

    def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool:
        """Set only if the key does not exist (SET NX); True if it was set."""
        ...

    def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None: ...

    def delete_many(self, keys: Sequence[bytes]) -> int: ...

    def exists(self, key: bytes) -> bool: ...

    def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int:
        """Add ``amount``; a new key starts at 0 with ``ttl_ms``, an existing one keeps its TTL."""
        ...

    def pttl(self, key: bytes) -> int:
        """Milliseconds left, -1 when the key has no expiry, -2 when it does not exist."""
        ...

    def expire(self, key: bytes, ttl_ms: int | None) -> bool:
        """Set (or with None remove) the expiry; False when the key does not exist."""
        ...

    def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]:
        """The value and its PTTL, read together (near cache, fail-safe)."""
        ...

    def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool:
        """Store ``new`` only if the key still holds ``old`` (atomic); True if it did."""
        ...

    def scan(self, prefix: bytes) -> Iterator[bytes]: ...

    def clear(self, prefix: bytes) -> int: ...

    def close(self) -> None: ...


class AsyncStore(Protocol):
    is_async: ClassVar[bool]  # True

    async def get(self, key: bytes) -> bytes | None: ...

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None: ...

    async def add(self, key: bytes, value: bytes, ttl_ms: int | None) -> bool: ...

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None) -> None: ...

    async def delete_many(self, keys: Sequence[bytes]) -> int: ...

    async def exists(self, key: bytes) -> bool: ...

    async def incr(self, key: bytes, amount: int, ttl_ms: int | None) -> int: ...

    async def pttl(self, key: bytes) -> int: ...

    async def expire(self, key: bytes, ttl_ms: int | None) -> bool: ...

    async def get_with_ttl(self, key: bytes) -> tuple[bytes | None, int]: ...

    async def replace(self, key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> bool: ...

    def scan(self, prefix: bytes) -> AsyncIterator[bytes]: ...

    async def clear(self, prefix: bytes) -> int: ...

    async def close(self) -> None: ...


class Closeable(Protocol):
    def close(self) -> None: ...


class Breaker(Protocol):
    """What the adapter offers a store: it hears of a failure to reach Redis before the
    failed call frees its connection slot, and is asked after a wait for a slot (see
    ``RedisStore``)."""

    def admits(self) -> bool: ...

    def trips(self, error: StoreError) -> bool: ...


# Capabilities a store may have beyond the contract above. Asked with the ``is_*`` functions
# below, never with isinstance: from Python 3.12 on, isinstance against a runtime-checkable
# Protocol looks attributes up statically, so a store that delegates through ``__getattr__``
# (a metrics or logging proxy around a RedisStore) would lose its breaker, its fallback, its
# cluster router and its near cache. getattr sees what the store answers.


class Probeable(Protocol):
    """A store that can fail and come back (Redis): it gets a breaker, a fallback and a
    prober. ``ping()`` (sync or async) raises unless a fresh connection works. It may also
    name ``probe_timeout`` (the longest a probe takes) and ``op_timeout`` (a call's bound)."""

    def ping(self) -> Any: ...

    def reset(self) -> Any:
        """Drop pooled connections (sync or async): on recovery, those from before the outage."""


class Guarded(Protocol):
    """A store that tells its breaker of a failure before the failed call frees its
    connection slot, and asks it after a wait for a slot."""

    breaker: Breaker | None


class Located(Protocol):
    """A Redis store's (host or socket path, port or None, db): for telemetry."""

    address: tuple[str, int | None, int]


class Sharded(Protocol):
    """A cluster-aware store (per-node stores): the cache routes it with a breaker per
    primary (``sharded`` True)."""

    sharded: ClassVar[bool]


class Streaming(Protocol):
    """A store that can open the near cache listener's own connection."""

    def stream_reader(self, block: float) -> Any: ...

    def publish(self, stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> None:
        """XADD an invalidation to the stream (a fallback's does nothing)."""


class Viewable(Protocol):
    """A fallback whose ``fresh()`` is a new view on the same bounded pool (a shard's own)."""

    def fresh(self) -> Any: ...


def is_probeable(store: object) -> TypeGuard[Probeable]:
    return callable(getattr(store, "ping", None))


def is_guarded(store: object) -> TypeGuard[Guarded]:
    return hasattr(store, "breaker")


def is_located(store: object) -> TypeGuard[Located]:
    return getattr(store, "address", None) is not None


def is_sharded(store: object) -> TypeGuard[Sharded]:
    return bool(getattr(store, "sharded", False))


def is_streaming(store: object) -> TypeGuard[Streaming]:
    return callable(getattr(store, "stream_reader", None))


def is_viewable(store: object) -> TypeGuard[Viewable]:
    return callable(getattr(store, "fresh", None))
