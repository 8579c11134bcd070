"""The reads: get (near cache first), get_many, has, ttl; and fail-safe's stale answers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvcache._core.codec import fresh_until, is_stale
from kvcache._core.keys import K, Key
from kvcache._core.operations.base import UNREACHED, Body, OperationsBase, Stale, observed, wall_ms
from kvcache._core.protocols import Store
from kvcache._core.resilience import Offline
from kvcache._core.ttl import from_pttl
from kvcache._core.types import (
    FALLBACK,
    FALLBACK_HIT,
    FALLBACK_MISS,
    HIT,
    MISS,
    MISSING,
    NEAR_HIT,
    OK,
    STALE_HIT,
    request,
)
from kvcache._near.cache import NearCache
from kvcache.errors import (
    SerializationError,
    StoreError,
)


class Reads(OperationsBase):
    def read(
        self,
        raw: bytes | None,
        key: Key,
        default: Any,
        offline: Offline,
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

    @observed("get")
    def get(self, key: Key, default: Any, keep_stale: bool = False) -> Body[Any]:
        """``keep_stale`` (get_or_set): a value past its logical expiry comes back as
        ``Stale``, for the fail-safe."""
        full = self.keys.build(key)
        if self.near is not None:
            value, outcome = yield from self._get_near(self.near, key, full, default, keep_stale)
        else:
            try:
                raw, offline = yield from self.adapter.call(request(Store.get, full))
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
            self.instruments.count("get", NEAR_HIT)
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
            (raw, pttl), offline = yield from self.adapter.call(request(Store.get_with_ttl, full))
        except StoreError as exc:
            return self.failed("get", exc, key, default)
        value, outcome = self.read(raw, key, default, offline, "get", keep_stale)
        if outcome is HIT and raw is not None:  # (a hit always has its bytes)
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
            self.instruments.count("get_or_set", STALE_HIT)
        return value

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
            raws, offline = yield from self.adapter.call(request(Store.get_many, full))
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
            self.instruments.count("get_many", outcome, n)
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
            self.instruments.count("get_many", NEAR_HIT, len(found))
        return rest, rest_full

    @observed("has")
    def has(self, key: Key) -> Body[bool]:
        full = self.keys.build(key)
        found: bool
        try:
            if self.stale_ms is None:
                found, offline = yield from self.adapter.call(request(Store.exists, full))
            else:  # a stale value is stored, yet absent
                raw, offline = yield from self.adapter.call(request(Store.get, full))
                found = raw is not None and not is_stale(raw, wall_ms())
        except StoreError as exc:
            return self.failed("has", exc, key, False)
        return found, FALLBACK if offline else OK

    @observed("ttl")
    def ttl(self, key: Key) -> Body[float | None]:
        full = self.keys.build(key)
        try:
            if self.stale_ms is None:
                pttl, offline = yield from self.adapter.call(request(Store.pttl, full))
            else:  # a wrapped value's TTL is its logical one
                (raw, pttl), offline = yield from self.adapter.call(
                    request(Store.get_with_ttl, full)
                )
                expiry = None if raw is None else fresh_until(raw)
                if expiry is not None:
                    left = expiry - wall_ms()
                    if pttl >= 0:  # Redis may drop it sooner (a PEXPIRE from elsewhere)
                        left = min(left, pttl)
                    pttl = left if left > 0 else -2  # gone, once stale
        except StoreError as exc:
            return self.failed("ttl", exc, key, None)
        return from_pttl(pttl), FALLBACK if offline else OK
