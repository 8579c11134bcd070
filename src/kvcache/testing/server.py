"""``RedisServer``: a private ``redis-server`` process on a free loopback port.

    with RedisServer() as server:
        cache = Cache.from_url(server.url)

Nothing is persisted (no RDB, no AOF) and the process is stopped on exit, even when the
test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvcache.testing.tls import TLSFiles

START_TIMEOUT = 10.0  # seconds for the server to answer PING
READY_LINE = "Ready to accept connections"  # redis-server's log, once it listens


class RedisServerNotFound(RuntimeError):
    """No ``redis-server`` binary: install it (``apt-get install redis-server``) or set
    ``KVCACHE_REDIS_SERVER`` to its path."""


def find_redis_server() -> str:
    """The ``redis-server`` binary: ``$KVCACHE_REDIS_SERVER`` if set, else the one on PATH."""
    explicit = os.environ.get("KVCACHE_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RedisServerNotFound(f"KVCACHE_REDIS_SERVER={explicit} is not an executable")
        return explicit
    found = shutil.which("redis-server")
    if not found:
        raise RedisServerNotFound(RedisServerNotFound.__doc__)
    return found


def free_port(*, with_bus: bool = False) -> int:
    """A free port; ``with_bus``: whose port + 10000 (a cluster node's bus) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 <= 65535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _ready(log: str) -> bool:
    """Has the server said it accepts connections? Asked before the first PING: a TLS
    handshake that a server still starting cuts short leaks its socket (Python's SSLSocket
    keeps the descriptor, unclosed, when its connect check fails), and the ResourceWarning
    of that socket's collection fails whichever test it lands in."""
    try:
        with open(log, encoding="utf-8", errors="replace") as file:
            return READY_LINE in file.read()
    except FileNotFoundError:
        return False


def _tail(log: str, lines: int = 5) -> str:
    """The last lines of the server's log (why it did not start), for the error."""
    try:
        with open(log, encoding="utf-8", errors="replace") as file:
            return " | ".join(line.strip() for line in file.readlines()[-lines:]) or "nothing"
    except FileNotFoundError:
        return "nothing (no log)"


def _ping(port: int, password: str | None, tls: TLSFiles | None) -> bool:
    client = redis.Redis(
        port=port,
        password=password,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        **(tls.client_options() if tls else {}),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:  # not listening yet, or still loading
        return False
    finally:
        client.close()


class RedisServer:
    def __init__(
        self,
        *,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        """``port``: a given port (e.g. to restart a server where its clients expect it);
        by default a free one. ``tls``: serve TLS only, on that port (``rediss://``)."""
        self.password = password
        self.extra_args = extra_args
        self.tls = tls
        self._requested_port = port
        self.port = port or 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/0?{self.tls.url_query()}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client for this server (TLS and password included)."""
        tls = self.tls.client_options() if self.tls else {}
        return redis.Redis(port=self.port, password=self.password, **tls, **options)

    def __repr__(self) -> str:  # no password
        state = "running" if self.running else "stopped"
        return f"RedisServer(port={self.port}, {state})"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        binary = find_redis_server()
        self._dir = tempfile.TemporaryDirectory(prefix="kvcache-redis-")
        config = os.path.join(self._dir.name, "redis.conf")
        log = os.path.join(self._dir.name, "redis.log")
        with open(config, "w") as file:  # the password goes here, not on the command line (ps)
            file.write('save ""\nappendonly no\nbind 127.0.0.1\n')
            file.write(f"dir {self._dir.name}\nlogfile {log}\n")
            if self.password:
                escaped = self.password.replace("\\", "\\\\").replace('"', '\\"')
                file.write(f'requirepass "{escaped}"\n')
        # Extra args that quiet or move the log hide the "ready" line: then PING alone says.
        watch_log = not {"--loglevel", "--logfile"} & set(self.extra_args)
        cluster = "--cluster-enabled" in self.extra_args
        for _attempt in range(5):  # the free port may be taken between probe and bind
            self.port = self._requested_port or free_port(with_bus=cluster)
            ports: tuple[str, ...] = ("--port", str(self.port))
            if self.tls:
                ports = ("--port", "0", "--tls-port", str(self.port), *self.tls.server_args())
            for name in os.listdir(self._dir.name):  # a failed attempt's log and nodes.conf
                if name != "redis.conf":
                    os.remove(os.path.join(self._dir.name, name))
            self._process = subprocess.Popen(
                [binary, config, *ports, *self.extra_args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._process.poll() is None:
                if (not watch_log or _ready(log)) and _ping(self.port, self.password, self.tls):
                    return self
                time.sleep(0.02)
            self._kill()
        said = _tail(log)
        self.stop()
        raise RuntimeError(f"redis-server ({binary}) did not start on a free port; it said: {said}")

    def _kill(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None

    def crash(self) -> None:
        """SIGKILL, as a crash (kill -9): no shutdown, no goodbye to clients or peers."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> RedisServer:
        """Start again on the same port (after ``crash`` or ``stop``), empty: where its
        clients expect it, as a restarted server without persistence."""
        self.stop()
        self._requested_port = self.port
        return self.start()

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
