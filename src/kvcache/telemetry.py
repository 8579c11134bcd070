"""OpenTelemetry signals, through opentelemetry-api only: a no-op until the application
installs an SDK (a MeterProvider), so they cost nothing for apps that do not."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import metrics

if TYPE_CHECKING:
    from .state import StateChange

_meter = metrics.get_meter("kvcache")
_transitions = _meter.create_counter(
    "kvcache.state.transitions",
    unit="{transition}",
    description="Connection state changes (starting, ready, degraded, closed)",
)


def state_changed(namespace: str, change: StateChange) -> None:
    """One data point per transition, never per call."""
    _transitions.add(
        1,
        {
            "kvcache.namespace": namespace,
            "kvcache.state.previous": change.previous.value,
            "kvcache.state": change.current.value,
        },
    )
