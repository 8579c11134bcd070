"""A Flask-Caching backend on kvcache: cachelib's cache API, kvcache's resilience.

    app.config.update(
        CACHE_TYPE="kvcache.integrations.flask.KVCache",
        CACHE_REDIS_URL="redis://127.0.0.1:6379/0",  # or CACHE_REDIS_HOST, _PORT, _DB, _PASSWORD
        CACHE_KEY_PREFIX="myapp_",       # Redis keys "myapp_<key>"; clear() scans "myapp_*"
        CACHE_DEFAULT_TIMEOUT=300,       # 0: never expires
        CACHE_OPTIONS={"op_timeout": 0.25, "mode": "cluster"},  # any kvcache setting
    )
    cache = flask_caching.Cache(app)

Values are pickled (``@cache.memoize`` stores whatever a function returns) and always signed:
with ``CACHE_OPTIONS["signing_key"]``, else a key derived from the app's ``SECRET_KEY`` (with
neither, construction raises ConfigurationError). Unsigned pickle only when the options name
``"serializer": "pickle-unsigned"``. Timeouts follow cachelib: None is the default timeout,
0 never expires; a negative one stores nothing.
"""

from __future__ import annotations

import datetime
import math
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from flask import Flask
from flask_caching.backends.base import BaseCache

from kvcache._core.ttl import FOREVER
from kvcache._shells.cache import Cache
from kvcache.integrations import sign_pickle_with_secret
from kvcache.settings import KVCacheSettings

CONNECT_WAIT = 1.0  # seconds the app's start waits for Redis (then it serves from memory)
MAX_KEY_LENGTH = 64 * 1024  # view keys carry the request path; cachelib sets no limit


def redis_url(config: dict[str, Any]) -> str:
    """The Redis URL Flask-Caching's own RedisCache would connect to: ``CACHE_REDIS_URL`` (its
    database, else ``CACHE_REDIS_DB``), else ``CACHE_REDIS_HOST`` (``localhost``),
    ``CACHE_REDIS_PORT`` (6379), ``CACHE_REDIS_DB`` (0) and ``CACHE_REDIS_PASSWORD``."""
    db = config.get("CACHE_REDIS_DB", 0)
    url = config.get("CACHE_REDIS_URL")
    if url:
        # redis.from_url(url, db=CACHE_REDIS_DB), as RedisCache calls it: the URL's database
        # wins; CACHE_REDIS_HOST, _PORT and _PASSWORD are not used.
        parts = urlsplit(str(url))
        if parts.scheme in ("redis", "rediss") and parts.path in ("", "/") and db:
            return urlunsplit(parts._replace(path=f"/{db}"))
        return str(url)
    host = str(config.get("CACHE_REDIS_HOST", "localhost"))
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    password = config.get("CACHE_REDIS_PASSWORD")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host}:{config.get('CACHE_REDIS_PORT', 6379)}/{db}"


class KVCache(BaseCache):
    def __init__(self, cache: Cache, default_timeout: int = 300) -> None:
        super().__init__(default_timeout=default_timeout)
        self._cache = cache

    @classmethod
    def factory(
        cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> KVCache:
        """Flask-Caching's backend contract: built from the app's CACHE_* configuration."""
        options = {name.lower(): value for name, value in kwargs.items()}
        default_timeout = options.pop("default_timeout", 300)
        options.pop("ignore_delete_many_errors", None)
        connect_wait = float(options.pop("connect_wait", CONNECT_WAIT))
        options.setdefault("max_key_length", MAX_KEY_LENGTH)
        prefix = str(config.get("CACHE_KEY_PREFIX") or "flask")
        last = prefix[-1]
        if len(prefix) > 1 and not last.isalnum() and last not in prefix[:-1]:
            # "app_": namespace "app", separator "_": cachelib's own "app_<key>"
            options.setdefault("namespace", prefix[:-1])
            options.setdefault("separator", last)
        else:  # "app", "flask_cache_" (the default): "<prefix>:<key>"
            options.setdefault("namespace", prefix)
        secret = partial(app.config.get, "SECRET_KEY")
        sign_pickle_with_secret(options, secret, "SECRET_KEY", "kvcache.integrations.flask")
        url = redis_url(config)
        cache = Cache.from_settings(KVCacheSettings(url=url, **options))
        cache.connect(connect_wait)
        return cls(cache, default_timeout=default_timeout)

    @property
    def kvcache(self) -> Cache:
        """The kvcache ``Cache`` underneath: ``health()``, ``state``, ``stats``, events."""
        return self._cache

    def _ttl(self, timeout: int | float | datetime.timedelta | None) -> float | None:
        """Seconds for kvcache: FOREVER for 0, None when nothing is to be stored."""
        if timeout is None:
            timeout = self.default_timeout
        if isinstance(timeout, datetime.timedelta):
            timeout = math.ceil(timeout.total_seconds())
        if timeout == 0:
            return FOREVER
        return None if timeout < 0 else float(timeout)

    def get(self, key: str) -> Any:
        return self._cache.get(key)

    def get_many(self, *keys: str) -> list[Any]:
        found = self._cache.get_many(keys)
        return [found.get(key) for key in keys]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        found = self._cache.get_many(keys)
        return {key: found.get(key) for key in keys}

    def set(self, key: str, value: Any, timeout: Any = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is None:
            self._cache.delete(key)
            return True
        return self._cache.set(key, value, ttl)

    def add(self, key: str, value: Any, timeout: Any = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is None:
            return not self._cache.has(key)
        return self._cache.add(key, value, ttl)

    def set_many(self, mapping: dict[str, Any], timeout: Any = None) -> list[Any]:
        """The keys stored (all of them, or none when Redis and the fallback refused)."""
        ttl = self._ttl(timeout)
        if ttl is None:
            self._cache.delete_many(mapping)
            return list(mapping)
        return list(mapping) if self._cache.set_many(mapping, ttl) else []

    def delete(self, key: str) -> bool:
        return self._cache.delete(key)

    def delete_many(self, *keys: str) -> list[Any]:
        """The keys now absent: all of them (a key that was not there counts as deleted)."""
        self._cache.delete_many(keys)
        return list(keys)

    def has(self, key: str) -> bool:
        return self._cache.has(key)

    def clear(self) -> bool:
        """Delete this cache's keys (its prefix), never the whole database."""
        self._cache.clear()
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        return self._cache.incr(key, delta)

    def dec(self, key: str, delta: int = 1) -> int | None:
        return self._cache.decr(key, delta)
