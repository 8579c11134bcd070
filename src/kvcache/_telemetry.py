"""OpenTelemetry signals, through opentelemetry-api only: no-ops until the application
installs an SDK (a MeterProvider, a TracerProvider), and cheap until then.

Metrics (every one carries ``kvcache.namespace``):

- ``kvcache.operations`` (counter): calls by ``kvcache.operation`` and ``kvcache.outcome``.
  Reads count one per key looked up (``get`` 1, ``get_many`` n): hit, miss, fallback_hit,
  fallback_miss, error. Other calls count one each: ok, fallback (served without Redis),
  error. Observed from in-process tallies at collection time: an SDK's synchronous counter
  costs ~12 µs an ``add``, a tally ~0.05 µs.
- ``kvcache.operation.duration`` (histogram, s): one per call, same attributes (a get_many's
  outcome is its call's: ok, fallback or error). Calls are timed only once a MeterProvider
  is installed.
- ``kvcache.state`` (gauge): caches (cluster: ``kvcache.shard`` breakers) in each
  ``kvcache.state``, 0 or 1 for a namespace's one cache.
- ``kvcache.state.transitions`` (counter), ``kvcache.journal.size`` (gauge, keys to delete
  on recovery), ``kvcache.topology.refreshes`` (counter: changed, unchanged, failed),
  ``kvcache.iam.token.refreshes`` (counter: ok, error; no namespace, a provider may serve
  several caches).

Spans: one per facade call (CLIENT, named by the operation: ``get``, ``set_many``) and one
per probe (``probe``), with the database semantic conventions' attributes
(``db.system.name``, ``db.operation.name``, ``db.namespace``, ``server.address``,
``server.port``, ``db.operation.batch.size``, ``error.type``) and ``kvcache.outcome``. Never
a key, a value or a secret. Spans are not made current (a generator may be resumed in
another context), so instrumented redis-py spans are their siblings, not their children.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sized
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import Span, SpanKind, StatusCode

from kvcache._core import forks
from kvcache._core.instruments import error_type
from kvcache._core.protocols import is_located
from kvcache._core.types import ERROR, OK, Op, Outcome

if TYPE_CHECKING:
    from kvcache._core.breaker import Adapter
    from kvcache._core.state import StateChange

T = TypeVar("T")

_meter = metrics.get_meter("kvcache")
_tracer = trace.get_tracer("kvcache")

# Latencies run from ~1 µs (a fallback hit) to op_timeout and beyond.
DURATION_BUCKETS: Final = (
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_durations = _meter.create_histogram(
    "kvcache.operation.duration",
    unit="s",
    description="Duration of cache calls, by operation and outcome",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
_transitions = _meter.create_counter(
    "kvcache.state.transitions",
    unit="{transition}",
    description="Connection state changes (starting, ready, degraded, closed)",
)
_topology = _meter.create_counter(
    "kvcache.topology.refreshes",
    unit="{refresh}",
    description="Cluster topology checks, by outcome (changed, unchanged, failed)",
)
_iam = _meter.create_counter(
    "kvcache.iam.token.refreshes",
    unit="{token}",
    description="IAM auth tokens signed (ok) or not (error: no credentials)",
)


# Has the application installed a tracer (meter) provider? opentelemetry-api's own proxies
# check these globals; its public getters read os.environ on every call (1.4 µs, more than
# the rest of a call's telemetry), and a no-op span costs 1 µs to make. Until a meter
# provider exists, calls are not timed (the tallies always run: the counter is cumulative).


def tracing() -> bool:
    return trace._TRACER_PROVIDER is not None


# -- tallies behind kvcache.operations ---------------------------------------------------


class _Series:
    """One attribute set's running total, shared by the caches of a namespace."""

    __slots__ = ("attributes", "count")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.count = 0  # += is not atomic: a rare lost increment under thread contention


_SERIES: dict[tuple[str, str, str], _Series] = {}
_NONE: dict[str, _Series] = {}  # an empty lookup, shared
_SERIES_LOCK = threading.Lock()


def _series(namespace: str, operation: str, outcome: str) -> _Series:
    with _SERIES_LOCK:
        found = _SERIES.get((namespace, operation, outcome))
        if found is None:
            found = _SERIES[namespace, operation, outcome] = _Series(
                {
                    "kvcache.namespace": namespace,
                    "kvcache.operation": operation,
                    "kvcache.outcome": outcome,
                }
            )
        return found


@forks.at_fork
def _after_fork_in_child() -> None:
    """A forked worker counts its own calls (it exports as a process of its own), and must
    not inherit a lock another thread of the parent held."""
    global _SERIES_LOCK
    _SERIES_LOCK = threading.Lock()
    for series in _SERIES.values():
        series.count = 0


def _observe_operations(options: CallbackOptions) -> Iterator[Observation]:
    for series in list(_SERIES.values()):
        if series.count:  # a get_many's call outcome has a duration series, not a count
            yield Observation(series.count, series.attributes)


_meter.create_observable_counter(
    "kvcache.operations",
    callbacks=[_observe_operations],
    unit="{operation}",
    description="Cache calls (reads: keys looked up), by operation and outcome",
)


# -- gauges over the live adapters -------------------------------------------------------

_WATCHED: weakref.WeakSet[Adapter] = weakref.WeakSet()


def watch(adapter: Adapter) -> None:
    _WATCHED.add(adapter)


def unwatch(adapter: Adapter) -> None:
    _WATCHED.discard(adapter)


def _where(adapter: Adapter) -> tuple[tuple[str, str], ...]:
    where = (("kvcache.namespace", adapter.namespace),)
    return where if adapter.shard is None else (*where, ("kvcache.shard", adapter.shard))


def _sums(values: Iterable[tuple[tuple[tuple[str, str], ...], int]]) -> Iterator[Observation]:
    """Caches sharing a namespace add up (an SDK keeps one value per attribute set)."""
    totals: dict[tuple[tuple[str, str], ...], int] = {}
    for attributes, value in values:
        totals[attributes] = totals.get(attributes, 0) + value
    for attributes, value in totals.items():
        yield Observation(value, dict(attributes))


def _observe_states(options: CallbackOptions) -> Iterator[Observation]:
    from kvcache._core.state import State

    def points() -> Iterator[tuple[tuple[tuple[str, str], ...], int]]:
        for adapter in list(_WATCHED):
            current, where = adapter.machine.state, _where(adapter)
            for state in State:
                yield (*where, ("kvcache.state", state.value)), int(state is current)

    return _sums(points())


def _observe_journals(options: CallbackOptions) -> Iterator[Observation]:
    return _sums((_where(adapter), len(adapter.journal)) for adapter in list(_WATCHED))


_meter.create_observable_gauge(
    "kvcache.state",
    callbacks=[_observe_states],
    unit="{cache}",
    description="Caches (cluster: shard breakers) in each state",
)
_meter.create_observable_gauge(
    "kvcache.journal.size",
    callbacks=[_observe_journals],
    unit="{key}",
    description="Keys written while Redis was away, to delete there on recovery",
)


# -- rare events -------------------------------------------------------------------------


def state_changed(namespace: str, change: StateChange) -> None:
    """One data point per transition, never per call."""
    attributes = {
        "kvcache.namespace": namespace,
        "kvcache.state.previous": change.previous.value,
        "kvcache.state": change.current.value,
    }
    if change.shard is not None:
        attributes["kvcache.shard"] = change.shard
    _transitions.add(1, attributes)


def topology_checked(namespace: str, outcome: str) -> None:
    _topology.add(1, {"kvcache.namespace": namespace, "kvcache.outcome": outcome})


def token_signed(ok: bool) -> None:
    _iam.add(1, {"kvcache.outcome": OK if ok else ERROR})


def server_attributes(store: Any) -> dict[str, str | int]:
    """Semantic-convention attributes of the Redis a store talks to ({} for others)."""
    address: Any = store.address if is_located(store) else None
    if not (isinstance(address, tuple) and len(address) == 3):  # not a Redis store of ours
        return {}
    host, port, db = address  # (host or socket path, port or None, db)
    attributes: dict[str, str | int] = {
        "db.system.name": "redis",
        "server.address": host,
        "db.namespace": str(db),
    }
    if port is not None:
        attributes["server.port"] = port
    return attributes


def start_span(name: str, attributes: Mapping[str, str | int], *, root: bool = False) -> Span:
    """``root``: a span of its own trace (a probe: the async prober's task inherited the
    context of whichever call started it, which has long ended)."""
    return _tracer.start_span(
        name, context=Context() if root else None, kind=SpanKind.CLIENT, attributes=attributes
    )


def end_span(span: Span, outcome: Outcome, batch: int = 0) -> None:
    ending: dict[str, str | int] = {}
    if isinstance(outcome, BaseException):
        ending["kvcache.outcome"] = ERROR
        ending["error.type"] = error_type(outcome)
        span.set_status(StatusCode.ERROR)
    else:
        ending["kvcache.outcome"] = outcome
    if batch > 1:
        ending["db.operation.batch.size"] = batch
    span.set_attributes(ending)  # one call: the SDK takes a lock per call
    span.end()


# -- one cache's signals ---------------------------------------------------------------


class Telemetry:
    """A cache's signals, the core's ``Instruments``: per call its tallies, durations and
    spans; per breaker its state and journal gauges, probe spans and transitions.
    ``enabled=False`` (``KVCACHE_TELEMETRY=false``) records nothing."""

    __slots__ = ("_probes", "_series", "_span_attributes", "enabled", "namespace", "server")

    def __init__(self, namespace: str, store: Any, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.namespace = namespace
        self.server = server_attributes(store)
        self._series: dict[str, dict[str, _Series]] = {}
        self._span_attributes: dict[str, dict[str, str | int]] = {}
        # Each watched breaker's probe span attributes.
        self._probes: weakref.WeakKeyDictionary[Any, dict[str, str | int]] = (
            weakref.WeakKeyDictionary()
        )

    def watch(self, adapter: Any, shard: str | None) -> None:
        attributes: dict[str, str | int] = {
            **server_attributes(adapter.primary),
            "db.operation.name": "probe",
            "kvcache.namespace": self.namespace,
        }
        if shard is not None:
            attributes["kvcache.shard"] = shard
        self._probes[adapter] = attributes
        watch(adapter)

    def unwatch(self, adapter: Any) -> None:
        unwatch(adapter)

    def start_probe(self, adapter: Any) -> Span | None:
        if not tracing():
            return None
        return start_span("probe", self._probes.get(adapter, {}), root=True)

    def end_probe(self, token: Span | None, outcome: Outcome) -> None:
        if token is not None:
            end_span(token, outcome)

    def state_changed(self, change: StateChange) -> None:
        state_changed(self.namespace, change)

    def observe(
        self,
        operation: str,
        body: Op[tuple[T, Outcome]],
        batch: object = None,
        tallied: bool = False,
    ) -> Op[T]:
        """Run an operation's body (it answers its value and its outcome), timed, traced
        and counted. ``batch``: the keys or items of a multi-key call (for its span);
        ``tallied``: the body counted its keys itself (``count``)."""
        if not self.enabled:
            value, _ = yield from body
            return value
        started = perf_counter() if _metrics_api._METER_PROVIDER is not None else None
        span = None
        if trace._TRACER_PROVIDER is not None:  # tracing(), inline
            span = start_span(operation, self._attributes(operation))
        try:
            value, outcome = yield from body
        except BaseException as exc:  # bad input, throw_on_errors, a cancelled task
            self._done(operation, exc, started, span, batch, tallied)
            raise
        self._done(operation, outcome, started, span, batch, tallied)
        return value

    def count(self, operation: str, outcome: str, n: int = 1) -> None:
        if self.enabled:
            self._tally(operation, outcome).count += n

    def _done(
        self,
        operation: str,
        outcome: Outcome,
        started: float | None,
        span: Span | None,
        batch: object,
        tallied: bool,
    ) -> None:
        name = outcome if outcome.__class__ is str else ERROR  # else: the error it ended with
        series = self._series.get(operation, _NONE).get(name)
        if series is None:
            series = self._tally(operation, name)
        if not tallied or name == ERROR:
            series.count += 1
        if started is not None:
            _durations.record(perf_counter() - started, series.attributes)
        if span is not None:
            end_span(span, outcome, len(batch) if isinstance(batch, Sized) else 0)

    def _tally(self, operation: str, outcome: str) -> _Series:
        by_outcome = self._series.get(operation)
        if by_outcome is None:
            by_outcome = self._series.setdefault(operation, {})
        series = by_outcome.get(outcome)
        if series is None:
            series = by_outcome[outcome] = _series(self.namespace, operation, outcome)
        return series

    def _attributes(self, operation: str) -> dict[str, str | int]:
        attributes = self._span_attributes.get(operation)
        if attributes is None:
            attributes = self._span_attributes[operation] = {
                **self.server,
                "db.operation.name": operation,
                "kvcache.namespace": self.namespace,
            }
        return attributes
