"""The cache operations, written once for the sync and the async facade. Pure, no I/O.

Each operation is a generator: it validates and encodes, then hands one store call to the
adapter (``yield from self.adapter.call(...)``), which routes it to Redis or the fallback and
yields ``(store, method, *args)`` for a driver (``drivers.py``) to carry out; the result (or
a ``KVCacheError`` thrown in) comes back, and the operation decodes and counts. ``Cache``
and ``AsyncCache`` differ only in the driver that runs these generators.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from kvcache._core.codec import Codec
from kvcache._core.events import Emitter, ErrorEvent
from kvcache._core.instruments import UNOBSERVED, Instruments
from kvcache._core.keys import K, Key, KeySpace
from kvcache._core.protocols import Streaming
from kvcache._core.resilience import Offline, ResilientAdapter
from kvcache._core.stats import Stats
from kvcache._core.ttl import check_ttl, to_millis
from kvcache._core.types import (
    INT64_MAX,
    INT64_MIN,
    MISSING,
    Call,
    Op,
    Outcome,
    request,
)
from kvcache._near.cache import ALL, NearCache
from kvcache.errors import (
    InvalidKeyError,
    InvalidValueError,
    KVCacheError,
    StoreError,
)

log = logging.getLogger("kvcache.ops")

T = TypeVar("T")
P = ParamSpec("P")
Body = Generator[Call, Any, tuple[T, Outcome]]  # an operation's body: (value, outcome)
S = TypeVar("S", bound="OperationsBase")
BodyMethod = Callable[Concatenate[S, P], Body[T]]
OpMethod = Callable[Concatenate[S, P], Op[T]]

# MISSING (_core/types.py): "no value" where None is a value


def wall_ms() -> int:
    """Unix time in ms: a wrapped value's logical expiry is read by every process."""
    return time.time_ns() // 1_000_000


class Stale:
    """A value past its logical expiry, still stored for fail-safe (``stale_ttl``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


UNREACHED: Final = Stale(MISSING)  # a get_or_set lookup Redis did not answer (away, failed)


def check_amount(amount: object) -> int:
    if type(amount) is not int:
        raise InvalidValueError(f"amount must be an int, not {type(amount).__name__}")
    if not INT64_MIN < amount <= INT64_MAX:  # -INT64_MIN would not fit once negated by decr
        raise InvalidValueError("amount must fit in a signed 64-bit integer")
    return amount


def check_factory(factory: object) -> None:
    """``get_or_set``'s factory must be callable: found out before any I/O, not on a miss."""
    if not callable(factory):
        raise TypeError(
            f"get_or_set needs a factory to call on a miss (e.g. lambda: value), "
            f"not {type(factory).__name__}"
        )


def observed(
    operation: str, *, many: bool = False, per_key: bool = False
) -> Callable[[BodyMethod[S, P, T]], OpMethod[S, P, T]]:
    """An operation: its body, timed, traced and counted by the cache's telemetry.
    ``many``: the first argument holds the keys (the span's batch size); ``per_key``: the
    body counts its keys' outcomes itself."""

    def decorate(body: BodyMethod[S, P, T]) -> OpMethod[S, P, T]:
        def op(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Op[T]:
            batch = args[0] if many else None
            return self.instruments.observe(operation, body(self, *args, **kwargs), batch, per_key)

        op.__name__, op.__doc__ = body.__name__, body.__doc__
        return op

    return decorate


class OperationsBase:
    """What every operation shares: the cache's parts, its rules, failures and the near
    cache's announcements."""

    def __init__(
        self,
        keys: KeySpace,
        codec: Codec,
        adapter: ResilientAdapter,
        default_ttl: float | None = None,
        instruments: Instruments | None = None,
        near: NearCache | None = None,
        stale_ttl: float | None = None,
    ) -> None:
        self.keys = keys
        self.codec = codec
        self.adapter = adapter
        self.near = near
        self.instruments = instruments or UNOBSERVED
        self._default_ttl_ms = to_millis(check_ttl(default_ttl, "default_ttl"))
        # Fail-safe: values with a TTL are kept this much longer, wrapped with their logical
        # expiry; past it they are misses, except to get_or_set when its factory fails.
        self.stale_ms = to_millis(check_ttl(stale_ttl, "stale_ttl"))
        # The adapter's, as its stats and events: one cache, one setting.
        self.throw_on_errors = adapter.throw_on_errors
        self.stats: Stats = adapter.stats
        self.events: Emitter = adapter.events

    # -- rules ---------------------------------------------------------------------------

    def ttl_ms(self, ttl: float | None) -> int | None:
        return self._default_ttl_ms if ttl is None else to_millis(check_ttl(ttl))

    def pack(self, value: Any, ttl_ms: int | None) -> tuple[bytes, int | None]:
        """The payload of ``value`` and how long Redis keeps it: with fail-safe, ``stale_ms``
        past its logical expiry (an int stays plain, for INCRBY, and expires on time)."""
        stale_ms = self.stale_ms
        if stale_ms is None or ttl_ms is None or type(value) is int:
            return self.codec.encode(value), ttl_ms
        return self.codec.encode(value, wall_ms() + ttl_ms), ttl_ms + stale_ms

    def build_all(self, keys: Iterable[K]) -> tuple[list[K], list[bytes]]:
        """Distinct user keys (first-seen order) and their full keys."""
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise InvalidKeyError(f"expected an iterable of keys, not {type(keys).__name__}")
        by_full = {self.keys.build(key): key for key in keys}  # "k" and b"k" are one key
        return list(by_full.values()), list(by_full)

    def failed(
        self, operation: str, error: StoreError, key: Key | None, result: T
    ) -> tuple[T, Outcome]:
        """A store call failed: count it, tell listeners, then raise or answer ``result``."""
        self.report(operation, error, key)
        if self.throw_on_errors:
            raise error
        return result, error

    def report(self, operation: str, error: Exception, key: Key | None) -> None:
        self.stats.errors += 1
        log.debug("kvcache %s failed: %s", operation, type(error).__name__)
        self.events.emit("error", ErrorEvent(operation, error, key))

    def announce(self, fulls: Sequence[bytes], offline: Offline) -> Op[None]:
        """``fulls`` were written (``[ALL]``: the namespace cleared): drop the near cache's
        copies here, after the write (a read in flight then cannot fill an old value), and,
        if the write reached Redis, through the stream in every other process too. (Offline,
        Redis did not change; the fallback now holds this process's newer value.)"""
        near = self.near
        if near is None:
            return
        near.changed(fulls)
        if offline:  # it may yet land (a timed-out write), or land on recovery: tell later
            near.unannounced(fulls)
            return
        try:
            _, away = yield from self.adapter.call(
                request(
                    Streaming.publish, near.stream, near.entry(fulls), near.config.stream_maxlen
                )
            )
        except KVCacheError as exc:  # refused (OOM), or the cache closed meanwhile
            self.report("publish", exc, None)
            away = True
        except BaseException:  # cancelled: the write landed all the same
            near.unannounced(fulls)
            raise
        if away:  # the write landed, its announcement did not: the listener retries it
            near.unannounced(fulls)

    def flush_everywhere(self) -> Op[None]:
        """Run in the background after a recovery: every process's near cache is told to
        flush. Never raises (a close racing it, say): the announcement stays pending then."""
        try:
            yield from self.announce((ALL,), offline=False)
        except Exception as exc:
            log.debug("kvcache: recovery announcement failed: %s", type(exc).__name__)
            if self.near is not None:
                self.near.unannounced((ALL,))

    def announce_pending(self) -> Op[None]:
        """On close: announcements the listener has not made yet go out now, through the
        data path, if Redis answers; else they are lost (logged), and the other processes'
        copies of those keys live out their near-cache TTL."""
        near = self.near
        keys = near.take_pending() if near is not None else []
        if near is None or not keys:
            return
        try:
            _, away = yield from self.adapter.call(
                request(Streaming.publish, near.stream, near.entry(keys), near.config.stream_maxlen)
            )
        except Exception as exc:
            log.debug("kvcache: last announcement failed: %s", type(exc).__name__)
            away = True
        if away:
            log.warning(
                "kvcache: %d near-cache invalidation(s) not announced before close; other "
                "processes' copies of those keys live out their near-cache TTL",
                len(keys),
            )

    def failed_write(
        self,
        operation: str,
        error: BaseException,
        key: Key | None,
        value: T,
        fulls: Sequence[bytes],
    ) -> tuple[T, Outcome]:
        """A write that failed, or whose caller was cancelled or interrupted, may have landed
        all the same: its keys are unsure. A store's failure answers ``value`` (``failed``);
        anything else goes on to the caller."""
        self.unsure(fulls)
        if isinstance(error, StoreError):
            return self.failed(operation, error, key, value)
        raise error

    def unsure(self, fulls: Sequence[bytes]) -> None:
        """A write failed: it may have landed all the same. Drop the local copies and have
        the listener announce the keys (a spurious eviction is harmless)."""
        if self.near is not None:
            self.near.changed(fulls)
            self.near.unannounced(fulls)
