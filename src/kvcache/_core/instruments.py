"""What the core tells its instruments. The core reports (a call's outcome, a probe, a
transition) to the object it was given, and whoever listens implements this protocol: the
core never imports a telemetry backend (as stamina's instrumentation hooks). kvcache's
OpenTelemetry instruments are ``_telemetry.Telemetry``; ``UNOBSERVED`` records nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kvcache._core.types import Op, Outcome

if TYPE_CHECKING:
    from kvcache._core.state import StateChange

T = TypeVar("T")


class Instruments(Protocol):
    enabled: bool  # False: nothing is recorded (KVCACHE_TELEMETRY=false)

    def observe(
        self,
        operation: str,
        body: Op[tuple[T, Outcome]],
        batch: object = None,
        tallied: bool = False,
    ) -> Op[T]:
        """Run an operation's body (it answers its value and its outcome), observed.
        ``batch``: the keys or items of a multi-key call; ``tallied``: the body counted
        its keys itself (``count``)."""
        ...

    def count(self, operation: str, outcome: str, n: int = 1) -> None: ...

    def watch(self, adapter: Any, shard: str | None) -> None:
        """A breaker to observe from now on (its state and journal, its probes)."""

    def unwatch(self, adapter: Any) -> None: ...

    def start_probe(self, adapter: Any) -> Any:
        """A probe of ``adapter`` begins: a token for ``end_probe``, or None."""

    def end_probe(self, token: Any, outcome: Outcome) -> None: ...

    def state_changed(self, change: StateChange) -> None:
        """One signal per transition, never per call."""


class _Unobserved:
    """Instruments that record nothing (an ``Operations`` built without any)."""

    enabled = False

    def observe(
        self,
        operation: str,
        body: Op[tuple[T, Outcome]],
        batch: object = None,
        tallied: bool = False,
    ) -> Op[T]:
        value, _ = yield from body
        return value

    def count(self, operation: str, outcome: str, n: int = 1) -> None:
        pass

    def watch(self, adapter: Any, shard: str | None) -> None:
        pass

    def unwatch(self, adapter: Any) -> None:
        pass

    def start_probe(self, adapter: Any) -> Any:
        return None

    def end_probe(self, token: Any, outcome: Outcome) -> None:
        pass

    def state_changed(self, change: StateChange) -> None:
        pass


UNOBSERVED: Instruments = _Unobserved()


def error_type(error: BaseException) -> str:
    """What failed, by class, for logs and telemetry: redis-py's (TimeoutError…) behind
    kvcache's when there is one."""
    return type(error.__cause__ or error).__name__
