"""``ChaosProxy``: a TCP proxy in front of a real server that fails on command, for outage tests.

    with ChaosProxy(server.host, server.port) as proxy:
        cache = Cache.from_url(proxy.url)
        proxy.blackhole()  # a partition: commands time out
        proxy.up()         # healed: pending bytes are delivered

Real sockets fail the way production does (refused connects, resets, silent partitions), which
a mock cannot. The forwarding is ``relay.Relay``'s: a selector thread in this process, or
(``process=True``) in a child process of its own, with the same API (each call a line over a
pipe): a process under test that keeps its CPU busy (hundreds of asyncio tasks) starves a
proxy thread that shares its GIL, and then measures the proxy. A mode switch returns once the
new mode is in force.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from types import TracebackType
from typing import Any
from urllib.parse import quote

from kvcache.testing import relay
from kvcache.testing.relay import SWITCH_TIMEOUT, Relay


class _Child:
    """A relay running in a child process: one JSON line per request and per reply."""

    def __init__(self, host: str, port: int, mode: str, delay: float) -> None:
        # relay.py run as a script: it needs only the standard library, so the child starts
        # in ~30 ms instead of importing kvcache (~300 ms).
        command = [sys.executable, "-I", relay.__file__, host, str(port), mode, str(delay)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lock = threading.Lock()
        self.port = int(self._reply()["port"])

    @property
    def accepted(self) -> int:
        return int(self._ask("accepted"))

    @property
    def active(self) -> int:
        return int(self._ask("active"))

    def reset_counters(self) -> None:
        self._ask("reset_counters")

    def switch(self, mode: str, delay: float = 0.0) -> None:
        self._ask("switch", mode, delay)

    def _ask(self, *request: Any) -> Any:
        with self._lock:
            assert self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
            except OSError as exc:
                raise RuntimeError("the ChaosProxy child process is gone") from exc
            return self._reply().get("value")

    def _reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the ChaosProxy child process is gone")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"ChaosProxy child: {reply['error']}")
        return reply

    def stop(self) -> None:
        """End of input: the child stops its relay and exits."""
        with self._lock, contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(SWITCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


class ChaosProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        password: str | None = None,
        process: bool = False,
    ) -> None:
        """``process``: forward in a child process (see the module's docstring)."""
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.password = password
        self.process = process
        self._lock = threading.Lock()
        self._mode = "up"
        self._delay = 0.0
        self._relay: Relay | _Child | None = None  # while started
        self._port = 0

    @property
    def host(self) -> str:
        return Relay.host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    @property
    def accepted(self) -> int:
        """Connections accepted since start (or ``reset_counters()``): spots reconnect storms."""
        started = self._relay
        return started.accepted if started is not None else 0

    @property
    def active(self) -> int:
        """Client connections open now, including those a blackhole holds."""
        started = self._relay
        return started.active if started is not None else 0

    def reset_counters(self) -> None:
        started = self._relay
        if started is not None:
            started.reset_counters()

    def __repr__(self) -> str:  # no password
        return (
            f"ChaosProxy(port={self.port}, mode={self.mode!r}, "
            f"upstream={self.upstream_host}:{self.upstream_port})"
        )

    # -- modes -------------------------------------------------------------------------------

    def up(self) -> None:
        """Forward bytes both ways; connections a blackhole held are connected upstream."""
        self._switch("up")

    def refuse(self) -> None:
        """Close every connection and the listener: connects get ECONNREFUSED until the next
        switch re-opens the same port."""
        self._switch("refuse")

    def blackhole(self) -> None:
        """A partition: connects are accepted and held, nothing is forwarded or closed, so
        clients time out. Bytes stay pending until ``up()``."""
        self._switch("blackhole")

    def reset(self) -> None:
        """RST every open connection, and every new one as soon as it is accepted."""
        self._switch("reset")

    def latency(self, ms: float) -> None:
        """Forward, but hold each server->client chunk for ``ms``: a round trip takes ``ms``
        longer."""
        if ms < 0:
            raise ValueError(f"latency must be >= 0 ms, not {ms}")
        self._switch("latency", ms / 1000)

    def _switch(self, mode: str, delay: float = 0.0) -> None:
        with self._lock:
            self._mode, self._delay = mode, delay
            started = self._relay
        if started is not None:  # (not started: start() applies it)
            started.switch(mode, delay)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ChaosProxy:
        with self._lock:
            if self._relay is not None:
                raise RuntimeError(f"ChaosProxy(port={self._port}) is already started")
            mode, delay = self._mode, self._delay
        up = self.upstream_host, self.upstream_port
        if self.process:
            started: Relay | _Child = _Child(*up, mode, delay)
        else:
            started = Relay(*up, mode, delay).start()
        self._port = started.port
        with self._lock:
            self._relay = started
        return self

    def stop(self) -> None:
        with self._lock:
            started, self._relay = self._relay, None
        if started is not None:
            started.stop()

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
