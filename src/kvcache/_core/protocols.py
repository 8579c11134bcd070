"""The store boundary: what a cache needs from a backend, in full keys and encoded bytes.

Stores know nothing of namespaces' meaning, serializers or TTL defaults; the facade does that.
TTLs arrive in whole milliseconds (``None`` = no expiry). A store raises only kvcache
exceptions: ``StoreError`` (``CacheUnavailableError`` when the backend cannot be reached) or
``InvalidValueError``. ``AsyncStore`` is the same contract with coroutines. Public as
``kvcache.stores.base``; defined here because the core is what asks it of a store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

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


# Capabilities a store may have beyond the contract above, asked with isinstance (each
# checks that the attribute is there, as the getattr probes before them did).


@runtime_checkable
class Probeable(Protocol):
    """A store that can fail and come back (Redis): it gets a breaker, a fallback and a
    prober. ``ping()`` (sync or async) raises unless a fresh connection works. It may also
    name ``probe_timeout`` (the longest a probe takes) and ``op_timeout`` (a call's bound)."""

    def ping(self) -> Any: ...


@runtime_checkable
class Guarded(Protocol):
    """A store that tells its breaker of a failure before the failed call frees its
    connection slot, and asks it after a wait for a slot."""

    breaker: Breaker | None


@runtime_checkable
class Located(Protocol):
    """A Redis store's (host or socket path, port or None, db): for telemetry."""

    address: tuple[str, int | None, int]


@runtime_checkable
class Sharded(Protocol):
    """A cluster-aware store (per-node stores): the cache routes it with a breaker per
    primary (``sharded`` True)."""

    sharded: ClassVar[bool]


@runtime_checkable
class Streaming(Protocol):
    """A store that can open the near cache listener's own connection."""

    def stream_reader(self, block: float) -> Any: ...


@runtime_checkable
class Viewable(Protocol):
    """A fallback whose ``fresh()`` is a new view on the same bounded pool (a shard's own)."""

    def fresh(self) -> Any: ...
