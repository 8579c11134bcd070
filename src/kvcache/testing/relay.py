"""The relay behind ``ChaosProxy``: a TCP proxy that fails on command. Standard library only:
``ChaosProxy(..., process=True)`` runs this file as a script (``python -I relay.py host port
mode delay``, driven by JSON lines on stdin), which starts in ~30 ms instead of importing
kvcache (~300 ms).

One selector thread owns every socket, so a mode switch never races a pump; ``switch()``
returns once the new mode is in force.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque

SWITCH_TIMEOUT = 5.0  # seconds a mode switch or stop() waits for the proxy thread
REBIND_TIMEOUT = 1.0  # seconds to get the port back after refuse()
CHUNK = 65536
MAX_PENDING = 1 << 20  # bytes buffered per direction before reading that side pauses

_WAKE = object()
_LISTEN = object()


class _Link:
    """One proxied connection. Queues hold ``(due, bytes)``: nothing is sent before ``due``."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.connected = False
        self.closed = False
        self.to_upstream: deque[tuple[float, bytes]] = deque()
        self.to_client: deque[tuple[float, bytes]] = deque()
        self.pending = {"client": 0, "upstream": 0}  # queued bytes, keyed by reading side
        self.eof = {"client": False, "upstream": False}  # that side sent FIN
        self.shut = {"client": False, "upstream": False}  # we sent FIN to that side


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle: honest timings


class Relay:
    """Forwards 127.0.0.1:``port`` to the upstream, in the mode last switched to: ``up``,
    ``refuse``, ``blackhole``, ``reset`` or ``latency`` (with ``delay`` seconds)."""

    host = "127.0.0.1"

    def __init__(
        self, upstream_host: str, upstream_port: int, mode: str = "up", delay: float = 0.0
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._port = 0
        self._cond = threading.Condition()
        self._mode = mode
        self._delay = delay
        self._requested = 0  # generation of the last mode switch asked for ...
        self._applied = 0  # ... and of the last one in force
        self._error: OSError | None = None
        self._stopping = False
        self._accepted = 0
        self._active = 0
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._upstream_addr: tuple[socket.AddressFamily, tuple[str, int]] | None = None
        self._selector: selectors.BaseSelector  # these belong to the proxy thread
        self._links: list[_Link] = []
        self._running = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def accepted(self) -> int:
        with self._cond:
            return self._accepted

    @property
    def active(self) -> int:
        with self._cond:
            return self._active

    def reset_counters(self) -> None:
        with self._cond:
            self._accepted = 0

    def __repr__(self) -> str:
        return (
            f"Relay(port={self._port}, mode={self._mode!r}, "
            f"upstream={self.upstream_host}:{self.upstream_port})"
        )

    def switch(self, mode: str, delay: float = 0.0) -> None:
        with self._cond:
            self._mode, self._delay = mode, delay
            self._requested += 1
            started = self._thread is not None
        if started:  # (not started: start() applies it)
            self._wait_applied()

    def _wait_applied(self) -> None:
        self._wake()
        with self._cond:
            generation = self._requested
            done = self._cond.wait_for(
                lambda: self._applied >= generation or not self._running, SWITCH_TIMEOUT
            )
            error, self._error = self._error, None
            died = self._applied < generation and not self._stopping
        if error is not None:
            raise RuntimeError(f"{self!r} could not re-open its port") from error
        if not done or died:
            raise RuntimeError(f"{self!r} did not switch mode: its thread is stuck or dead")

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: stopped
                self._wake_w.send(b"\0")

    def start(self) -> Relay:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already started")
        family, _, _, _, address = socket.getaddrinfo(
            self.upstream_host, self.upstream_port, type=socket.SOCK_STREAM
        )[0]
        self._upstream_addr = (family, (str(address[0]), int(address[1])))
        self._listener = self._bind(0)
        self._port = int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._links = []
        with self._cond:
            self._stopping = False
            self._running = True
            self._accepted = self._active = 0
            self._requested += 1  # apply the current mode (it may be set before start)
            self._thread = threading.Thread(
                target=self._run, name=f"kvcache-chaos-{self._port}", daemon=True
            )
            self._thread.start()
        self._wait_applied()
        return self

    def stop(self) -> None:
        with self._cond:
            thread, self._stopping = self._thread, True
        if thread is None:
            return
        self._wake()
        thread.join(SWITCH_TIMEOUT)
        with self._cond:
            self._thread = None
        if self._wake_w is not None:
            self._wake_w.close()
            self._wake_w = None

    # -- the proxy thread: owns the listener and every connection ----------------------------

    def _bind(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        return listener

    def _run(self) -> None:
        assert self._wake_r is not None
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        try:
            while True:
                with self._cond:
                    mode, delay, generation = self._mode, self._delay, self._requested
                    stopping = self._stopping
                if stopping:
                    break
                if generation != self._applied:
                    error = self._apply(mode)
                    with self._cond:
                        self._applied, self._error = generation, error
                        self._cond.notify_all()
                timeout = self._arm(mode)
                for key, events in self._selector.select(timeout):
                    self._dispatch(key.data, events, mode, delay)
        finally:
            for link in list(self._links):
                self._close(link)
            self._close_listener()
            self._selector.close()
            self._wake_r.close()
            with self._cond:
                self._running = False
                self._cond.notify_all()

    def _apply(self, mode: str) -> OSError | None:
        if mode == "refuse":
            for link in list(self._links):
                self._close(link)
            self._close_listener()
            return None
        if mode == "reset":
            for link in list(self._links):
                self._close(link, abort=True)
        elif mode in ("up", "latency"):
            for link in list(self._links):
                if link.upstream is None:
                    self._connect(link)
        if self._listener is None:
            deadline = time.monotonic() + REBIND_TIMEOUT
            while True:
                try:
                    self._listener = self._bind(self._port)
                    break
                except OSError as error:
                    if time.monotonic() > deadline:
                        return error
                    time.sleep(0.01)
        return None

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._want(self._listener, 0, _LISTEN)
            self._listener.close()
            self._listener = None

    def _want(self, sock: socket.socket, events: int, data: object) -> None:
        """Make the selector watch ``sock`` for exactly ``events``."""
        try:
            key = self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, data)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events:
            self._selector.modify(sock, events, data)

    def _arm(self, mode: str) -> float | None:
        """Set what to watch for the next select, and return how long it may sleep."""
        if self._listener is not None:
            self._want(self._listener, selectors.EVENT_READ, _LISTEN)
        forwarding = mode in ("up", "latency")
        now = time.monotonic()
        timeout: float | None = None
        for link in list(self._links):
            client_events = upstream_events = 0
            if forwarding:
                if link.connected:
                    self._finish_half_closes(link)
                    if link.closed:
                        continue
                if not link.eof["client"] and link.pending["client"] < MAX_PENDING:
                    client_events |= selectors.EVENT_READ
                if not link.connected:
                    upstream_events |= selectors.EVENT_WRITE  # connect completion
                else:
                    if not link.eof["upstream"] and link.pending["upstream"] < MAX_PENDING:
                        upstream_events |= selectors.EVENT_READ
                    for queue, to_client in ((link.to_upstream, False), (link.to_client, True)):
                        if not queue:
                            continue
                        due = queue[0][0]
                        if due > now:
                            timeout = due - now if timeout is None else min(timeout, due - now)
                        elif to_client:
                            client_events |= selectors.EVENT_WRITE
                        else:
                            upstream_events |= selectors.EVENT_WRITE
            self._want(link.client, client_events, (link, "client"))
            if link.upstream is not None:
                self._want(link.upstream, upstream_events, (link, "upstream"))
        return timeout

    def _finish_half_closes(self, link: _Link) -> None:
        """Pass a FIN on once everything before it is delivered; close when both sides are done."""
        for side, other, queue in (
            ("client", "upstream", link.to_upstream),
            ("upstream", "client", link.to_client),
        ):
            if link.eof[side] and not queue and not link.shut[other]:
                sock = link.upstream if other == "upstream" else link.client
                assert sock is not None
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self._close(link)
                    return
                link.shut[other] = True
        if link.shut["client"] and link.shut["upstream"]:
            self._close(link)

    def _dispatch(self, data: object, events: int, mode: str, delay: float) -> None:
        if data is _WAKE:
            assert self._wake_r is not None
            try:
                while self._wake_r.recv(CHUNK):
                    pass
            except BlockingIOError:
                pass
        elif data is _LISTEN:
            self._accept(mode)
        else:
            assert isinstance(data, tuple)
            link, side = data
            if link.closed:  # closed earlier in this round
                return
            if side == "upstream" and not link.connected:
                self._connected(link)
                return
            if events & selectors.EVENT_WRITE:
                self._send(link, side)
            if events & selectors.EVENT_READ and not link.closed:
                self._recv(link, side, delay if mode == "latency" else 0.0)

    def _accept(self, mode: str) -> None:
        for _ in range(64):  # then give the connections a turn
            if self._listener is None:
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED: the client gave up already
                continue
            with self._cond:
                self._accepted += 1
            if mode == "reset":
                _abort(sock)
                continue
            _tune(sock)
            link = _Link(sock)
            self._links.append(link)
            with self._cond:
                self._active += 1
            if mode in ("up", "latency"):
                self._connect(link)

    def _connect(self, link: _Link) -> None:
        assert self._upstream_addr is not None
        family, address = self._upstream_addr
        upstream = socket.socket(family, socket.SOCK_STREAM)
        _tune(upstream)
        link.upstream = upstream
        error = upstream.connect_ex(address)
        if error == 0:
            link.connected = True
        elif error not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EINTR):
            self._close(link)

    def _connected(self, link: _Link) -> None:
        assert link.upstream is not None
        if link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._close(link)  # upstream down: the client sees its connection closed
        else:
            link.connected = True

    def _recv(self, link: _Link, side: str, delay: float) -> None:
        sock = link.client if side == "client" else link.upstream
        assert sock is not None
        try:
            chunk = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(link)
            return
        if not chunk:
            link.eof[side] = True
            return
        if side == "client":
            link.to_upstream.append((time.monotonic(), chunk))
        else:
            link.to_client.append((time.monotonic() + delay, chunk))
        link.pending[side] += len(chunk)

    def _send(self, link: _Link, side: str) -> None:
        """Send what is due to ``side``."""
        sock = link.client if side == "client" else link.upstream
        queue, source = (
            (link.to_client, "upstream") if side == "client" else (link.to_upstream, "client")
        )
        assert sock is not None
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            due, chunk = queue[0]
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(link)
                return
            link.pending[source] -= sent
            if sent < len(chunk):
                queue[0] = (due, chunk[sent:])
                return
            queue.popleft()

    def _close(self, link: _Link, *, abort: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.remove(link)
        for sock in (link.client, link.upstream):
            if sock is not None:
                self._want(sock, 0, None)
                if abort:
                    _abort(sock)
                else:
                    sock.close()
        with self._cond:
            self._active -= 1


def _serve_as_child(host: str, port: int, mode: str, delay: float) -> None:
    """The child's side of ``ChaosProxy(process=True)``: a relay, driven by JSON lines on
    stdin, one reply line each; end of input stops it."""
    relay = Relay(host, port, mode, delay).start()
    try:
        print(json.dumps({"port": relay.port}), flush=True)
        for line in sys.stdin:
            name, *args = json.loads(line)
            value = None
            try:
                if name == "switch":
                    relay.switch(*args)
                elif name == "reset_counters":
                    relay.reset_counters()
                elif name in ("accepted", "active"):
                    value = getattr(relay, name)
                else:
                    raise ValueError(f"no such request: {name!r}")
            except Exception as exc:
                print(json.dumps({"error": repr(exc)}), flush=True)
            else:
                print(json.dumps({"value": value}), flush=True)
    finally:
        relay.stop()


if __name__ == "__main__":
    _serve_as_child(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
