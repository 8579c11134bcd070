"""``kvcache demo``: graceful degradation, shown. A private ``redis-server`` runs behind a
ChaosProxy; worker threads drive a read-heavy mix through one ``Cache``; the proxy refuses
connections, comes back, blackholes them (a partition), comes back. Each second one line:
ops/s, p50/p99 latency, the state, and where reads were answered. At the end, a summary
per phase, including reads that answered a value older than one this process wrote (stale
reads: there should be none).
"""

from __future__ import annotations

import contextlib
import logging
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from kvcache._core.state import State
from kvcache._redis.url import redact_url
from kvcache._shells.cache import Cache
from kvcache.testing import ChaosProxy, RedisServer, RedisServerNotFound

KEYS_PER_WORKER = 200
WRITE_EVERY = 10  # one write per ten calls: a read-heavy web mix

# (name, proxy mode, share of the run)
PHASES: tuple[tuple[str, str, float], ...] = (
    ("healthy", "up", 0.25),
    ("refused", "refuse", 0.20),
    ("back", "up", 0.15),
    ("partition", "blackhole", 0.20),
    ("back", "up", 0.20),
)


@dataclass
class Second:
    """What happened in one second of the run."""

    t: int
    phase: str
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    hits: int = 0
    fallback_hits: int = 0
    misses: int = 0
    fallback_misses: int = 0
    stale: int = 0
    raised: int = 0
    states: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    @property
    def state(self) -> str:
        """The worst state seen in the second."""
        for state in ("degraded", "starting", "closed"):
            if state in self.states:
                return state
        return self.states[-1] if self.states else "?"


@dataclass
class Demo:
    seconds: list[Second]
    final: State  # after Redis came back for good

    @property
    def ok(self) -> bool:
        """Back to READY, no stale read, nothing raised to a caller."""
        clean = not any(s.stale or s.raised for s in self.seconds)
        return clean and self.final is State.READY


class _Lines(logging.Handler):
    """The cache's own log lines (one per transition), shown under the second they came in."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.pending.append(record.getMessage())

    def drain(self) -> list[str]:
        lines, self.pending = self.pending, []
        return lines


@contextlib.contextmanager
def _captured_logs() -> Iterator[_Lines]:
    logger = logging.getLogger("kvcache")
    handler = _Lines()
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved


class _Traffic:
    """Worker threads; each owns its keys and remembers the last version it wrote to each,
    so a read of an older version is a stale read."""

    def __init__(self, cache: Cache, workers: int) -> None:
        self.cache = cache
        self.workers = workers
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.current: Second | None = None

    def run(self, worker: int) -> None:
        cache = self.cache
        pick = random.Random(worker).randrange
        written: dict[str, int] = {}
        version = 0
        n = 0
        while not self.stop.is_set():
            key = f"w{worker}:k{pick(KEYS_PER_WORKER)}"
            n += 1
            started = time.perf_counter()
            raised = stale = 0
            try:
                if n % WRITE_EVERY == 0:
                    version += 1
                    if cache.set(key, version, ttl=300):
                        written[key] = version
                    else:
                        written.pop(key, None)
                else:
                    value = cache.get(key)
                    if value is not None and value < written.get(key, 0):
                        stale = 1
            except Exception:  # the demo's point is that this never happens
                raised = 1
            elapsed = time.perf_counter() - started
            with self.lock:
                second = self.current
                if second is not None:
                    second.ops += 1
                    second.latencies.append(elapsed)
                    second.stale += stale
                    second.raised += raised


def _collect(second: Second, cache: Cache, before: dict[str, int]) -> dict[str, int]:
    now = cache.stats.as_dict()
    for name in ("hits", "misses", "fallback_hits", "fallback_misses"):
        setattr(second, name, now[name] - before[name])
    return now


def _line(second: Second, total: int) -> str:
    reads = second.hits + second.misses + second.fallback_hits + second.fallback_misses
    memory = second.fallback_hits + second.fallback_misses
    share = f"{100 * memory / reads:5.1f}%" if reads else "    -"
    return (
        f"{second.t:>3}/{total}s {second.phase:<10} {second.ops:>7} ops/s  "
        f"p50 {second.percentile(50):7.2f} ms  p99 {second.percentile(99):7.2f} ms  "
        f"{second.state:<9} redis hits {second.hits:>6}  memory {share}  "
        f"stale {second.stale}  raised {second.raised}"
    )


def _progress(t: float, total: int, phase: str, width: int = 30) -> str:
    done = min(width, int(width * t / total))
    return f"\r[{'#' * done}{'.' * (width - done)}] {t:5.1f}/{total}s  {phase:<10}"


@contextlib.contextmanager
def _target(url: str | None, out: TextIO) -> Iterator[tuple[str, ChaosProxy | None]]:
    """The URL the cache uses, and the proxy in front of Redis (None: the memory store)."""
    if url:
        from kvcache._redis.factory import at_address

        if not url.lower().startswith("redis://"):
            raise SystemExit("kvcache demo --url takes a redis:// URL (the proxy cannot speak TLS)")
        host, port = _host_port(url)
        with ChaosProxy(host, port) as proxy:
            print(f"Using the Redis at {redact_url(url)}, through a ChaosProxy", file=out)
            yield at_address(url, "127.0.0.1", proxy.port), proxy
        return
    try:
        server = RedisServer().start()
    except RedisServerNotFound:
        print(
            "redis-server not found (install it, or set KVCACHE_REDIS_SERVER): running on the\n"
            "in-memory store instead; there is no Redis to cut, so the timeline stays healthy.",
            file=out,
        )
        yield "memory://", None
        return
    try:
        with ChaosProxy(server.host, server.port, password=server.password) as proxy:
            print(f"Started a private redis-server on 127.0.0.1:{server.port}", file=out)
            print(f"behind a ChaosProxy on 127.0.0.1:{proxy.port}", file=out)
            yield proxy.url, proxy
    finally:
        server.stop()
        print("Stopped the private redis-server", file=out)


def _host_port(url: str) -> tuple[str, int]:
    from kvcache._redis.factory import seed_address
    from kvcache.settings import KVCacheSettings

    return seed_address(KVCacheSettings(url=url))


def run(
    duration: float = 30.0,
    *,
    url: str | None = None,
    workers: int = 4,
    plot: str | None = None,
    out: TextIO = sys.stdout,
) -> Demo:
    """Run the demonstration; returns its timeline and the state it ended in."""
    total = max(len(PHASES), round(duration))
    schedule: list[tuple[str, str]] = []  # second -> (phase, proxy mode)
    for name, mode, share in PHASES:
        schedule += [(name, mode)] * max(1, round(share * total))
    schedule = (schedule + [schedule[-1]] * total)[:total]
    live = out.isatty()
    timeline: list[Second] = []
    with (
        _captured_logs() as logs,
        _target(url, out) as (target, proxy),
        Cache.from_url(target, namespace="demo") as cache,
    ):
        state = cache.connect(timeout=5)
        print(f"Cache: {cache!r} ({state.value})", file=out)
        print(f"{workers} threads, 1 write per {WRITE_EVERY} calls, {total} s:", file=out)
        traffic = _Traffic(cache, workers)
        threads = [
            threading.Thread(target=traffic.run, args=(i,), daemon=True) for i in range(workers)
        ]
        stats = cache.stats.as_dict()
        started = time.monotonic()
        for t, (phase, mode) in enumerate(schedule, start=1):
            if proxy is not None and proxy.mode != mode:
                getattr(proxy, mode)()
            second = Second(t, phase)
            with traffic.lock:
                traffic.current = second
            if t == 1:
                for thread in threads:
                    thread.start()
            end = started + t
            while (now := time.monotonic()) < end:
                second.states.append(cache.state.value)
                if live:
                    out.write(_progress(now - started, total, phase))
                    out.flush()
                time.sleep(min(0.1, max(0.0, end - now)))
            with traffic.lock:
                traffic.current = None
            stats = _collect(second, cache, stats)
            timeline.append(second)
            print(("\r" if live else "") + _line(second, total), file=out)
            for message in logs.drain():
                print(f"      log: {message}", file=out)
        traffic.stop.set()
        for thread in threads:
            thread.join(5)
        if proxy is not None:
            proxy.up()
        final = cache.connect(timeout=5)
        cache.clear()  # the demo's keys (namespace "demo"), on a given Redis too
    _summary(timeline, final, out)
    if plot:
        write_plot(timeline, plot)
        print(f"Timeline written to {plot}", file=out)
    return Demo(timeline, final)


def _summary(timeline: list[Second], final: State, out: TextIO) -> None:
    print(
        "\nPhase        ops/s (median)   worst p99 ms   slowest ms   memory reads   stale   raised",
        file=out,
    )
    index = 0
    while index < len(timeline):
        phase = timeline[index].phase  # a run of seconds in one phase
        group = []
        while index < len(timeline) and timeline[index].phase == phase:
            group.append(timeline[index])
            index += 1
        memory = sum(s.fallback_hits + s.fallback_misses for s in group)
        print(
            f"{phase:<12} {statistics.median(s.ops for s in group):>14,.0f}"
            f" {max(s.percentile(99) for s in group):>14.2f}"
            f" {max(max(s.latencies, default=0) for s in group) * 1e3:>12.2f} {memory:>14,}"
            f" {sum(s.stale for s in group):>7} {sum(s.raised for s in group):>8}",
            file=out,
        )
    stale = sum(s.stale for s in timeline)
    raised = sum(s.raised for s in timeline)
    print(
        f"\nFinal state: {final.value}. Stale reads: {stale}. Exceptions raised to callers: "
        f"{raised}.",
        file=out,
    )


def write_plot(timeline: list[Second], path: str) -> None:
    """The timeline as a picture: ops/s, p50/p99 latency, and the share of reads served
    from memory, with the outage phases shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'kvcache[demo]'") from None
    t = [s.t for s in timeline]
    figure, (ops, latency, memory) = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    ops.plot(t, [s.ops for s in timeline], color="tab:blue")
    ops.set_ylabel("ops/s")
    latency.plot(t, [max(s.percentile(50), 1e-3) for s in timeline], label="p50")
    latency.plot(t, [max(s.percentile(99), 1e-3) for s in timeline], label="p99")
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper right")
    shares = []
    for s in timeline:
        reads = s.hits + s.misses + s.fallback_hits + s.fallback_misses
        shares.append(100 * (s.fallback_hits + s.fallback_misses) / reads if reads else 0)
    memory.plot(t, shares, color="tab:orange")
    memory.set_ylabel("reads from memory (%)")
    memory.set_xlabel("seconds")
    memory.set_ylim(-5, 105)
    outages = [s.t for s in timeline if s.phase in ("refused", "partition")]
    for axis in (ops, latency, memory):
        for end in outages:  # each second of an outage is the span (end-1, end]
            axis.axvspan(end - 1, end, color="tab:red", alpha=0.1, linewidth=0)
    shown: dict[str, int] = {}
    for second in timeline:
        shown.setdefault(second.phase, second.t)
    for phase, start in shown.items():
        ops.annotate(phase, (start, 0), xytext=(2, 2), textcoords="offset points", fontsize=8)
    figure.suptitle("kvcache demo: Redis refused, then partitioned (shaded), then back")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main_args(args: Any) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install 'kvcache[demo]'", file=sys.stderr)
            return 2
    done = run(args.duration, url=args.url, workers=args.workers, plot=args.plot)
    return 0 if done.ok else 1
