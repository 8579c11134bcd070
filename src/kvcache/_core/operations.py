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
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from kvcache._core.breaker import ALL_KEYS, UNJOURNALED, ResilientAdapter
from kvcache._core.codec import Codec, fresh_until, is_stale, retime
from kvcache._core.events import Emitter, ErrorEvent
from kvcache._core.instruments import UNOBSERVED, Instruments
from kvcache._core.keys import K, Key, KeySpace
from kvcache._core.stats import Stats
from kvcache._core.ttl import check_ttl, from_pttl, to_millis
from kvcache._core.types import (
    FALLBACK,
    FALLBACK_HIT,
    FALLBACK_MISS,
    HIT,
    INT64_MAX,
    INT64_MIN,
    MISS,
    MISSING,
    NEAR_HIT,
    OK,
    STALE_HIT,
    Call,
    Op,
    Outcome,
)
from kvcache._near.cache import ALL, NearCache
from kvcache.errors import (
    InvalidKeyError,
    InvalidValueError,
    KVCacheError,
    SerializationError,
    StoreError,
)

log = logging.getLogger("kvcache.ops")

T = TypeVar("T")
P = ParamSpec("P")
Body = Generator[Call, Any, tuple[T, Outcome]]  # an operation's body: (value, outcome)
BodyMethod = Callable[Concatenate["Operations", P], Body[T]]
OpMethod = Callable[Concatenate["Operations", P], Op[T]]

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
) -> Callable[[BodyMethod[P, T]], OpMethod[P, T]]:
    """An operation: its body, timed, traced and counted by the cache's telemetry.
    ``many``: the first argument holds the keys (the span's batch size); ``per_key``: the
    body counts its keys' outcomes itself."""

    def decorate(body: BodyMethod[P, T]) -> OpMethod[P, T]:
        def op(self: Operations, /, *args: P.args, **kwargs: P.kwargs) -> Op[T]:
            batch = args[0] if many else None
            return self.telemetry.observe(operation, body(self, *args, **kwargs), batch, per_key)

        op.__name__, op.__doc__ = body.__name__, body.__doc__
        return op

    return decorate


class Operations:
    def __init__(
        self,
        keys: KeySpace,
        codec: Codec,
        adapter: ResilientAdapter,
        default_ttl: float | None = None,
        telemetry: Instruments | None = None,
        near: NearCache | None = None,
        stale_ttl: float | None = None,
    ) -> None:
        self.keys = keys
        self.codec = codec
        self.adapter = adapter
        self.near = near
        self.telemetry = telemetry or UNOBSERVED
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

    def read(
        self,
        raw: bytes | None,
        key: Key,
        default: Any,
        offline: bool,
        operation: str = "get",
        keep_stale: bool = False,
    ) -> tuple[Any, str]:
        """Decode and count: a hit or a miss, in Redis or (``offline``) in the fallback. A
        value past its logical expiry is a miss: ``default``, or (``keep_stale``) ``Stale``."""
        stats = self.stats
        if raw is not None:
            try:
                value = self.codec.decode(raw)
            except SerializationError as exc:  # foreign or corrupt payload: a miss, not a crash
                self.report(operation, exc, key)
            else:
                if is_stale(raw, wall_ms()):
                    default = Stale(value) if keep_stale else default
                elif offline:
                    stats.fallback_hits += 1
                    return value, FALLBACK_HIT
                else:
                    stats.hits += 1
                    return value, HIT
        if offline:
            stats.fallback_misses += 1
            return default, FALLBACK_MISS
        stats.misses += 1
        return default, MISS

    # -- operations ----------------------------------------------------------------------

    @observed("get")
    def get(self, key: Key, default: Any, keep_stale: bool = False) -> Body[Any]:
        """``keep_stale`` (get_or_set): a value past its logical expiry comes back as
        ``Stale``, for the fail-safe."""
        full = self.keys.build(key)
        if self.near is not None:
            value, outcome = yield from self._get_near(self.near, key, full, default, keep_stale)
        else:
            try:
                raw, offline = yield from self.adapter.call("get", full)
            except StoreError as exc:
                value, outcome = self.failed("get", exc, key, default)
            else:
                value, outcome = self.read(raw, key, default, offline, "get", keep_stale)
        if keep_stale and value is default and outcome is not MISS:
            value = UNREACHED  # Redis did not answer: the near cache's copy may stand in
        return value, outcome

    def near_get(self, key: Key) -> Any:
        """A read the near cache answers, without the operation machinery: counted (stats,
        ``kvcache.operations``), neither timed nor traced; MISSING when it cannot answer."""
        near = self.near
        if near is None or not near.ready:
            return MISSING
        value = near.lookup(self.keys.build(key))
        if value is not MISSING:
            self.stats.near_hits += 1
            self.telemetry.count("get", NEAR_HIT)
        return value

    def _get_near(
        self, near: NearCache, key: Key, full: bytes, default: Any, keep_stale: bool
    ) -> Body[Any]:
        value = near.lookup(full)
        if value is not MISSING:
            self.stats.near_hits += 1
            return value, NEAR_HIT
        ticket = near.ticket()  # a fill is dropped if anything was evicted meanwhile
        try:
            (raw, pttl), offline = yield from self.adapter.call("get_with_ttl", full)
        except StoreError as exc:
            return self.failed("get", exc, key, default)
        value, outcome = self.read(raw, key, default, offline, "get", keep_stale)
        if outcome is HIT:
            expiry = fresh_until(raw)
            near.fill(full, value, pttl, ticket, None if expiry is None else expiry - wall_ms())
        return value, outcome

    def stale_for(self, key: Key, found: Any) -> Any:
        """Fail-safe, once get_or_set's factory failed: the stale value to serve (the one
        Redis still keeps, else this process's near-cache copy, while Redis is away), or
        MISSING. Counted as a ``stale_hit``."""
        if self.stale_ms is None or not isinstance(found, Stale):
            return MISSING  # (Redis answered that the key is not there: nothing to serve)
        value = found.value
        if value is MISSING and self.near is not None:
            value = self.near.stale(self.keys.build(key))
        if value is not MISSING:
            self.stats.stale_hits += 1
            self.telemetry.count("get_or_set", STALE_HIT)
        return value

    def announce(self, fulls: Sequence[bytes], offline: bool) -> Op[None]:
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
                "publish", near.stream, near.entry(fulls), near.config.stream_maxlen
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
                "publish", near.stream, near.entry(keys), near.config.stream_maxlen
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

    @observed("get_many", many=True, per_key=True)
    def get_many(self, keys: Iterable[K]) -> Body[dict[K, Any]]:
        distinct, full = self.build_all(keys)
        if not full:
            return {}, OK
        found: dict[K, Any] = {}
        if self.near is not None and self.near.ready:
            distinct, full = self._get_many_near(self.near, distinct, full, found)
            if not full:
                return found, OK
        try:
            raws, offline = yield from self.adapter.call("get_many", full)
        except StoreError as exc:
            return self.failed("get_many", exc, None, {})
        outcomes: dict[str, int] = {}
        # A cluster get_many that met a degraded shard says, key by key, who answered.
        flags = offline if isinstance(offline, list) else [offline] * len(distinct)
        for key, raw, away in zip(distinct, raws, flags, strict=True):
            value, outcome = self.read(raw, key, MISSING, away, "get_many")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if value is not MISSING:
                found[key] = value
        for outcome, n in outcomes.items():
            self.telemetry.count("get_many", outcome, n)
        return found, FALLBACK if any(flags) else OK

    def _get_many_near(
        self, near: NearCache, distinct: list[K], full: list[bytes], found: dict[K, Any]
    ) -> tuple[list[K], list[bytes]]:
        """The near cache's answers go into ``found``; the keys left for Redis come back.
        (Those are not copied into the near cache: that takes each key's PTTL; get does.)"""
        rest: list[K] = []
        rest_full: list[bytes] = []
        for key, one in zip(distinct, full, strict=True):
            value = near.lookup(one)
            if value is MISSING:
                rest.append(key)
                rest_full.append(one)
            else:
                found[key] = value
        if found:
            self.stats.near_hits += len(found)
            self.telemetry.count("get_many", NEAR_HIT, len(found))
        return rest, rest_full

    @observed("set")
    def set(self, key: Key, value: Any, ttl: float | None, fill: bool = False) -> Body[bool]:
        """``fill``: get_or_set storing what its factory computed (never journaled)."""
        full = self.keys.build(key)
        payload, ttl_ms = self.pack(value, self.ttl_ms(ttl))
        writes = UNJOURNALED if fill else (full,)
        try:
            _, offline = yield from self.adapter.call("set", full, payload, ttl_ms, writes=writes)
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("set", exc, key, False, (full,))
        self.stats.sets += 1
        if self.near is not None:
            yield from self.announce((full,), offline)
        return True, FALLBACK if offline else OK

    @observed("add")
    def add(self, key: Key, value: Any, ttl: float | None) -> Body[bool]:
        # Never wrapped for fail-safe: add is often a lock, which must expire on time.
        full, payload, ttl_ms = self.keys.build(key), self.codec.encode(value), self.ttl_ms(ttl)
        added: bool
        try:
            # Not journaled, and False while Redis is away: only Redis knows whether another
            # process holds the key (add is often a lock), and recovery must not delete it.
            added, offline = yield from self.adapter.call("add", full, payload, ttl_ms)
            if not added and not offline and self.stale_ms is not None:
                added, offline = yield from self._add_over_stale(full, payload, ttl_ms)
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("add", exc, key, False, (full,))
        if offline:
            return False, FALLBACK
        if added:
            self.stats.sets += 1
            if self.near is not None:
                yield from self.announce((full,), offline=False)
        return added, OK

    def _add_over_stale(self, full: bytes, payload: bytes, ttl_ms: int | None) -> Op[Any]:
        """The key is there, but perhaps only as a stale value, which ``add`` must treat as
        absent: replaced if it still holds that same value (compare-and-set)."""
        raw, offline = yield from self.adapter.call("get", full)
        if offline:
            return False, True
        if raw is None:  # expired meanwhile
            return (yield from self.adapter.call("add", full, payload, ttl_ms))
        if not is_stale(raw, wall_ms()):
            return False, False
        return (yield from self.adapter.call("replace", full, raw, payload, ttl_ms))

    @observed("set_many", many=True)
    def set_many(self, mapping: Mapping[K, Any], ttl: float | None) -> Body[bool]:
        if not isinstance(mapping, Mapping):
            raise InvalidValueError("set_many expects a mapping of keys to values")
        ttl_ms = self.ttl_ms(ttl)
        packed = {self.keys.build(key): self.pack(value, ttl_ms) for key, value in mapping.items()}
        if not packed:
            return True, OK
        # One store call per lifetime: with fail-safe, ints expire sooner than wrapped values.
        batches: dict[int | None, list[tuple[bytes, bytes]]] = {}
        for full, (payload, kept_ms) in packed.items():
            batches.setdefault(kept_ms, []).append((full, payload))
        written = list(packed)
        offline = False
        try:
            for kept_ms, items in batches.items():
                _, away = yield from self.adapter.call(
                    "set_many", items, kept_ms, writes=[full for full, _ in items]
                )
                offline = offline or away
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("set_many", exc, None, False, written)
        self.stats.sets += len(written)
        if self.near is not None:
            yield from self.announce(written, offline)
        return True, FALLBACK if offline else OK

    @observed("delete_many", many=True)
    def delete_many(self, keys: Iterable[Key]) -> Body[int]:
        _, full = self.build_all(keys)
        if not full:
            return 0, OK
        removed: int
        try:
            removed, offline = yield from self.adapter.call("delete_many", full, writes=full)
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("delete_many", exc, None, 0, full)
        self.stats.deletes += removed
        if self.near is not None:
            yield from self.announce(full, offline)
        return removed, FALLBACK if offline else OK

    @observed("delete")
    def delete(self, key: Key) -> Body[bool]:
        full = self.keys.build(key)
        removed: int
        try:
            removed, offline = yield from self.adapter.call("delete_many", [full], writes=(full,))
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("delete", exc, key, False, (full,))
        self.stats.deletes += removed
        if self.near is not None:
            yield from self.announce((full,), offline)
        return removed > 0, FALLBACK if offline else OK

    @observed("has")
    def has(self, key: Key) -> Body[bool]:
        full = self.keys.build(key)
        found: bool
        try:
            if self.stale_ms is None:
                found, offline = yield from self.adapter.call("exists", full)
            else:  # a stale value is stored, yet absent
                raw, offline = yield from self.adapter.call("get", full)
                found = raw is not None and not is_stale(raw, wall_ms())
        except StoreError as exc:
            return self.failed("has", exc, key, False)
        return found, FALLBACK if offline else OK

    @observed("incr")
    def incr(self, key: Key, amount: int) -> Body[int | None]:
        return (yield from self._add(key, check_amount(amount)))

    @observed("decr")
    def decr(self, key: Key, amount: int) -> Body[int | None]:
        return (yield from self._add(key, -check_amount(amount)))

    def _add(self, key: Key, amount: int) -> Body[int | None]:
        full = self.keys.build(key)
        value: int
        try:
            value, offline = yield from self.adapter.call(
                "incr", full, amount, self.ttl_ms(None), writes=(full,)
            )
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("incr", exc, key, None, (full,))
        if self.near is not None:
            yield from self.announce((full,), offline)
        return value, FALLBACK if offline else OK

    @observed("ttl")
    def ttl(self, key: Key) -> Body[float | None]:
        full = self.keys.build(key)
        try:
            if self.stale_ms is None:
                pttl, offline = yield from self.adapter.call("pttl", full)
            else:  # a wrapped value's TTL is its logical one
                (raw, pttl), offline = yield from self.adapter.call("get_with_ttl", full)
                expiry = None if raw is None else fresh_until(raw)
                if expiry is not None:
                    left = expiry - wall_ms()
                    if pttl >= 0:  # Redis may drop it sooner (a PEXPIRE from elsewhere)
                        left = min(left, pttl)
                    pttl = left if left > 0 else -2  # gone, once stale
        except StoreError as exc:
            return self.failed("ttl", exc, key, None)
        return from_pttl(pttl), FALLBACK if offline else OK

    @observed("touch")
    def touch(self, key: Key, ttl: float | None) -> Body[bool]:
        full, ttl_ms = self.keys.build(key), self.ttl_ms(ttl)
        touched: bool
        try:
            # Not journaled: a TTL changed in the fallback leaves nothing stale in Redis.
            if self.stale_ms is None:
                touched, offline = yield from self.adapter.call("expire", full, ttl_ms)
            else:
                touched, offline = yield from self._touch_wrapped(full, ttl_ms, self.stale_ms)
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("touch", exc, key, False, (full,))
        if self.near is not None and touched:  # a copy may outlive the new TTL
            yield from self.announce((full,), offline)
        return touched, FALLBACK if offline else OK

    def _touch_wrapped(self, full: bytes, ttl_ms: int | None, stale_ms: int) -> Op[Any]:
        """Fail-safe's touch: a wrapped value's logical expiry is in the value, so the value
        is rewritten (compare-and-set: a concurrent write wins, with its own TTL). Others
        (ints, add's values, values stored without a TTL) keep their kind: only the TTL moves."""
        raw, offline = yield from self.adapter.call("get", full)
        now = wall_ms()
        if raw is None or is_stale(raw, now):
            return False, offline
        if fresh_until(raw) is None:
            return (yield from self.adapter.call("expire", full, ttl_ms))
        rewrapped = retime(raw, None if ttl_ms is None else now + ttl_ms)
        kept_ms = None if ttl_ms is None else ttl_ms + stale_ms
        touched, offline = yield from self.adapter.call("replace", full, raw, rewrapped, kept_ms)
        if not touched:  # written meanwhile (it stands, with its own TTL), or deleted
            return (yield from self.adapter.call("exists", full))
        return True, offline

    @observed("clear")
    def clear(self) -> Body[int]:
        removed: int
        try:
            removed, offline = yield from self.adapter.call(
                "clear", self.keys.prefix, writes=ALL_KEYS
            )
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("clear", exc, None, 0, (ALL,))
        self.stats.deletes += removed
        if self.near is not None:
            yield from self.announce((ALL,), offline)
        return removed, FALLBACK if offline else OK
