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

Values are pickled, as Django expects (any picklable object), and signed with a key derived
from ``SECRET_KEY`` unless ``OPTIONS`` names a ``SIGNING_KEY`` or another ``SERIALIZER``.
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
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, default_key_func

from ..aio import AsyncCache
from ..cache import Cache
from ..settings import KVCacheSettings
from ..ttl import FOREVER

CONNECT_WAIT = 1.0  # seconds the first use waits for Redis (then it serves from memory)
MAX_KEY_LENGTH = 64 * 1024  # Django sets no limit of its own; memcached-style warnings remain

_shared: dict[str, tuple[Cache, AsyncCache]] = {}
_lock = threading.Lock()


def _settings(location: str, options: Mapping[str, Any], namespace: str) -> KVCacheSettings:
    """kvcache settings from a CACHES entry: OPTIONS names are kvcache's, in any case."""
    chosen = {name.lower(): value for name, value in options.items()}
    chosen.setdefault("namespace", namespace)
    chosen.setdefault("max_key_length", MAX_KEY_LENGTH)
    if "serializer" not in chosen:
        chosen["serializer"] = "pickle"
        secret = getattr(django_settings, "SECRET_KEY", "")
        if "signing_key" not in chosen and secret:
            digest = hashlib.sha256(b"kvcache.integrations.django:" + secret.encode())
            chosen["signing_key"] = digest.hexdigest()
    return KVCacheSettings(url=location, **chosen)


def _caches(location: str, options: Mapping[str, Any], namespace: str) -> tuple[Cache, AsyncCache]:
    """One sync and one async kvcache cache per configuration, for every thread."""
    described = repr((location, namespace, sorted((k, repr(v)) for k, v in options.items())))
    key = hashlib.sha256(described.encode()).hexdigest()  # (the URL may hold a password)
    with _lock:
        pair = _shared.get(key)
        if pair is None:
            settings = _settings(location, options, namespace)
            pair = _shared[key] = (
                Cache.from_settings(settings),
                AsyncCache.from_settings(settings),
            )
    return pair


def close_all() -> None:
    """Close every shared kvcache cache (their probers and connections), from outside any
    event loop: at process exit, or between tests. Backends made afterwards get new ones."""
    with _lock:
        pairs = list(_shared.values())
        _shared.clear()
    for sync, async_cache in pairs:
        sync.close()
        # Stops its prober; its connections belong to event loops that close them.
        asyncio.run(async_cache.close())


class KVCache(BaseCache):  # type: ignore[misc]  # (Django has no type hints)
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        self._connect_wait = float(options.pop("CONNECT_WAIT", CONNECT_WAIT))
        namespace = str(options.get("NAMESPACE") or self.key_prefix or "django")
        # Django's default key function puts the prefix in front; kvcache's namespace is
        # that prefix already, so only "<version>:<key>" is left to add.
        self._short_keys = self.key_func is default_key_func and (
            not self.key_prefix or namespace == self.key_prefix
        )
        self._cache, self._async = _caches(location, options, namespace)
        self._ready = False
        self._async_ready = False

    # -- keys and timeouts ---------------------------------------------------------------------

    def make_key(self, key: Any, version: int | None = None) -> str:
        if version is None:
            version = self.version
        if self._short_keys:
            return f"{version}:{key}"
        return str(self.key_func(key, self.key_prefix, version))

    def validate_key(self, key: str) -> None:
        """kvcache validates keys itself (InvalidKeyError). Django's memcached-portability
        warnings (~4 µs a key) say nothing about Redis; django-redis skips them too."""

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds for kvcache: FOREVER for None, 0 for "do not cache" (0 or less)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return FOREVER
        return max(0.0, float(timeout))

    def _sync(self) -> Cache:
        if not self._ready:  # the first use in this process waits for Redis, briefly
            self._cache.connect(self._connect_wait)
            self._ready = True
        return self._cache

    async def _aio(self) -> AsyncCache:
        if not self._async_ready:
            await self._async.connect(self._connect_wait)
            self._async_ready = True
        return self._async

    # -- the BaseCache API ---------------------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        cache = self._sync()
        if ttl == 0:  # "would it have been added?", and nothing stays
            added = cache.add(key, value)
            if added:
                cache.delete(key)
            return added
        return cache.add(key, value, ttl)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        cache = await self._aio()
        if ttl == 0:
            added = await cache.add(key, value)
            if added:
                await cache.delete(key)
            return added
        return await cache.add(key, value, ttl)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self._sync().get(self.make_and_validate_key(key, version=version), default)

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return await (await self._aio()).get(key, default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self._sync().delete(key)
        else:
            self._sync().set(key, value, ttl)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        cache = await self._aio()
        if ttl == 0:
            await cache.delete(key)
        else:
            await cache.set(key, value, ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:  # expire now
            return self._sync().delete(key)
        return self._sync().touch(key, ttl)

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        cache = await self._aio()
        if ttl == 0:
            return await cache.delete(key)
        return await cache.touch(key, ttl)

    def delete(self, key: Any, version: Any = None) -> bool:
        return self._sync().delete(self.make_and_validate_key(key, version=version))

    async def adelete(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return await (await self._aio()).delete(key)

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        names = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self._sync().get_many(names)
        return {names[name]: value for name, value in found.items()}

    async def aget_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        names = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = await (await self._aio()).get_many(names)
        return {names[name]: value for name, value in found.items()}

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self._sync().has(self.make_and_validate_key(key, version=version))

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return await (await self._aio()).has(key)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        name = self.make_and_validate_key(key, version=version)
        cache = self._sync()
        if not cache.has(name):  # as Django's RedisCache: missing is an error, not a 0
            raise ValueError(f"Key '{key}' not found")
        return _counted(cache.incr(name, delta), key)

    async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        name = self.make_and_validate_key(key, version=version)
        cache = await self._aio()
        if not await cache.has(name):
            raise ValueError(f"Key '{key}' not found")
        return _counted(await cache.incr(name, delta), key)

    def decr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr(key, -delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return await self.aincr(key, -delta, version)

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        """The keys that could not be stored (all of them when Redis refused the batch)."""
        if not data:
            return []
        named = {self.make_and_validate_key(key, version=version): v for key, v in data.items()}
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            self._sync().delete_many(named)
            return []
        return [] if self._sync().set_many(named, ttl) else list(data)

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        if not data:
            return []
        named = {self.make_and_validate_key(key, version=version): v for key, v in data.items()}
        ttl = self.get_backend_timeout(timeout)
        cache = await self._aio()
        if ttl == 0:
            await cache.delete_many(named)
            return []
        return [] if await cache.set_many(named, ttl) else list(data)

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        names = [self.make_and_validate_key(key, version=version) for key in keys]
        if names:
            self._sync().delete_many(names)

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        names = [self.make_and_validate_key(key, version=version) for key in keys]
        if names:
            await (await self._aio()).delete_many(names)

    def clear(self) -> bool:
        """Delete this cache's keys (its namespace), never the whole database."""
        self._sync().clear()
        return True

    async def aclear(self) -> bool:
        await (await self._aio()).clear()
        return True

    def close(self, **kwargs: Any) -> None:
        """Django calls this after each request: the pooled connections stay open."""

    async def aclose(self, **kwargs: Any) -> None:
        """As ``close``."""

    # -- kvcache's own --------------------------------------------------------------------------

    @property
    def kvcache(self) -> Cache:
        """The kvcache ``Cache`` underneath: ``health()``, ``state``, ``stats``, events."""
        return self._cache

    @property
    def async_kvcache(self) -> AsyncCache:
        """The ``AsyncCache`` the async methods use (its own connections, same keys)."""
        return self._async


def _counted(value: int | None, key: Any) -> int:
    if value is None:  # kvcache answered "failed" (e.g. throw_on_errors off, no fallback)
        raise ValueError(f"Key '{key}' could not be incremented")
    return value
