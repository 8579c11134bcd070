"""``RedisClusterServer``: a real Redis Cluster of private ``redis-server`` processes.

    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        cache = Cache.from_url(cluster.url, mode="cluster")
        cluster.migrate_slots(range(0, 100), to=cluster.primary_ports[1])
        cluster.failover(cluster.primary_ports[0])  # or crash(): no takeover, CLUSTERDOWN

Every node is a ``RedisServer`` with ``cluster-enabled yes`` on a free loopback port. The
helpers do what an operator (or ElastiCache) does: move slots with live keys (MIGRATING /
IMPORTING, so clients see ASK and then MOVED), add a primary, remove a node (emptied, then
forgotten by every other node, then stopped), fail a primary over to its replica.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvcache.testing.server import RedisServer
from kvcache.testing.tls import TLSFiles

SLOTS = 16384
NODE_TIMEOUT_MS = 1000  # how soon a dead primary is failed over
SETTLE_TIMEOUT = 20.0  # seconds for the cluster to agree after a change


def _client(port: int, tls: TLSFiles | None) -> redis.Redis:
    options = tls.client_options() if tls else {}
    return redis.Redis(port=port, socket_timeout=2.0, retry=Retry(NoBackoff(), 0), **options)


class RedisClusterServer:
    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        tls: TLSFiles | None = None,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        """``tls``: every node serves TLS only, and talks TLS to the others (cluster bus,
        replication). ``node_timeout_ms``: cluster-node-timeout, how soon a node that stopped
        answering is failed (and its replica elected, see ``crash``)."""
        if primaries < 1 or replicas < 0:
            raise ValueError("need primaries >= 1 and replicas >= 0")
        self._primaries = primaries
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self.tls = tls
        self.nodes: dict[int, RedisServer] = {}  # port -> server, running or not
        self._clients: dict[int, redis.Redis] = {}  # one connection per node, reused

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RedisClusterServer:
        try:
            ports = [self._start_node() for _ in range(self._primaries)]
            bounds = [SLOTS * i // len(ports) for i in range(len(ports) + 1)]
            for port, start, end in zip(ports, bounds, bounds[1:], strict=False):
                self._run(port, "CLUSTER", "ADDSLOTSRANGE", start, end - 1)
            for port in ports[1:]:
                self._meet(port, wait=False)
            self._wait(lambda: all(map(self._known_by_all, ports)), "the nodes to meet")
            for primary in ports:
                for _ in range(self._replicas):
                    self._add_replica(primary)
            self.wait_settled()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for server in self.nodes.values():
            server.stop()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisClusterServer(primaries={self.primary_ports}, nodes={self.running_ports})"

    # -- what is where -----------------------------------------------------------------------

    @property
    def running_ports(self) -> list[int]:
        return [port for port, server in self.nodes.items() if server.running]

    @property
    def url(self) -> str:
        """A seed URL: one running primary (clients discover the rest)."""
        return self.nodes[self.primary_ports[0]].url

    def slot_map(self, port: int | None = None) -> dict[int, int]:
        """slot -> primary port, as ``port`` (default: any running node) sees it."""
        reply = self._run(port or self.running_ports[0], "CLUSTER", "SLOTS")
        owners: dict[int, int] = {}
        for start, end, primary, *_replicas in reply:
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(primary[1])
        return owners

    @property
    def primary_ports(self) -> list[int]:
        """Primaries that own slots, in slot order."""
        return list(dict.fromkeys(self.slot_map().values()))

    def owner(self, key: bytes | str) -> int:
        """The port of the primary that holds ``key`` now."""
        return self.slot_map()[self.keyslot(key)]

    @staticmethod
    def keyslot(key: bytes | str) -> int:
        from redis.crc import key_slot

        return key_slot(key.encode() if isinstance(key, str) else key)

    def node_id(self, port: int) -> str:
        return str(self._run(port, "CLUSTER", "MYID").decode())

    def replicas_of(self, primary: int) -> list[int]:
        """Running replicas of the primary on port ``primary``."""
        primary_id = self.node_id(primary)
        return [
            int(address.split("@")[0].rsplit(":", 1)[1])
            for _id, address, flags, master, *_ in self._nodes_table()
            if master == primary_id and "fail" not in flags
        ]

    # -- operations --------------------------------------------------------------------------

    def migrate_slots(self, slots: Iterable[int], to: int, *, pause: float = 0.0) -> int:
        """Move ``slots`` (with their keys) to the primary on port ``to``, the way
        ``redis-cli --cluster reshard`` does. ``pause``: seconds to hold each slot half
        migrated (clients get ASK for the keys already moved). Returns the keys moved."""
        moved = 0
        target_id = self.node_id(to)
        for slot in slots:
            source = self.slot_map()[slot]
            if source == to:
                continue
            source_id = self.node_id(source)
            self._run(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            self._run(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            first = True
            while keys := self._run(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
                self._run(source, "MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                if first and pause:
                    time.sleep(pause)  # some keys here, some there: ASK territory
                first = False
            # Target first (it bumps its epoch), then the source; the rest learn by gossip.
            self._run(to, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
            # (If its view changed meanwhile and it refuses, gossip brings it round.)
            with contextlib.suppress(redis.ResponseError):
                self._run(source, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_settled()
        return moved

    def add_primary(self) -> int:
        """Start an empty primary and join it to the cluster; returns its port."""
        port = self._start_node()
        self._meet(port)
        self.wait_settled()
        return port

    def remove_node(self, port: int) -> None:
        """Scale in: move the node's slots to the other primaries, make every other node
        forget it, stop it."""
        owned = [slot for slot, owner in self.slot_map().items() if owner == port]
        others = [p for p in self.primary_ports if p != port]
        if owned and not others:
            raise ValueError("cannot remove the last primary")
        for i, other in enumerate(others):
            share = owned[len(owned) * i // len(others) : len(owned) * (i + 1) // len(others)]
            self.migrate_slots(share, to=other)
        node_id = self.node_id(port)
        for replica in self.replicas_of(port):  # its replicas go with it
            self.remove_node(replica)
        for other in self.running_ports:
            if other != port:
                self._run(other, "CLUSTER", "FORGET", node_id)
        self._stop_node(port)
        self.wait_settled()

    def failover(self, primary: int) -> int:
        """Kill ``primary`` and promote its replica (as the cluster does after a crash, only
        without waiting for the failure detection); returns the new primary's port."""
        replicas = self.replicas_of(primary)
        if not replicas:
            raise ValueError(f"primary {primary} has no replica")
        self._stop_node(primary)
        self._run(replicas[0], "CLUSTER", "FAILOVER", "TAKEOVER")
        self._wait(lambda: primary not in self.slot_map(replicas[0]), "promotion")
        self.wait_settled()
        return replicas[0]

    def crash(self, primary: int) -> None:
        """kill -9 ``primary`` and let the cluster fail it over by itself: after
        ``node_timeout_ms`` the others mark it failed (with full coverage required, every
        node then answers CLUSTERDOWN to keys) until its replica wins the election. Needs
        3+ primaries (a majority must agree) and a replica. Returns at once; see
        ``wait_settled``."""
        if not self.replicas_of(primary):
            raise ValueError(f"primary {primary} has no replica")
        client = self._clients.pop(primary, None)
        if client is not None:
            client.close()
        self.nodes[primary].crash()

    def cluster_state(self, port: int) -> str:
        """``cluster_state`` as the node on ``port`` sees it: "ok" or "fail"."""
        return self._cluster_info(port).get("cluster_state", "")

    def wait_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until every running node reports cluster_state:ok and the same slot map."""

        def settled() -> bool:
            maps = []
            for port in self.running_ports:
                if self._cluster_info(port).get("cluster_state") != "ok":
                    return False
                maps.append(self.slot_map(port))
            return all(m == maps[0] and len(m) == SLOTS for m in maps)

        self._wait(settled, "cluster_state:ok and one slot map", timeout)

    # -- internals ---------------------------------------------------------------------------

    def _start_node(self) -> int:
        server = RedisServer(
            extra_args=(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self._node_timeout_ms),
                "--cluster-require-full-coverage",  # (Redis's default, and ElastiCache's)
                "yes",
                "--repl-diskless-sync-delay",  # a replica syncs now, not after 5 s
                "0",
                *(("--tls-cluster", "yes", "--tls-replication", "yes") if self.tls else ()),
            ),
            tls=self.tls,
        ).start()
        self.nodes[server.port] = server
        return server.port

    def _meet(self, port: int, *, wait: bool = True) -> None:
        anchor = next(p for p in self.running_ports if p != port)
        self._run(anchor, "CLUSTER", "MEET", "127.0.0.1", port)
        if wait:
            self._wait(lambda: self._known_by_all(port), f"node {port} to be known")

    def _add_replica(self, primary: int) -> None:
        port = self._start_node()
        self._meet(port)
        primary_id = self.node_id(primary)
        self._wait(
            lambda: primary_id.encode() in self._run(port, "CLUSTER", "NODES"), "the handshake"
        )
        self._run(port, "CLUSTER", "REPLICATE", primary_id)
        self._wait(lambda: self._info(port).get("master_link_status") == "up", "replication")
        self._wait(lambda: port in self.replicas_of(primary), "the replica to be seen")

    def _known_by_all(self, port: int) -> bool:
        node_id = self.node_id(port)
        return all(node_id.encode() in self._run(p, "CLUSTER", "NODES") for p in self.running_ports)

    def _nodes_table(self) -> list[list[str]]:
        reply = self._run(self.running_ports[0], "CLUSTER", "NODES").decode()
        return [line.split() for line in reply.splitlines()]

    def _info(self, port: int) -> dict[str, Any]:
        return dict(self._client_for(port).info("replication"))

    def _cluster_info(self, port: int) -> dict[str, str]:
        text = self._run(port, "CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _client_for(self, port: int) -> Any:
        client = self._clients.get(port)
        if client is None:
            client = self._clients[port] = _client(port, self.tls)
        return client

    def _stop_node(self, port: int) -> None:
        client = self._clients.pop(port, None)
        if client is not None:
            client.close()
        self.nodes[port].stop()

    def _run(self, port: int, *command: Any) -> Any:
        return self._client_for(port).execute_command(*command)

    @staticmethod
    def _wait(condition: Any, what: str, timeout: float = SETTLE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass  # a node still starting, or just stopped
            time.sleep(0.05)
        raise TimeoutError(f"cluster: timed out waiting for {what}")
