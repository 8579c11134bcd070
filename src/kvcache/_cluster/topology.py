"""Redis Cluster topology, pure: which primary serves which slot.

A key's slot is CRC16 of the key (or of its ``{hash tag}``) mod 16384; each slot has one
primary. The router (``sharded.py``) sends each key to its slot's primary and keeps this
map fresh: from MOVED replies at once, and from CLUSTER SLOTS of 1-2 random known nodes on a
jittered, rate-limited schedule (``refresh.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvcache._redis.slots import SLOTS, key_slot

Remap = Callable[[tuple[str, int]], tuple[str, int]]
"""Maps an address the cluster announces to one this process can reach (NAT, proxies)."""


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
