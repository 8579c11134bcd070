"""Credentials that expire (IAM tokens), at the connection level.

- Every new connection asks the credential provider for its password (redis-py calls
  ``get_credentials()`` in each connection's handshake); pools, probes and cluster nodes all
  copy these connection options, so each of them reconnects with a fresh token by itself.
- A refused token (WRONGPASS, or ElastiCache's "IAM Authentication service is not
  available"): the provider drops it and the handshake runs once more with a new one; a
  second refusal fails the connection, and the cache's breaker takes it from there.
- AWS closes IAM-authenticated connections after 12 hours. A connection older than
  ``max_age`` (jittered by up to -10 %, so a pool does not reconnect all at once) is
  re-opened when it is next taken from its pool, i.e. while idle.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, Protocol

import redis
import redis.asyncio
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, RedisError, ResponseError

log = logging.getLogger("kvcache.client")

UNAVAILABLE = "IAM Authentication service is not available"


class Refreshable(Protocol):
    def invalidate(self) -> None: ...


def _refused(exc: Exception) -> bool:
    return isinstance(exc, AuthenticationError) or UNAVAILABLE in str(exc)


class ConnectionPolicy:
    """One per cache: the credential provider every connection uses, and the age at which
    a connection is re-opened. The factory builds each client's pool with ``pool()``."""

    def __init__(
        self,
        provider: CredentialProvider,
        max_age: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        owned: bool = False,
    ) -> None:
        """``owned``: the provider was made for this cache, and ``close()`` closes it (one
        the caller passed in is the caller's to close)."""
        self.provider = provider
        self.max_age = max_age
        self._owned = owned
        self._clock = clock
        self._expires: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._retrying: weakref.WeakSet[Any] = weakref.WeakSet()

    def close(self) -> None:
        close = getattr(self.provider, "close", None)
        if self._owned and close is not None:
            close()

    def kwargs(self, is_async: bool) -> dict[str, Any]:
        return {
            "credential_provider": self.provider,
            "redis_connect_func": self._connect_async if is_async else self._connect,
        }

    def pool(self, url: str, is_async: bool, **options: Any) -> Any:
        """A connection pool for ``url`` whose connections follow this policy."""
        cls = _AsyncRotatingPool if is_async else _RotatingPool
        pool = cls.from_url(url, **options, **self.kwargs(is_async))
        pool.policy = self
        return pool

    def expired(self, connection: Any) -> bool:
        expires = self._expires.get(connection)
        return expires is not None and self._clock() >= expires

    def _connected(self, connection: Any) -> None:
        if self.max_age is not None:
            self._expires[connection] = self._clock() + self.max_age * random.uniform(0.9, 1.0)

    # The handshake hooks (redis-py's ``redis_connect_func``), written once: ``_handshake``
    # names the connection's methods to call, and the sync hook calls them, the async one
    # awaits them (each outcome sent or thrown back). A refused AUTH may have closed the
    # socket (redis-py does on WRONGPASS), so the retry is a whole new connect, which runs
    # the hook again: ``_retrying`` makes that second run the last. redis-py closes the
    # socket after a RedisError only; anything else (a credential provider's own error, a
    # cancellation) must not leave an unauthenticated socket in the pool.

    def _handshake(self, connection: Any) -> Generator[str, None, None]:
        try:
            try:
                yield "on_connect"
            except (AuthenticationError, ResponseError) as exc:
                if connection in self._retrying or not self._retry_after(exc):
                    raise
                self._retrying.add(connection)
                try:
                    yield "disconnect"
                    yield "connect"
                finally:
                    self._retrying.discard(connection)
                return
        except RedisError:
            raise
        except Exception as exc:
            yield "disconnect"
            raise AuthenticationError(f"credentials unavailable ({type(exc).__name__})") from exc
        except BaseException:  # a cancellation: no half-open socket either
            yield "disconnect"
            raise
        self._connected(connection)

    def _connect(self, connection: Any) -> None:
        steps = self._handshake(connection)
        try:
            step = next(steps)
            while True:
                try:
                    getattr(connection, step)()
                except BaseException as exc:
                    step = steps.throw(exc)
                else:
                    step = next(steps)
        except StopIteration:
            pass

    async def _connect_async(self, connection: Any) -> None:
        steps = self._handshake(connection)
        try:
            step = next(steps)
            while True:
                try:
                    await getattr(connection, step)()
                except BaseException as exc:
                    step = steps.throw(exc)
                else:
                    step = next(steps)
        except StopIteration:
            pass

    def _retry_after(self, exc: Exception) -> bool:
        """After a refused token: drop it (the provider signs a new one) and say to retry."""
        invalidate = getattr(self.provider, "invalidate", None)
        if not _refused(exc) or invalidate is None:
            return False
        log.debug("kvcache: the server refused the credentials; retrying with new ones")
        invalidate()
        return True


class _RotatingPool(redis.ConnectionPool):
    policy: ConnectionPolicy

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection: Any = super().get_connection(*args, **kwargs)
        if self.policy.expired(connection):
            try:
                connection.disconnect()
                connection.connect()
            except BaseException:
                self.release(connection)
                raise
        return connection


class _AsyncRotatingPool(redis.asyncio.ConnectionPool):
    policy: ConnectionPolicy

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection: Any = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.policy.expired(connection):
            try:
                await connection.disconnect()
                await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
        return connection
