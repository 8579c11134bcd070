"""A Django cache backend on kvcache: Django's cache API and semantics, kvcache's resilience.

    CACHES = {
        "default": {
            "BACKEND": "kvcache.integrations.django.KVCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "TIMEOUT": 300,            # None: forever; 0 or less: don't cache
            "KEY_PREFIX": "site1",     # also the kvcache namespace that clear() is limited to
            "VERSION": 1,
            "OPTIONS": {"OP_TIMEOUT": 0.25, "MODE": "cluster", ...},  # any kvcache setting
        }
    }

Values are pickled, as Django expects (any picklable object), and always signed: with
``OPTIONS["SIGNING_KEY"]``, else a key derived from ``SECRET_KEY``. Unsigned pickle only when
``OPTIONS`` names ``"SERIALIZER": "pickle-unsigned"``.
With Django's default key function the Redis keys are ``<KEY_PREFIX>:<version>:<key>``, as
Django's own ``RedisCache`` writes them; ``clear()`` deletes this namespace only, never the
whole database. The async methods (``aget``, ``aset``, …) run on kvcache's ``AsyncCache``,
not in a thread.

Django makes a backend object per thread (and per async context); they all share one kvcache
cache per configuration, so a process has one pool and one prober per cache, not one per
thread. ``close()``, which Django calls after every request, keeps the connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from django.conf import settings as django_settings
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    default_key_func,
)
from django.core.exceptions import ImproperlyConfigured

from kvcache._core.drivers import arun, run
from kvcache._core.ttl import FOREVER, MAX_TTL
from kvcache._core.types import Op, request
from kvcache._shells.async_cache import AsyncCache
from kvcache._shells.cache import Cache
from kvcache.errors import SerializationError
from kvcache.integrations import sign_pickle_with_secret
from kvcache.settings import KVCacheSettings

MAX_KEY_LENGTH = 64 * 1024  # Django sets no limit of its own (only memcached warnings)

T = TypeVar("T")


class _Shared:
    """The kvcache caches of one configuration, for every thread's backend object. (No
    waiting for Redis here: the core's first calls wait for the first connect themselves,
    at most op_timeout.)"""

    def __init__(self, settings: KVCacheSettings) -> None:
        self.cache = Cache.from_settings(settings)
        self.async_cache = AsyncCache.from_settings(settings)
        self.closed = False


_shared: dict[str, _Shared] = {}
_lock = threading.Lock()


def _secret_key() -> str:
    """Django's SECRET_KEY, or "" (Django refuses to hand out an empty one)."""
    try:
        return str(getattr(django_settings, "SECRET_KEY", ""))
    except ImproperlyConfigured:
        return ""


def _settings(location: str, options: Mapping[str, Any], namespace: str) -> KVCacheSettings:
    """kvcache settings from a CACHES entry's OPTIONS (upper-cased names of kvcache's)."""
    chosen = {name.lower(): value for name, value in options.items()}
    chosen["namespace"] = namespace
    chosen.setdefault("max_key_length", MAX_KEY_LENGTH)
    sign_pickle_with_secret(chosen, _secret_key, "SECRET_KEY", "kvcache.integrations.django")
    return KVCacheSettings(url=location, **chosen)


def _shared_for(location: str, options: Mapping[str, Any], namespace: str) -> _Shared:
    """One pair of kvcache caches per configuration, for every thread."""
    if "CONNECT_WAIT" in options:
        warnings.warn(
            "kvcache: OPTIONS['CONNECT_WAIT'] is ignored and no longer needed: a call made "
            "while the first connect is in flight waits for it, at most op_timeout",
            DeprecationWarning,
            stacklevel=4,
        )
    kvcache_options = {k: v for k, v in options.items() if k not in ("CONNECT_WAIT", "NAMESPACE")}
    described = repr((location, namespace, sorted((k, repr(v)) for k, v in options.items())))
    key = hashlib.sha256(described.encode()).hexdigest()  # (the URL may hold a password)
    with _lock:
        shared = _shared.get(key)
        if shared is None:
            settings = _settings(location, kvcache_options, namespace)
            shared = _shared[key] = _Shared(settings)
    return shared


def close_all() -> None:
    """Close every shared kvcache cache (their probers and connections), from outside any
    event loop: at process exit, or between tests. Backend objects Django still holds get
    new ones on their next call."""
    with _lock:
        closing = list(_shared.values())
        _shared.clear()
    for shared in closing:
        shared.closed = True
        shared.cache.close()
        # Stops its prober; its connections belong to event loops that close them.
        asyncio.run(shared.async_cache.close())


def _serializers_own(error: SerializationError) -> BaseException:
    """The serializer's own exception (``pickle.PicklingError``, …) that kvcache wrapped:
    Django's backends let it through, and Django's code (and its tests) expect it."""
    return error.__cause__ if error.__cause__ is not None else error


class KVCache(BaseCache):  # type: ignore[misc]  # (Django has no type hints)
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = {str(k).upper(): v for k, v in (params.get("OPTIONS") or {}).items()}
        namespace = str(options.get("NAMESPACE") or self.key_prefix or "django")
        # Django's default key function puts the prefix in front; kvcache's namespace is
        # that prefix already, so only "<version>:<key>" is left to add.
        # (Checked per call too: code may replace ``key_func`` later, as Django's tests do.)
        self._prefix_is_namespace = not self.key_prefix or namespace == self.key_prefix
        # Django's key is "<prefix>:<version>:<key>"; this much is left for "<version>:<key>".
        self._short_room = MEMCACHE_MAX_KEY_LENGTH - len(self.key_prefix) - 1
        self._where = (location, options, namespace)
        self._shared = _shared_for(*self._where)

    def _current(self) -> _Shared:
        """The shared caches; new ones after ``close_all()``."""
        if self._shared.closed:
            self._shared = _shared_for(*self._where)
        return self._shared

    # -- keys and timeouts ---------------------------------------------------------------------

    def make_key(self, key: Any, version: int | None = None) -> str:
        if version is None:
            version = self.version
        if self._prefix_is_namespace and self.key_func is default_key_func:
            return f"{version}:{key}"
        return str(self.key_func(key, self.key_prefix, version))

    def _name(self, key: Any, version: Any) -> str:
        """``make_and_validate_key``, with a fast path: Django's memcached-portability check
        (``BaseCache.validate_key``, a loop over every character: ~4 µs a key) runs only
        when a key is too long or holds a space or another unprintable character; then it
        warns (CacheKeyWarning) exactly as Django's own backends do."""
        name = self.make_key(key, version)
        if self._prefix_is_namespace and self.key_func is default_key_func:
            if len(name) > self._short_room or " " in name or not name.isprintable():
                version = self.version if version is None else version
                self.validate_key(default_key_func(key, self.key_prefix, version))
        elif len(name) > MEMCACHE_MAX_KEY_LENGTH or " " in name or not name.isprintable():
            self.validate_key(name)
        return name

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """As Django's: seconds, None for "forever", 0 for "do not cache" (0 or less)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, timeout)

    def _ttl(self, timeout: Any) -> float:
        """Seconds for kvcache: FOREVER for None (and beyond MAX_TTL), 0 for "do not cache"."""
        seconds = self.get_backend_timeout(timeout)
        if seconds is None or seconds > MAX_TTL:  # (Django stores 200 years too)
            return FOREVER
        return float(seconds)

    # -- one body per operation, run by kvcache's two drivers -------------------------------
    # Each operation is written once, as a generator that yields the calls it needs,
    # ``(cache, request(Cache.method, *args))``; ``drivers.run`` carries them out on the Cache,
    # ``drivers.arun`` awaits them on the AsyncCache, as for kvcache's own core.

    def _run(self, operation: Callable[..., Op[T]], *args: Any) -> T:
        try:
            return run(operation(self._current().cache, *args))
        except SerializationError as exc:
            raise _serializers_own(exc) from None

    async def _arun(self, operation: Callable[..., Op[T]], *args: Any) -> T:
        try:
            return await arun(operation(self._current().async_cache, *args))
        except SerializationError as exc:
            raise _serializers_own(exc) from None

    def _add(self, cache: Any, key: Any, value: Any, timeout: Any, version: Any) -> Op[bool]:
        name, ttl = self._name(key, version), self._ttl(timeout)
        if ttl != 0:
            return bool((yield (cache, request(Cache.add, name, value, ttl))))
        added = yield (
            cache,
            request(Cache.add, name, value),
        )  # "would it have been added?"; nothing stays
        if added:
            yield (cache, request(Cache.delete, name))
        return bool(added)

    def _get(self, cache: Any, key: Any, default: Any, version: Any) -> Op[Any]:
        return (yield (cache, request(Cache.get, self._name(key, version), default)))

    def _set(self, cache: Any, key: Any, value: Any, timeout: Any, version: Any) -> Op[None]:
        name, ttl = self._name(key, version), self._ttl(timeout)
        yield (
            (cache, request(Cache.set, name, value, ttl))
            if ttl != 0
            else (cache, request(Cache.delete, name))
        )

    def _touch(self, cache: Any, key: Any, timeout: Any, version: Any) -> Op[bool]:
        name, ttl = self._name(key, version), self._ttl(timeout)
        return bool(
            (
                yield (cache, request(Cache.touch, name, ttl))
                if ttl != 0
                else (cache, request(Cache.delete, name))
            )
        )

    def _delete(self, cache: Any, key: Any, version: Any) -> Op[bool]:
        return bool((yield (cache, request(Cache.delete, self._name(key, version)))))

    def _get_many(self, cache: Any, keys: Iterable[Any], version: Any) -> Op[dict[Any, Any]]:
        names = {self._name(key, version): key for key in keys}
        found = yield (cache, request(Cache.get_many, names))
        return {names[name]: value for name, value in found.items()}

    def _has_key(self, cache: Any, key: Any, version: Any) -> Op[bool]:
        return bool((yield (cache, request(Cache.has, self._name(key, version)))))

    def _incr(self, cache: Any, key: Any, delta: int, version: Any) -> Op[int]:
        name = self._name(key, version)
        if not (
            yield (cache, request(Cache.has, name))
        ):  # as Django's RedisCache: missing is an error, not 0
            raise ValueError(f"Key '{key}' not found")
        value = yield (cache, request(Cache.incr, name, delta))
        if value is None:  # kvcache answered "failed" (no fallback, throw_on_errors off)
            raise ValueError(f"Key '{key}' could not be incremented")
        return int(value)

    def _set_many(
        self, cache: Any, data: Mapping[Any, Any], timeout: Any, version: Any
    ) -> Op[list[Any]]:
        if not data:
            return []
        named = {self._name(key, version): value for key, value in data.items()}
        ttl = self._ttl(timeout)
        if ttl == 0:
            yield (cache, request(Cache.delete_many, named))
            return []
        return [] if (yield (cache, request(Cache.set_many, named, ttl))) else list(data)

    def _delete_many(self, cache: Any, keys: Iterable[Any], version: Any) -> Op[None]:
        names = [self._name(key, version) for key in keys]
        if names:
            yield (cache, request(Cache.delete_many, names))

    def _clear(self, cache: Any) -> Op[bool]:
        yield (cache, request(Cache.clear))
        return True

    # -- the BaseCache API -----------------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return self._run(self._add, key, value, timeout, version)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return await self._arun(self._add, key, value, timeout, version)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self._run(self._get, key, default, version)

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return await self._arun(self._get, key, default, version)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        self._run(self._set, key, value, timeout, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        await self._arun(self._set, key, value, timeout, version)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self._run(self._touch, key, timeout, version)

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return await self._arun(self._touch, key, timeout, version)

    def delete(self, key: Any, version: Any = None) -> bool:
        return self._run(self._delete, key, version)

    async def adelete(self, key: Any, version: Any = None) -> bool:
        return await self._arun(self._delete, key, version)

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        return self._run(self._get_many, keys, version)

    async def aget_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        return await self._arun(self._get_many, keys, version)

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._run(self._has_key, key, version)

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return await self._arun(self._has_key, key, version)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self._run(self._incr, key, delta, version)

    async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self._arun(self._incr, key, delta, version)

    def decr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self._run(self._incr, key, -delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self._arun(self._incr, key, -delta, version)

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        """The keys that could not be stored (all of them when Redis refused the batch)."""
        return self._run(self._set_many, data, timeout, version)

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        return await self._arun(self._set_many, data, timeout, version)

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        self._run(self._delete_many, keys, version)

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        await self._arun(self._delete_many, keys, version)

    def clear(self) -> bool:
        """Delete this cache's keys (its namespace), never the whole database."""
        return self._run(self._clear)

    async def aclear(self) -> bool:
        return await self._arun(self._clear)

    def close(self, **kwargs: Any) -> None:
        """Django calls this after each request: the pooled connections stay open."""

    async def aclose(self, **kwargs: Any) -> None:
        """As ``close``."""

    # -- kvcache's own --------------------------------------------------------------------------

    @property
    def kvcache(self) -> Cache:
        """The kvcache ``Cache`` underneath: ``health()``, ``state``, ``stats``, events."""
        return self._current().cache

    @property
    def async_kvcache(self) -> AsyncCache:
        """The ``AsyncCache`` the async methods use (its own connections, same keys)."""
        return self._current().async_cache
