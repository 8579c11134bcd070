"""Redis Cluster topology, pure: which primary serves which slot, when to look again, and
how a call is re-sent after ASK. No I/O; the clock and the jitter are injected.

A key's slot is CRC16 of the key (or of its ``{hash tag}``) mod 16384; each slot has one
primary. The router (``sharding.py``) sends each key to its slot's primary and keeps this
map fresh: from MOVED replies at once, and from CLUSTER SLOTS of 1-2 random known nodes on a
jittered, rate-limited schedule.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot  # pure: CRC16 (binascii) of the key or its {hash tag}

SLOTS = 16384
Remap = Callable[[tuple[str, int]], tuple[str, int]]
"""Maps an address the cluster announces to one this process can reach (NAT, proxies)."""


def slot_groups(keys: Sequence[bytes]) -> list[list[bytes]]:
    """``keys`` grouped by slot, in first-seen order (cluster nodes refuse cross-slot
    multi-key commands)."""
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return list(groups.values())


def address(host: str, port: int) -> str:
    return f"{host}:{port}"


def split_address(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Topology:
    """slot -> the primary that serves it ("host:port"; "" when no node covers the slot).
    ``cluster`` is False for a server found not to be in cluster mode: one node, every slot."""

    owners: tuple[str, ...]
    cluster: bool = True

    @classmethod
    def single(cls, name: str) -> Topology:
        return cls((name,) * SLOTS, cluster=False)

    @classmethod
    def parse(cls, reply: Any, seed_host: str, remap: Remap | None = None) -> Topology:
        """From a CLUSTER SLOTS reply: ``[[start, end, [host, port, id, ...], replicas...]]``.
        An empty host means "the node you asked" (a one-node cluster)."""
        owners = [""] * SLOTS
        for start, end, primary, *_replicas in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            where = (host or seed_host, int(primary[1]))
            name = address(*(remap(where) if remap is not None else where))
            owners[int(start) : int(end) + 1] = [name] * (int(end) - int(start) + 1)
        return cls(tuple(owners))

    @property
    def primaries(self) -> frozenset[str]:
        return frozenset(self.owners) - {""}

    def owner(self, key: bytes) -> str:
        return self.owners[key_slot(key)]

    def moved(self, slot: int, name: str) -> Topology:
        """After ``MOVED slot name``: the map with that one slot reassigned."""
        owners = list(self.owners)
        owners[slot] = name
        return Topology(tuple(owners), self.cluster)


class RefreshSchedule:
    """When to check the topology: every ``interval`` seconds (±20 % jitter, so a fleet of
    processes does not ask in step), sooner when asked (a node failed, a MOVED came), but
    never more often than every ``min_gap`` seconds, and never two checks at once.

    While a shard is down (``done(urgent=True)``) the next check comes after ``min_gap``,
    then twice that, and so on up to ``interval``: a failed primary's replica is usually
    promoted within seconds, and its keys are served from memory until a check sees it."""

    def __init__(
        self,
        interval: float,
        min_gap: float,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.interval = interval
        self.min_gap = min_gap
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self.last = clock()
        self.next_at = self._after(self.last)
        self.in_flight = False
        self.checks = 0
        self._urgent_gap = 0.0  # the wait after the last urgent check (0: none in a row)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = False  # the parent's check does not go on in the child

    def _after(self, now: float) -> float:
        return now + self.interval * (0.8 + 0.4 * self._jitter())

    def claim(self) -> bool:
        """True if a check is due and the caller may run it (then ``done()`` must follow)."""
        if self._clock() < self.next_at:  # the hot path: no lock
            return False
        with self._lock:
            if self.in_flight or self._clock() < self.next_at:
                return False
            self.in_flight = True
            self.checks += 1
            return True

    def done(self, *, urgent: bool = False) -> None:
        with self._lock:
            self.in_flight = False
            self.last = self._clock()
            if urgent:
                self._urgent_gap = min(self.interval, 2 * self._urgent_gap or self.min_gap)
                self.next_at = self.last + self._urgent_gap
            else:
                self._urgent_gap = 0.0
                self.next_at = self._after(self.last)

    def soon(self) -> None:
        """Check as soon as the rate limit allows."""
        with self._lock:
            self.next_at = min(self.next_at, max(self._clock(), self.last + self.min_gap))


# -- ASK: the slot is being migrated, and this key already lives on the importing node, which
# serves it only right after ASKING. A call is re-sent there as raw commands, one key at a time.

Finish = Callable[[list[Any]], Any]


def ask_commands(method: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], Finish]:
    """The raw commands that carry out a one-key store call, and how to read their replies."""
    if method == "get":
        return [("GET", args[0])], lambda r: r[0]
    if method == "get_many":
        return [("GET", key) for key in args[0]], list
    if method == "exists":
        return [("EXISTS", args[0])], lambda r: r[0] == 1
    if method == "pttl":
        return [("PTTL", args[0])], lambda r: r[0]
    if method == "set":
        return [set_command(args[0], args[1], args[2])], lambda r: None
    if method == "add":
        return [set_command(args[0], args[1], args[2], nx=True)], lambda r: r[0] is not None
    if method == "set_many":
        return [set_command(key, value, args[1]) for key, value in args[0]], lambda r: None
    if method == "delete_many":
        return [("UNLINK", key) for key in args[0]], sum
    if method == "incr":
        key, amount, ttl_ms = args
        start = [] if ttl_ms is None else [("SET", key, b"0", "NX", "PX", ttl_ms)]
        return [*start, ("INCRBY", key, amount)], lambda r: r[-1]
    if method == "get_with_ttl":
        return [("GET", args[0]), ("PTTL", args[0])], lambda r: (r[0], int(r[1]))
    if method == "replace":
        return [replace_command(*args)], lambda r: bool(r[0])
    if method == "publish":
        return [xadd_command(*args)], lambda r: None
    if method == "expire":
        key, ttl_ms = args
        if ttl_ms is None:
            return [("PERSIST", key), ("EXISTS", key)], lambda r: r[1] == 1
        return [("PEXPIRE", key, ttl_ms)], lambda r: bool(r[0])
    raise ValueError(f"no ASK form for {method}")


# Compare-and-set: Redis has no command for it. EVAL, not EVALSHA: the script is short,
# Redis keeps it compiled, and nothing has to be loaded first on every node.
_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


def replace_command(key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> tuple[Any, ...]:
    """Store ``new`` with ``ttl_ms`` only if ``key`` still holds ``old`` (1 if it did)."""
    return ("EVAL", _REPLACE, 1, key, old, new, b"" if ttl_ms is None else ttl_ms)


def xadd_command(stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> tuple[Any, ...]:
    """XADD ``fields``, trimming the stream to about ``maxlen`` entries (the near cache's
    invalidations: from the stores, the router's ASK path and the listener's connection)."""
    flat = [part for pair in fields.items() for part in pair]
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat)


def set_command(
    key: bytes, value: bytes, ttl_ms: int | None, *, nx: bool = False
) -> tuple[Any, ...]:
    """SET as a raw command: the stores send it with ``execute_command``, which skips
    redis-py's ``set()`` argument handling (~7 µs a call, measured)."""
    command: tuple[Any, ...] = ("SET", key, value)
    if ttl_ms is not None:
        command += ("PX", ttl_ms)
    return (*command, "NX") if nx else command
