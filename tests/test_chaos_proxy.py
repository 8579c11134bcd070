"""ChaosProxy against a real redis-server: each mode fails the way a real network does."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvcache.testing import ChaosProxy, RedisServer
from kvcache.testing.chaos import _Child
from kvcache.testing.server import free_port

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


@pytest.fixture(params=["thread", "process"])
def chaos_proxy(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ChaosProxy]:
    """Every mode test twice: the proxy's thread in this process, and in a child process."""
    process = request.param == "process"
    with ChaosProxy(
        redis_server.host, redis_server.port, password=redis_server.password, process=process
    ) as proxy:
        yield proxy


@pytest.fixture
def connect(
    chaos_proxy: ChaosProxy,
) -> Iterator[Callable[..., redis.Redis]]:
    """Fast-failing redis-py clients to the proxy, closed after the test."""
    made: list[redis.Redis] = []

    def connect(timeout: float = 0.2) -> redis.Redis:
        client = redis.Redis(
            host=chaos_proxy.host,
            port=chaos_proxy.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


@pytest.fixture
def raw(chaos_proxy: ChaosProxy) -> Iterator[Callable[[], socket.socket]]:
    """Plain sockets to the proxy, for what redis-py hides (pending bytes, RST, FIN)."""
    made: list[socket.socket] = []

    def raw() -> socket.socket:
        sock = socket.create_connection((chaos_proxy.host, chaos_proxy.port), timeout=1)
        made.append(sock)
        return sock

    yield raw
    for sock in made:
        sock.close()


def wait_until(condition: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def chaos_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kvcache-chaos")]


def test_up_forwards_both_ways(
    chaos_proxy: ChaosProxy, connect: Callable[..., redis.Redis]
) -> None:
    assert chaos_proxy.mode == "up"
    client = connect()
    assert client.set("chaos:k", b"v")
    assert client.get("chaos:k") == b"v"
    assert chaos_proxy.accepted == 1
    assert chaos_proxy.active == 1


def test_refuse_closes_the_port_and_up_reopens_it(
    chaos_proxy: ChaosProxy, connect: Callable[..., redis.Redis], raw: Callable[[], socket.socket]
) -> None:
    port = chaos_proxy.port
    held = raw()
    chaos_proxy.refuse()
    assert chaos_proxy.mode == "refuse"
    assert held.recv(100) == b""  # open connections are closed
    assert chaos_proxy.active == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((chaos_proxy.host, port), timeout=1).close()

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as failed:
        connect(timeout=2.0).ping()
    # Refused at once, not timed out: generous, a loaded CI machine once took > 0.15 s.
    assert time.monotonic() - started < 1.0
    assert caused_by(failed.value, ConnectionRefusedError)

    chaos_proxy.up()
    assert chaos_proxy.port == port
    assert connect().ping()


def test_refuse_then_every_other_mode_reopens_the_listener(
    chaos_proxy: ChaosProxy, raw: Callable[[], socket.socket]
) -> None:
    for reopen in (chaos_proxy.blackhole, chaos_proxy.reset, lambda: chaos_proxy.latency(1)):
        chaos_proxy.refuse()
        reopen()
        accepted = chaos_proxy.accepted
        with contextlib.suppress(ConnectionResetError):  # reset may beat connect() returning
            raw()
        assert wait_until(lambda n=accepted + 1: chaos_proxy.accepted == n)
    chaos_proxy.up()
    sock = raw()
    sock.sendall(PING)
    assert sock.recv(100) == PONG


def test_blackhole_times_out_and_up_heals(
    chaos_proxy: ChaosProxy, connect: Callable[..., redis.Redis]
) -> None:
    existing = connect()
    assert existing.ping()
    chaos_proxy.blackhole()
    assert chaos_proxy.mode == "blackhole"

    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        existing.get("chaos:k")
    assert time.monotonic() - started >= 0.15  # waited for the timeout: nothing was closed

    accepted = chaos_proxy.accepted
    with pytest.raises(redis.TimeoutError):
        connect().ping()
    assert chaos_proxy.accepted > accepted  # the connect itself succeeded

    chaos_proxy.up()
    assert connect().ping()


def test_blackhole_holds_bytes_and_delivers_them_on_up(
    chaos_proxy: ChaosProxy, raw: Callable[[], socket.socket]
) -> None:
    before = raw()
    before.sendall(PING)
    assert before.recv(100) == PONG
    chaos_proxy.blackhole()
    during = raw()
    assert wait_until(lambda: chaos_proxy.accepted == 2)
    before.sendall(PING)
    during.sendall(PING)
    assert not readable(before, 0.2)
    assert not readable(during, 0.0)
    assert chaos_proxy.active == 2  # held, not closed

    chaos_proxy.up()
    for sock in (before, during):
        assert readable(sock, 1.0)
        assert sock.recv(100) == PONG


def test_reset_fails_fast_with_a_connection_error(
    chaos_proxy: ChaosProxy, connect: Callable[..., redis.Redis], raw: Callable[[], socket.socket]
) -> None:
    existing = connect(timeout=1.0)
    assert existing.ping()
    sock = raw()
    chaos_proxy.reset()
    assert chaos_proxy.mode == "reset"
    assert chaos_proxy.active == 0

    with pytest.raises(ConnectionResetError):
        sock.recv(100)  # an RST, not a FIN (which would read b"")

    for client in (existing, connect(timeout=1.0)):
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError) as failed:
            client.get("chaos:k")
        assert time.monotonic() - started < 0.15
        assert not isinstance(failed.value, redis.TimeoutError)

    accepted = chaos_proxy.accepted
    with pytest.raises(ConnectionResetError):
        raw().recv(100)  # new connections are accepted, then reset at once
    assert chaos_proxy.accepted > accepted
    assert chaos_proxy.active == 0

    chaos_proxy.up()
    assert connect().ping()


def test_latency_delays_replies(
    chaos_proxy: ChaosProxy, connect: Callable[..., redis.Redis]
) -> None:
    client = connect(timeout=1.0)
    client.set("chaos:k", b"v")
    chaos_proxy.latency(100)
    assert chaos_proxy.mode == "latency"
    started = time.monotonic()
    assert client.get("chaos:k") == b"v"
    assert 0.09 <= time.monotonic() - started < 0.5

    chaos_proxy.up()
    started = time.monotonic()
    assert client.get("chaos:k") == b"v"
    assert time.monotonic() - started < 0.09


def test_latency_must_not_be_negative(chaos_proxy: ChaosProxy) -> None:
    with pytest.raises(ValueError, match="latency"):
        chaos_proxy.latency(-1)
    assert chaos_proxy.mode == "up"


def test_counters(chaos_proxy: ChaosProxy, raw: Callable[[], socket.socket]) -> None:
    assert (chaos_proxy.accepted, chaos_proxy.active) == (0, 0)
    first, _second = raw(), raw()
    assert wait_until(lambda: chaos_proxy.accepted == 2 and chaos_proxy.active == 2)
    first.close()
    assert wait_until(lambda: chaos_proxy.active == 1)
    chaos_proxy.reset_counters()
    assert (chaos_proxy.accepted, chaos_proxy.active) == (0, 1)  # active is a gauge
    raw()
    assert wait_until(lambda: chaos_proxy.accepted == 1 and chaos_proxy.active == 2)


def test_upstream_down_closes_the_client() -> None:
    with ChaosProxy("127.0.0.1", free_port()) as proxy:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=1)
        with sock:
            assert sock.recv(100) == b""
        assert wait_until(lambda: proxy.active == 0)
        assert proxy.accepted == 1


def test_stop_leaves_no_threads_or_sockets(redis_server: RedisServer) -> None:
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    proxy = ChaosProxy(redis_server.host, redis_server.port).start()
    assert [t.name for t in chaos_threads()] == [f"kvcache-chaos-{proxy.port}"]
    forwarded = socket.create_connection((proxy.host, proxy.port), timeout=1)
    forwarded.sendall(PING)
    assert forwarded.recv(100) == PONG
    proxy.blackhole()
    held = socket.create_connection((proxy.host, proxy.port), timeout=1)
    assert wait_until(lambda: proxy.active == 2)

    proxy.stop()
    assert chaos_threads() == []
    assert forwarded.recv(100) == b""
    assert held.recv(100) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()
    forwarded.close()
    held.close()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds
    proxy.stop()  # twice is fine


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_modes_set_before_start_apply_at_start(redis_server: RedisServer, process: bool) -> None:
    proxy = ChaosProxy(redis_server.host, redis_server.port, process=process)
    proxy.refuse()
    with proxy:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=1).close()
        proxy.up()
        with socket.create_connection((proxy.host, proxy.port), timeout=1) as sock:
            sock.sendall(PING)
            assert sock.recv(100) == PONG


def test_url_has_the_password_and_repr_does_not(redis_server: RedisServer) -> None:
    proxy = ChaosProxy(redis_server.host, redis_server.port, password="p@ss word")
    with proxy:
        assert proxy.url == f"redis://:p%40ss%20word@127.0.0.1:{proxy.port}/0"
        assert "p@ss" not in repr(proxy)
        assert "p%40ss" not in repr(proxy)
        assert str(proxy.port) in repr(proxy)


def test_process_mode_runs_in_a_child_that_stop_ends(redis_server: RedisServer) -> None:
    proxy = ChaosProxy(redis_server.host, redis_server.port, process=True)
    with proxy:
        assert chaos_threads() == []  # nothing of it in this process
        with socket.create_connection((proxy.host, proxy.port), timeout=1) as sock:
            sock.sendall(PING)
            assert sock.recv(100) == PONG
        assert proxy.accepted == 1
        child = proxy._relay
        assert isinstance(child, _Child)
    assert child._process.poll() is not None  # exited
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()
    proxy.stop()  # twice is fine
