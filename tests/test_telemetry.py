"""One telemetry signal per state transition, through opentelemetry-api, read back with the
SDK's in-memory reader (the SDK is a test dependency only)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from kvcache import Cache, State
from kvcache.testing import ChaosProxy

READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def meter_provider() -> None:
    # Global and set once per process; kvcache's instruments, made at import through the
    # API's proxy meter, start recording into it from now on.
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def transitions() -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "kvcache.state.transitions":
                    continue
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    attrs: Any = point.attributes
                    key = (
                        attrs["kvcache.namespace"],
                        attrs["kvcache.state.previous"],
                        attrs["kvcache.state"],
                    )
                    found[key] = point.value  # type: ignore[union-attr]
    return found


def test_each_transition_is_counted_once_not_per_call(chaos_proxy: ChaosProxy) -> None:
    settings = {"op_timeout": 0.2, "connect_timeout": 0.2}
    with Cache.from_url(chaos_proxy.url, namespace="otel", **settings) as cache:
        assert cache.connect(timeout=5) is State.READY
        chaos_proxy.refuse()
        for _ in range(50):
            cache.get("k")  # one failure opens the breaker; 49 more calls change nothing
        chaos_proxy.up()
        assert cache.connect(timeout=5) is State.READY
    expected = {
        ("otel", "starting", "ready"): 1,
        ("otel", "ready", "degraded"): 1,
        ("otel", "degraded", "ready"): 1,
        ("otel", "ready", "closed"): 1,
    }
    deadline = time.monotonic() + 2  # a transition is counted just after the state changes
    while (found := {k: v for k, v in transitions().items() if k[0] == "otel"}) != expected:
        assert time.monotonic() < deadline, found
        time.sleep(0.01)
