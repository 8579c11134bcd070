"""Every redis-py (and socket) exception becomes a kvcache one here, and nowhere else: what
means "Redis cannot serve us now" (the breaker opens), a redirect, a counter that is not
one, or a server error for that call only."""

from __future__ import annotations

import asyncio
import os

import redis
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from kvcache._core.protocols import Breaker
from kvcache.errors import (
    NOT_A_COUNTER,
    BreakerOpenError,
    CacheUnavailableError,
    InvalidValueError,
    KVCacheError,
    NoFreeConnectionError,
    RedirectError,
    StoreError,
)

FAILURES = (redis.RedisError, OSError, asyncio.TimeoutError)  # the last: Python 3.10
# What means "Redis cannot serve us now", so the breaker opens. ClusterDownError (a reply,
# not a network failure: CLUSTERDOWN, "CLUSTERDOWN Hash slot not served", MASTERDOWN) too:
# during a failover the healthy nodes answer it to every key until the cluster is whole.
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    asyncio.TimeoutError,
    ClusterDownError,
)


def translate(exc: BaseException) -> KVCacheError:
    """The kvcache exception for a redis-py (or socket) failure, caused by it from the start
    (the breaker, telemetry and logs see the cause before it is raised). Messages never hold
    secrets: redis-py's name host:port and the server's reply, not the credentials."""
    error = _translated(exc)
    error.__cause__ = exc
    return error


def _translated(exc: BaseException) -> KVCacheError:
    if isinstance(exc, UNREACHABLE):
        return CacheUnavailableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, AskError):  # MovedError too: a cluster node points elsewhere
        kind = "MOVED" if isinstance(exc, MovedError) else "ASK"
        return RedirectError(kind, exc.slot_id, f"{exc.host}:{exc.port}")
    if isinstance(exc, TryAgainError):
        return RedirectError("TRYAGAIN", -1, "")
    if isinstance(exc, redis.ResponseError) and any(
        reason in str(exc) for reason in ("not an integer", "overflow")
    ):
        return InvalidValueError(NOT_A_COUNTER)
    return StoreError(f"{type(exc).__name__}: {exc}")


_TRANSPORTS = os.path.join("asyncio", "selector_events.py")


def lost_transport(exc: BaseException) -> ConnectionError | None:
    """A write on an asyncio connection the peer closed meanwhile, raised by asyncio itself
    as a bug instead of a ConnectionError: Python 3.12 and 3.13's ``writelines`` (which
    redis-py uses) dereferences the transport's loop, already cleared ("'NoneType' object
    has no attribute '_add_writer'", CPython gh-136234). That error, told apart by where it
    arose, as the connection failure it is; None for any other."""
    if not isinstance(exc, AttributeError | TypeError):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_code.co_filename.endswith(_TRANSPORTS):
        return None
    return ConnectionError(f"the connection was lost during a write ({exc})")


def no_free_connection(waited: float) -> NoFreeConnectionError:
    return NoFreeConnectionError(f"no free connection within {waited}s (max_connections busy)")


def failure(exc: BaseException, breaker: Breaker | None) -> KVCacheError:
    """The kvcache error for ``exc``, told to the breaker while the call still holds its slot."""
    error = translate(exc)
    if breaker is not None and isinstance(error, StoreError):
        breaker.trips(error)
    return error


def breaker_opened() -> BreakerOpenError:
    return BreakerOpenError("Redis became unavailable while this call waited for a connection")


def cluster_disabled(exc: BaseException) -> bool:
    """CLUSTER SLOTS answered by a server that is not in cluster mode."""
    return isinstance(exc, redis.ResponseError) and "cluster support disabled" in str(exc)
