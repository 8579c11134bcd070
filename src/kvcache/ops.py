"""The cache operations, written once for the sync and the async facade. Pure, no I/O.

Each operation is a generator: it validates and encodes, then ``yield``s one store call as
``(method_name, *args)`` and receives its result (or a ``KVCacheError`` thrown in), then
decodes and counts. ``Cache`` runs these generators against a sync store, ``AsyncCache``
awaits the calls on an async one. The drivers are the only code the two facades do not share.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Mapping
from typing import Any, TypeVar

from .codec import INT64_MAX, INT64_MIN, Codec
from .errors import InvalidKeyError, InvalidValueError, SerializationError, StoreError
from .events import Emitter, ErrorEvent
from .keys import Key, KeySpace
from .stats import Stats
from .ttl import check_ttl, from_pttl, to_millis

log = logging.getLogger("kvcache")

T = TypeVar("T")
Call = tuple[Any, ...]  # (store method name, *arguments)
Op = Generator[Call, Any, T]

MISSING: Any = object()  # "no value" where None is a value


def check_amount(amount: object) -> int:
    if type(amount) is not int:
        raise InvalidValueError(f"amount must be an int, not {type(amount).__name__}")
    if not INT64_MIN < amount <= INT64_MAX:  # -INT64_MIN would not fit once negated by decr
        raise InvalidValueError("amount must fit in a signed 64-bit integer")
    return amount


class Operations:
    def __init__(
        self,
        keys: KeySpace,
        codec: Codec,
        default_ttl: float | None = None,
        throw_on_errors: bool = False,
    ) -> None:
        self.keys = keys
        self.codec = codec
        self._default_ttl_ms = to_millis(check_ttl(default_ttl, "default_ttl"))
        self.throw_on_errors = bool(throw_on_errors)
        self.stats = Stats()
        self.events = Emitter()

    # -- rules ---------------------------------------------------------------------------

    def ttl_ms(self, ttl: float | None) -> int | None:
        return self._default_ttl_ms if ttl is None else to_millis(check_ttl(ttl))

    def build_all(self, keys: Iterable[Key]) -> tuple[list[Key], list[bytes]]:
        """Distinct user keys (first-seen order) and their full keys."""
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise InvalidKeyError(f"expected an iterable of keys, not {type(keys).__name__}")
        by_full = {self.keys.build(key): key for key in keys}  # "k" and b"k" are one key
        return list(by_full.values()), list(by_full)

    def failed(self, operation: str, error: StoreError, key: Key | None, result: T) -> T:
        """A store call failed: count it, tell listeners, then raise or answer ``result``."""
        self.report(operation, error, key)
        if self.throw_on_errors:
            raise error
        return result

    def report(self, operation: str, error: Exception, key: Key | None) -> None:
        self.stats.errors += 1
        log.debug("kvcache %s failed: %s", operation, type(error).__name__)
        self.events.emit("error", ErrorEvent(operation, error, key))

    def read(self, raw: bytes | None, key: Key, default: Any, operation: str = "get") -> Any:
        if raw is not None:
            try:
                value = self.codec.decode(raw)
            except SerializationError as exc:  # foreign or corrupt payload: a miss, not a crash
                self.report(operation, exc, key)
            else:
                self.stats.hits += 1
                return value
        self.stats.misses += 1
        return default

    # -- operations ----------------------------------------------------------------------

    def get(self, key: Key, default: Any) -> Op[Any]:
        full = self.keys.build(key)
        try:
            raw = yield ("get", full)
        except StoreError as exc:
            return self.failed("get", exc, key, default)
        return self.read(raw, key, default)

    def get_many(self, keys: Iterable[Key]) -> Op[dict[Key, Any]]:
        distinct, full = self.build_all(keys)
        if not full:
            return {}
        try:
            raws = yield ("get_many", full)
        except StoreError as exc:
            return self.failed("get_many", exc, None, {})
        found = {}
        for key, raw in zip(distinct, raws, strict=True):
            value = self.read(raw, key, MISSING, "get_many")
            if value is not MISSING:
                found[key] = value
        return found

    def set(self, key: Key, value: Any, ttl: float | None) -> Op[bool]:
        full, payload, ttl_ms = self.keys.build(key), self.codec.encode(value), self.ttl_ms(ttl)
        try:
            yield ("set", full, payload, ttl_ms)
        except StoreError as exc:
            return self.failed("set", exc, key, False)
        self.stats.sets += 1
        return True

    def set_many(self, mapping: Mapping[Key, Any], ttl: float | None) -> Op[bool]:
        if not isinstance(mapping, Mapping):
            raise InvalidValueError("set_many expects a mapping of keys to values")
        ttl_ms = self.ttl_ms(ttl)
        items = [(self.keys.build(key), self.codec.encode(value)) for key, value in mapping.items()]
        if not items:
            return True
        try:
            yield ("set_many", items, ttl_ms)
        except StoreError as exc:
            return self.failed("set_many", exc, None, False)
        self.stats.sets += len(items)
        return True

    def delete_many(self, keys: Iterable[Key]) -> Op[int]:
        _, full = self.build_all(keys)
        if not full:
            return 0
        try:
            removed: int = yield ("delete_many", full)
        except StoreError as exc:
            return self.failed("delete_many", exc, None, 0)
        self.stats.deletes += removed
        return removed

    def delete(self, key: Key) -> Op[bool]:
        full = self.keys.build(key)
        try:
            removed: int = yield ("delete_many", [full])
        except StoreError as exc:
            return self.failed("delete", exc, key, False)
        self.stats.deletes += removed
        return removed > 0

    def has(self, key: Key) -> Op[bool]:
        full = self.keys.build(key)
        try:
            found: bool = yield ("exists", full)
        except StoreError as exc:
            return self.failed("has", exc, key, False)
        return found

    def incr(self, key: Key, amount: int) -> Op[int | None]:
        return (yield from self._add(key, check_amount(amount)))

    def decr(self, key: Key, amount: int) -> Op[int | None]:
        return (yield from self._add(key, -check_amount(amount)))

    def _add(self, key: Key, amount: int) -> Op[int | None]:
        full = self.keys.build(key)
        try:
            value: int = yield ("incr", full, amount, self.ttl_ms(None))
        except StoreError as exc:
            return self.failed("incr", exc, key, None)
        return value

    def ttl(self, key: Key) -> Op[float | None]:
        full = self.keys.build(key)
        try:
            pttl = yield ("pttl", full)
        except StoreError as exc:
            return self.failed("ttl", exc, key, None)
        return from_pttl(pttl)

    def touch(self, key: Key, ttl: float | None) -> Op[bool]:
        full, ttl_ms = self.keys.build(key), self.ttl_ms(ttl)
        try:
            touched: bool = yield ("expire", full, ttl_ms)
        except StoreError as exc:
            return self.failed("touch", exc, key, False)
        return touched

    def clear(self) -> Op[int]:
        try:
            removed: int = yield ("clear", self.keys.prefix)
        except StoreError as exc:
            return self.failed("clear", exc, None, 0)
        self.stats.deletes += removed
        return removed
