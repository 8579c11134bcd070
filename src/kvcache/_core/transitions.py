"""A breaker's transitions in the log: one line per change of state, never one per call, at
WARNING (lost, cannot connect) or INFO (ready again), with structured fields for JSON
formatters and OpenTelemetry's logging bridge. The logger is ``kvcache.adapter``, the name
users configure (the README)."""

from __future__ import annotations

import logging

from kvcache._core.instruments import error_type
from kvcache._core.state import State, StateChange

log = logging.getLogger("kvcache.adapter")


def reason(error: BaseException | None) -> str:
    return "" if error is None else f" ({error})"


def log_transition(
    change: StateChange, where: str, namespace: str, shard: str | None, deleted: int
) -> None:
    """``where``: the store's repr (no secrets); ``deleted``: journaled keys deleted on
    recovery."""
    # Structured fields for JSON formatters and OpenTelemetry's logging bridge.
    fields = {
        "kvcache_namespace": namespace,
        "kvcache_state": change.current.value,
        "kvcache_previous": change.previous.value,
        "kvcache_shard": shard,
        "kvcache_store": where,
        "kvcache_error": None if change.error is None else error_type(change.error),
        "kvcache_seconds": round(change.duration, 3),
    }
    if change.current is State.DEGRADED:
        if change.first_connect_failed:
            log.warning(
                "kvcache: cannot connect to %s%s; serving from memory, probing quietly",
                where,
                reason(change.error),
                extra=fields,
            )
        else:
            log.warning(
                "kvcache: lost %s%s; serving from memory until it answers",
                where,
                reason(change.error),
                extra=fields,
            )
    elif change.current is State.READY:
        log.info(
            "kvcache: %s is ready (after %.3f s %s; %d journaled keys deleted)",
            where,
            change.duration,
            change.previous.value,
            deleted,
            extra={**fields, "kvcache_journal_deleted": deleted},
        )
    else:
        log.debug("kvcache: %s %s", where, change.current.value, extra=fields)
