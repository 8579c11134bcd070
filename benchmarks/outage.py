"""Outage behaviour: kvcache vs redis-py, django-redis and Django's RedisCache, one proxy.

    python benchmarks/outage.py [--calls 200] [--budget 5]

A private redis-server sits behind ONE ChaosProxy; every contender talks to Redis through it
and only ever does ``get`` of a key it stored itself beforehand (so each reads its own format):

- kvcache: ``Cache.from_url(proxy.url, namespace="bench")``, default settings, ``connect()``ed;
- redis-py: ``Redis.from_url(proxy.url, socket_timeout=1, socket_connect_timeout=1)``, with
  redis-py's default retry policy (none passed: what users get);
- redis-py Redis(): the same through ``Redis(host=..., port=...)``, whose default is 10 retries
  with exponential backoff;
- django-redis: its ``RedisCache`` with SOCKET_TIMEOUT/SOCKET_CONNECT_TIMEOUT 1 s and
  ``DJANGO_REDIS_IGNORE_EXCEPTIONS = True``;
- django: Django's own ``RedisCache`` with socket_timeout/socket_connect_timeout 1 s (it raises;
  the exceptions are caught and counted).

redis-py 8's "10 retries" default is an argument of ``Redis.__init__`` that a pool built from a
URL (``from_url``, and both Django backends) does not get; the header prints the retries each
client's connections really have.

Phases, in order, the same for all: healthy (proxy up), refused, recover, blackholed, recover.
A phase switches the proxy once, then runs the contenders one after another in a shuffled order;
each makes up to ``--calls`` gets, or fewer once ``--budget`` seconds have passed for it in that
phase (checked after each call, so at least one call is always made). ``first`` is the phase's
first call; p50/p99/max are over the later calls. ``hits`` are answers equal to the stored value,
``errors`` are exceptions raised; the rest answered a default (None).

Recovery: ``proxy.up()``, then every contender is polled round-robin (shuffled order, ~5 ms
between rounds) until its get answers the stored value; the time is from the moment ``up()``
returned to the end of that get. All clocks start at the same instant, but one loop does all
the polling: a contender whose get blocks (a timeout, a retry loop) delays the polls of the
others by that long. The recovery table shows each contender's slowest poll, so such a delay is
visible; the others' figures are then upper bounds. The last lines check kvcache's outage
targets: first call into a blackhole <= op_timeout, later calls p99 <= 0.05 ms, recovery <= 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import Any

import django
import redis
from django.conf import settings as django_settings
from django.core.cache import caches

from kvcache import Cache, KVCacheSettings, State, StateChange
from kvcache.testing import ChaosProxy, RedisServer

VALUE = {"id": 12345, "name": "a typical cached object", "tags": ["a", "b", "c"], "ok": True}
KEY = "outage"
SOCKET_TIMEOUT = 1.0  # seconds, for the three redis-py based contenders
CONNECT_WAIT = 5.0  # seconds kvcache may take to become READY before the run
POLL = 0.005  # seconds between recovery polling rounds
RECOVERY_CAP = 30.0  # seconds: a contender not back by then is reported as not recovered
FAST_P99 = 0.05e-3  # seconds: kvcache's target for calls while its breaker is open
RECOVERY_TARGET = 1.0  # seconds: kvcache's target from Redis back to READY answers
# table order (runs are shuffled)
ORDER = ("kvcache", "redis-py", "redis-py Redis()", "django-redis", "django")


@dataclass
class Contender:
    name: str
    get: Callable[[], object]
    expected: object


@dataclass
class Sample:
    """One contender's calls in one phase."""

    latencies: list[float] = field(default_factory=list)  # seconds, in call order
    hits: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # exception class -> count


@dataclass
class Recovery:
    seconds: float | None = None  # None: not recovered within RECOVERY_CAP
    polls: int = 0
    errors: int = 0
    slowest: float = 0.0  # seconds: the longest single poll


@dataclass
class Phase:
    name: str
    title: str
    order: list[str]
    kvcache_state: State
    transitions: list[str]
    samples: dict[str, Sample] = field(default_factory=dict)
    recoveries: dict[str, Recovery] = field(default_factory=dict)


class StateLog:
    """kvcache's state transitions (``state`` events), timed, as they happen."""

    def __init__(self) -> None:
        self.events: list[tuple[float, StateChange]] = []

    def __call__(self, change: StateChange) -> None:
        self.events.append((time.perf_counter(), change))

    def since(self, started: float) -> list[str]:
        return [
            f"{change.previous.value} -> {change.current.value} (+{at - started:.3f} s)"
            for at, change in self.events
            if at >= started
        ]


def shuffled(items: list[Contender]) -> list[Contender]:
    return random.sample(items, len(items))


def attempt(contender: Contender) -> tuple[bool, str | None]:
    """One get: (answered the stored value?, the exception class if one was raised)."""
    try:
        value = contender.get()
    except Exception as exc:  # counted, never let out: a contender must not end the run
        return False, type(exc).__name__
    return value == contender.expected, None


def measure(contender: Contender, calls: int, budget: float) -> Sample:
    sample = Sample()
    started = time.perf_counter()
    for _ in range(calls):
        before = time.perf_counter()
        hit, error = attempt(contender)
        after = time.perf_counter()
        sample.latencies.append(after - before)
        sample.hits += hit
        if error is not None:
            sample.errors[error] += 1
        if after - started >= budget:
            break
    return sample


def recover(
    proxy: ChaosProxy, contenders: list[Contender]
) -> tuple[list[str], dict[str, Recovery]]:
    """Heal the proxy, then poll everyone round-robin until each answers the stored value;
    answers the polling order and the results."""
    results = {contender.name: Recovery() for contender in contenders}
    pending = shuffled(contenders)
    order = [contender.name for contender in pending]
    proxy.up()
    started = time.perf_counter()
    while pending and time.perf_counter() - started < RECOVERY_CAP:
        for contender in list(pending):
            result = results[contender.name]
            before = time.perf_counter()
            hit, error = attempt(contender)
            after = time.perf_counter()
            result.polls += 1
            result.errors += error is not None
            result.slowest = max(result.slowest, after - before)
            if hit:
                result.seconds = after - started
                pending.remove(contender)
        time.sleep(POLL)
    return order, results


def kvcache_contender(
    url: str, stack: contextlib.ExitStack, log: StateLog
) -> tuple[Contender, Cache]:
    cache = stack.enter_context(Cache.from_url(url, namespace="bench"))
    cache.on("state", log)
    state = cache.connect(timeout=CONNECT_WAIT)
    if state is not State.READY:
        raise RuntimeError(f"kvcache is {state.value} after {CONNECT_WAIT} s, not ready")
    if not cache.set(KEY, VALUE):
        raise RuntimeError("kvcache could not store the benchmark key")
    return Contender("kvcache", lambda: cache.get(KEY), VALUE), cache


def redis_contenders(
    proxy: ChaosProxy, stack: contextlib.ExitStack
) -> list[tuple[Contender, redis.Redis]]:
    """redis-py as ``from_url`` builds it (no retries), and as ``Redis(host, port)`` does
    (redis-py 8's default: 10 retries with exponential backoff)."""
    timeouts = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
    clients = {
        "redis-py": redis.Redis.from_url(proxy.url, **timeouts),
        "redis-py Redis()": redis.Redis(host=proxy.host, port=proxy.port, **timeouts),
    }
    payload = json.dumps(VALUE).encode()
    made = []
    for name, client in clients.items():
        stack.callback(client.close)
        client.set(f"raw:{KEY}", payload)
        made.append((Contender(name, partial(client.get, f"raw:{KEY}"), payload), client))
    return made


def django_contenders(url: str, stack: contextlib.ExitStack) -> list[Contender]:
    timeouts = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
    django_settings.configure(
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "django-redis": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": "djr",
                "OPTIONS": {key.upper(): value for key, value in timeouts.items()},
            },
            "django": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": "dj",
                "OPTIONS": timeouts,
            },
        },
        DJANGO_REDIS_IGNORE_EXCEPTIONS=True,
    )
    django.setup()
    contenders = []
    for alias in ("django-redis", "django"):
        backend = caches[alias]
        backend.set(KEY, VALUE, timeout=None)
        contenders.append(Contender(alias, getter(backend), VALUE))
    stack.callback(close_django)
    return contenders


def getter(backend: Any) -> Callable[[], object]:
    return lambda: backend.get(KEY)


def close_django() -> None:
    """Drop the pools' connections: neither backend's close() does so by default."""
    with contextlib.suppress(Exception):
        caches["django-redis"].client.do_close_clients()
    with contextlib.suppress(Exception):
        for pool in caches["django"]._cache._pools.values():
            pool.disconnect()


def django_clients() -> dict[str, redis.Redis]:
    """The redis-py clients the Django backends use (to report their retry policy)."""
    return {
        "django-redis": caches["django-redis"].client.get_client(write=False),
        "django": caches["django"]._cache.get_client(),
    }


def retries(client: redis.Redis) -> int:
    """How many times redis-py retries a failed command on this client's connections."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return int(connection.retry.get_retries())
    finally:
        pool.release(connection)


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * 1000
    if value < 10:
        return f"{value:.3f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def markdown(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(head), rule + "|", *(line(row) for row in rows)])


def phase_table(phase: Phase) -> str:
    head = ("contender", "calls", "hits", "errors", "first ms", "p50 ms", "p99 ms", "max ms")
    rows = []
    for name in ORDER:
        sample = phase.samples[name]
        later = sample.latencies[1:]
        rows.append(
            (
                name,
                str(len(sample.latencies)),
                str(sample.hits),
                str(sum(sample.errors.values())),
                ms(sample.latencies[0]),
                ms(statistics.median(later) if later else None),
                ms(p99(later) if later else None),
                ms(max(later) if later else None),
            )
        )
    lines = [f"## {phase.title}", "", markdown(head, rows), ""]
    raised = [
        f"{name}: " + ", ".join(f"{kind} x{count}" for kind, count in errors.items())
        for name in ORDER
        if (errors := phase.samples[name].errors)
    ]
    if raised:
        lines.append("errors raised: " + "; ".join(raised))
    return "\n".join([*lines, state_line(phase)])


def state_line(phase: Phase) -> str:
    moves = ", ".join(phase.transitions) or "none"
    if phase.recoveries:
        return (
            f"{phase.title}: poll order {', '.join(phase.order)}; kvcache state after it:"
            f" {phase.kvcache_state.value} (transitions since up() was called: {moves})"
        )
    return (
        f"run order: {', '.join(phase.order)}\n"
        f"kvcache state after the phase: {phase.kvcache_state.value}"
        f" (transitions since the proxy switch: {moves})\n"
    )


def recovery_table(phases: list[Phase]) -> str:
    recoveries = [phase for phase in phases if phase.recoveries]
    head: tuple[str, ...] = ("contender",)
    for phase in recoveries:
        after = phase.name.removeprefix("recover-")
        head += (f"after {after} s", "polls", "errors", "slowest poll ms")
    rows = []
    for name in ORDER:
        row: tuple[str, ...] = (name,)
        for phase in recoveries:
            result = phase.recoveries[name]
            seconds = f"> {RECOVERY_CAP:.0f}" if result.seconds is None else f"{result.seconds:.3f}"
            row += (seconds, str(result.polls), str(result.errors), ms(result.slowest))
        rows.append(row)
    lines = [
        "## recovery: seconds from up() to the first get answering the stored value",
        "",
        markdown(head, rows),
        "",
    ]
    lines += [state_line(phase) for phase in recoveries]
    return "\n".join(lines) + "\n"


def verdict(phases: list[Phase], op_timeout: float) -> str:
    """kvcache's figures against its outage targets, in plain words."""
    lines = ["## kvcache targets", ""]

    def check(what: str, seconds: float | None, target: float) -> None:
        met = seconds is not None and seconds <= target
        scale, unit = (1, "s") if target >= 1 else (1000, "ms")
        shown = "not measured" if seconds is None else f"{seconds * scale:.3f} {unit}"
        outcome = "met" if met else "MISSED"
        lines.append(f"- {what}: {shown} (target <= {target * scale:g} {unit}): {outcome}")

    for phase in phases:
        if phase.name == "blackholed":
            latencies = phase.samples["kvcache"].latencies
            check("first call into the blackhole", latencies[0], op_timeout)
            later = latencies[1:]
            check("later blackholed calls, p99", p99(later) if later else None, FAST_P99)
        elif phase.recoveries:
            check(phase.title, phase.recoveries["kvcache"].seconds, RECOVERY_TARGET)
    return "\n".join(lines)


def header(args: argparse.Namespace, server: RedisServer, proxy: ChaosProxy) -> str:
    with redis.Redis.from_url(server.url) as direct:
        info = direct.info("server")
    kv = KVCacheSettings(url=proxy.url, namespace="bench")
    return "\n".join(
        [
            "# outage benchmark: kvcache vs redis-py, django-redis, Django's RedisCache",
            "",
            f"versions: python {platform.python_version()}, kvcache {version('kvcache')},"
            f" redis-py {redis.__version__}, django {django.get_version()},"
            f" django-redis {version('django-redis')}, redis-server {info['redis_version']}",
            f"run: up to {args.calls} gets or {args.budget:g} s per contender and phase;"
            f" recovery polled every {POLL * 1000:g} ms, capped at {RECOVERY_CAP:g} s",
            f"kvcache: op_timeout {kv.op_timeout:g} s, connect_timeout {kv.connect_timeout:g} s,"
            f" retry_base {kv.retry_base:g} s, retry_max {kv.retry_max:g} s,"
            f" fallback {kv.fallback}, throw_on_errors {kv.throw_on_errors}",
            f"redis-py, django-redis, django: socket_timeout {SOCKET_TIMEOUT:g} s,"
            f" socket_connect_timeout {SOCKET_TIMEOUT:g} s; django-redis IGNORE_EXCEPTIONS True",
            "",
        ]
    )


def retry_line(clients: dict[str, redis.Redis]) -> str:
    described = ", ".join(f"{name} {retries(client)}" for name, client in clients.items())
    return f"redis-py retries per failed command (as configured by default): {described}\n"


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> Iterator[str]:
    server = RedisServer()
    stack.callback(server.stop)  # registered first: a Ctrl-C inside start() still stops it
    server.start()
    proxy = ChaosProxy(server.host, server.port)
    stack.callback(proxy.stop)
    proxy.start()
    log = StateLog()
    kvcache, cache = kvcache_contender(proxy.url, stack, log)
    raw = redis_contenders(proxy, stack)
    contenders = [kvcache, *(c for c, _ in raw), *django_contenders(proxy.url, stack)]
    yield header(args, server, proxy)
    yield retry_line({c.name: client for c, client in raw} | django_clients())
    plan: list[tuple[str, str, Callable[[], None] | None]] = [
        ("healthy", "healthy (proxy up)", proxy.up),
        ("refused", "refused (proxy.refuse(): connects get ECONNREFUSED)", proxy.refuse),
        ("recover-refused", "recover after refused", None),
        ("blackholed", "blackholed (proxy.blackhole(): nothing answers)", proxy.blackhole),
        ("recover-blackholed", "recover after blackholed", None),
    ]
    phases = []
    for name, title, switch in plan:
        print(f"phase {name} ...", file=sys.stderr, flush=True)
        if switch is None:
            started = time.perf_counter()
            order, recoveries = recover(proxy, contenders)
            phase = Phase(name, title, order, cache.state, log.since(started), {}, recoveries)
        else:
            switch()
            started = time.perf_counter()
            runs = shuffled(contenders)
            samples = {c.name: measure(c, args.calls, args.budget) for c in runs}
            moves = log.since(started)
            phase = Phase(name, title, [c.name for c in runs], cache.state, moves, samples)
            yield phase_table(phase)
        phases.append(phase)
    yield recovery_table(phases)
    yield verdict(phases, KVCacheSettings(url=proxy.url, namespace="bench").op_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="gets per contender and phase")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per contender/phase")
    args = parser.parse_args()
    if args.calls < 1 or args.budget <= 0:
        parser.error("--calls must be >= 1 and --budget > 0")
    logging.getLogger("kvcache").addHandler(logging.NullHandler())  # we report states ourselves
    try:
        with contextlib.ExitStack() as stack:  # closes clients, then the proxy, then the server
            for part in run(args, stack):
                print(part, flush=True)
    except KeyboardInterrupt:
        print("interrupted: clients, proxy and redis-server stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
