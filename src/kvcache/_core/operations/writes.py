"""The writes: set, add, set_many, delete, delete_many, incr/decr, touch, clear. Each one
that fails, or whose caller is cancelled, may have landed: ``failed_write``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvcache._core.codec import fresh_until, is_stale, retime
from kvcache._core.keys import K, Key
from kvcache._core.operations.base import Body, OperationsBase, check_amount, observed, wall_ms
from kvcache._core.protocols import Store
from kvcache._core.resilience import ALL_KEYS, UNJOURNALED, Offline
from kvcache._core.types import (
    FALLBACK,
    OK,
    Op,
    request,
)
from kvcache._near.cache import ALL
from kvcache.errors import (
    InvalidValueError,
)


class Writes(OperationsBase):
    @observed("set")
    def set(self, key: Key, value: Any, ttl: float | None, fill: bool = False) -> Body[bool]:
        """``fill``: get_or_set storing what its factory computed (never journaled)."""
        full = self.keys.build(key)
        payload, ttl_ms = self.pack(value, self.ttl_ms(ttl))
        writes = UNJOURNALED if fill else (full,)
        try:
            _, offline = yield from self.adapter.call(
                request(Store.set, full, payload, ttl_ms), writes=writes
            )
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
            added, offline = yield from self.adapter.call(request(Store.add, full, payload, ttl_ms))
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
        raw, offline = yield from self.adapter.call(request(Store.get, full))
        if offline:
            return False, True
        if raw is None:  # expired meanwhile
            return (yield from self.adapter.call(request(Store.add, full, payload, ttl_ms)))
        if not is_stale(raw, wall_ms()):
            return False, False
        return (yield from self.adapter.call(request(Store.replace, full, raw, payload, ttl_ms)))

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
        offline: Offline = False
        try:
            for kept_ms, items in batches.items():
                _, away = yield from self.adapter.call(
                    request(Store.set_many, items, kept_ms), writes=[full for full, _ in items]
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
            removed, offline = yield from self.adapter.call(
                request(Store.delete_many, full), writes=full
            )
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
            removed, offline = yield from self.adapter.call(
                request(Store.delete_many, [full]), writes=(full,)
            )
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("delete", exc, key, False, (full,))
        self.stats.deletes += removed
        if self.near is not None:
            yield from self.announce((full,), offline)
        return removed > 0, FALLBACK if offline else OK

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
                request(Store.incr, full, amount, self.ttl_ms(None)), writes=(full,)
            )
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("incr", exc, key, None, (full,))
        if self.near is not None:
            yield from self.announce((full,), offline)
        return value, FALLBACK if offline else OK

    @observed("touch")
    def touch(self, key: Key, ttl: float | None) -> Body[bool]:
        full, ttl_ms = self.keys.build(key), self.ttl_ms(ttl)
        touched: bool
        try:
            # Not journaled: a TTL changed in the fallback leaves nothing stale in Redis.
            if self.stale_ms is None:
                touched, offline = yield from self.adapter.call(request(Store.expire, full, ttl_ms))
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
        raw, offline = yield from self.adapter.call(request(Store.get, full))
        now = wall_ms()
        if raw is None or is_stale(raw, now):
            return False, offline
        if fresh_until(raw) is None:
            return (yield from self.adapter.call(request(Store.expire, full, ttl_ms)))
        rewrapped = retime(raw, None if ttl_ms is None else now + ttl_ms)
        kept_ms = None if ttl_ms is None else ttl_ms + stale_ms
        touched, offline = yield from self.adapter.call(
            request(Store.replace, full, raw, rewrapped, kept_ms)
        )
        if not touched:  # written meanwhile (it stands, with its own TTL), or deleted
            return (yield from self.adapter.call(request(Store.exists, full)))
        return True, offline

    @observed("clear")
    def clear(self) -> Body[int]:
        removed: int
        try:
            removed, offline = yield from self.adapter.call(
                request(Store.clear, self.keys.prefix), writes=ALL_KEYS
            )
        except BaseException as exc:  # it may have landed all the same
            return self.failed_write("clear", exc, None, 0, (ALL,))
        self.stats.deletes += removed
        if self.near is not None:
            yield from self.announce((ALL,), offline)
        return removed, FALLBACK if offline else OK
