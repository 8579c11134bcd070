"""Telemetry overhead: the same get/set with telemetry disabled, with opentelemetry-api alone
(no SDK: the default for an app that has not set one up), and with the SDK (an in-memory
metric reader; then also a tracer provider sampling every span), in one run.

    python benchmarks/telemetry.py [--rounds 21] [--ops 2000]

Each round times both caches of a phase once, in a shuffled order; the table shows the median
µs per call over the rounds and the median of the per-round ratios to "disabled". Phase 1
compares disabled with API-only; phase 2 installs the SDK's metrics, phase 3 its tracing
(global, once per process: they cannot come first) and compare disabled with them. Redis:
a private redis-server; memory: the in-memory store, where no round trip hides the overhead.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from kvcache import Cache, MemoryStore
from kvcache.testing import RedisServer

VALUE = {"id": 12345, "name": "a typical cached object", "tags": ["a", "b", "c"], "ok": True}


class Discard(SpanExporter):
    """Exports nowhere: the SDK's whole span path, without a million spans in memory."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def timed(ops: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        action()
    return (time.perf_counter() - started) / ops * 1e6


def caches(url: str) -> dict[str, dict[str, Cache]]:
    """backend -> {"disabled": cache, "enabled": cache}."""
    made: dict[str, dict[str, Cache]] = {"redis": {}, "memory": {}}
    for label, enabled in (("disabled", False), ("enabled", True)):
        cache = Cache.from_url(url, namespace=f"bench-{label}", telemetry=enabled)
        cache.connect(timeout=5, raise_on_failure=True)
        made["redis"][label] = cache
        made["memory"][label] = Cache(MemoryStore(), namespace=f"mem-{label}", telemetry=enabled)
    for backend in made.values():
        for cache in backend.values():
            cache.set("k", VALUE)
    return made


def phase(
    made: dict[str, dict[str, Cache]], rounds: int, ops: int
) -> dict[tuple[str, ...], list[float]]:
    """(backend, op, label) -> µs per call of each round."""
    runs: dict[tuple[str, ...], list[float]] = {}
    for _ in range(rounds):
        jobs = [
            (backend, op, label, cache)
            for backend, by_label in made.items()
            for label, cache in by_label.items()
            for op in ("get", "set")
        ]
        random.shuffle(jobs)
        for backend, op, label, cache in jobs:
            action: Callable[[], object] = (
                (lambda c=cache: c.get("k")) if op == "get" else (lambda c=cache: c.set("k", VALUE))
            )
            n = ops if backend == "redis" else ops * 5
            runs.setdefault((backend, op, label), []).append(timed(n, action))
    return runs


def report(title: str, runs: dict[tuple[str, ...], list[float]]) -> None:
    print(f"\n{title}")
    print(
        f"{'backend':<8} {'op':<4} {'disabled µs':>12} {'enabled µs':>11} {'added µs':>9}", end=""
    )
    print(f" {'ratio':>7}")
    for backend in ("redis", "memory"):
        for op in ("get", "set"):
            off = runs[backend, op, "disabled"]
            on = runs[backend, op, "enabled"]
            ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
            print(
                f"{backend:<8} {op:<4} {statistics.median(off):12.2f} {statistics.median(on):11.2f}"
                f" {statistics.median(on) - statistics.median(off):9.2f} {ratio:7.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    with RedisServer() as server:
        made = caches(server.url)
        phase(made, 2, args.ops // 4)  # warm up
        report("API alone (no SDK installed)", phase(made, args.rounds, args.ops))
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        report("SDK metrics (in-memory reader)", phase(made, args.rounds, args.ops))
        tracing = TracerProvider()
        tracing.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(tracing)
        report("SDK metrics + traces (every span sampled)", phase(made, args.rounds, args.ops))
        for backend in made.values():
            for cache in backend.values():
                cache.close()


if __name__ == "__main__":
    main()
