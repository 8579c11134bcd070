"""Fresh connections outside the pool, and the probe that decides a store is back: what it
sends, how long each step may take, and when it passed; where a client connects."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvcache._core.timeouts import command_timeout, fits_a_call
from kvcache.errors import CacheUnavailableError

log = logging.getLogger("kvcache.stores")

_DRIVER_INFO = "driver_info" in inspect.signature(redis.connection.AbstractConnection).parameters


def probe_connection(pool: Any, step_timeout: float, read_timeout: float | None = None) -> Any:
    """A fresh connection outside the pool, for a probe: it proves that a *new* connection
    can connect and authenticate (a pooled one may predate the outage), and every step of
    its handshake waits at most ``step_timeout`` (the connect timeout). ``read_timeout``:
    for replies slower than that on purpose (a blocked XREAD)."""
    kwargs = dict(pool.connection_kwargs)
    kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = step_timeout
    if read_timeout is not None:
        kwargs["socket_timeout"] = read_timeout
    # No retries either, whatever the client was given: one probe, one bounded attempt.
    retry = redis.asyncio.retry.Retry if isinstance(pool, redis.asyncio.ConnectionPool) else Retry
    kwargs["retry"] = retry(NoBackoff(), 0)
    if _DRIVER_INFO:  # no CLIENT SETINFO: two round trips less for a call that waits for
        kwargs["driver_info"] = None  # the first probe (redis-py 7.1 and later know it)
    return pool.connection_class(**kwargs)


PING: Final = ("PING",)
CLUSTER_INFO: Final = ("CLUSTER", "INFO")


class Probing:
    """A store's probe, the same for both shells: what it sends on its fresh connection,
    how long each step may take, and when it passed. A cluster node answers PING while the
    cluster is down (and refuses every key), so there the probe asks CLUSTER INFO: the same
    round trip, and it says whether the cluster serves."""

    def __init__(self, step: float, op_timeout: float) -> None:
        self.step = step  # the connect: connect_timeout
        # Each read as long as a call may wait, at least: a Redis slower than connect_timeout
        # but within op_timeout serves its calls, so it is no outage.
        self.read = max(step, command_timeout(op_timeout))
        self.op_timeout = op_timeout
        self.cluster_info = True  # False once a node refused it to the ACL user: PING then

    @property
    def timeout(self) -> float:
        """The longest a realistic failed probe takes: a connect, then one read."""
        return self.step + self.read

    @property
    def ceiling(self) -> float:
        """The async shell's bound on a whole probe: a connect, two handshake replies
        (HELLO, redis-py's maintenance notifications), and the probe's own reply."""
        return self.step + 3 * self.read

    def connection(self, pool: Any) -> Any:
        return probe_connection(pool, self.step, self.read)

    def command(self, cluster: bool) -> tuple[str, ...]:
        return CLUSTER_INFO if cluster and self.cluster_info else PING

    def verdict(self, command: tuple[str, ...], reply: Any, took: float) -> None:
        """Raise unless the probe passed: its round trip fits a call's bound, and a cluster
        node's cluster is up (cluster_state:ok)."""
        fits_a_call(" ".join(command), took, self.op_timeout)
        if command is not CLUSTER_INFO:
            return
        if isinstance(reply, redis.exceptions.NoPermissionError):
            # The node answered: it is up. (Users that were told to grant CLUSTER SLOTS
            # only would otherwise never see a shard recover after its first outage.)
            self.cluster_info = False
            log.warning(
                "kvcache: the ACL user may not run CLUSTER INFO; probes send PING instead, "
                "so a cluster that is down is noticed by calls only (grant +cluster|info)"
            )
            return
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        state = next((f for f in text.split() if f.startswith("cluster_state:")), "")
        if state != "cluster_state:ok":
            raise CacheUnavailableError(f"the cluster serves no keys ({state or text[:60]})")


def step_timeout(client: Any, connect_timeout: float | None) -> float:
    """A probe's per-step timeout: ``connect_timeout``, else what the client's pool uses."""
    if connect_timeout is not None:
        return connect_timeout
    kwargs = client.connection_pool.connection_kwargs
    return float(kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 1.0)


def describe(client: redis.Redis | redis.asyncio.Redis) -> str:
    """Where a client connects, for reprs: address and db, never credentials."""
    where = client.connection_pool.connection_kwargs
    if "path" in where:
        return f"unix://{where['path']}?db={where.get('db', 0)}"
    return f"{where.get('host')}:{where.get('port')}/{where.get('db', 0)}"


def address_of(client: redis.Redis | redis.asyncio.Redis) -> tuple[str, int | None, int]:
    """(host or socket path, port or None, db): where a client connects, for telemetry."""
    where = client.connection_pool.connection_kwargs
    db = int(where.get("db") or 0)
    if "path" in where:
        return str(where["path"]), None, db
    return str(where.get("host")), int(where.get("port") or 6379), db
