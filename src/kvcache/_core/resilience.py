"""The resilient adapter as the operations, the shells and the cluster see it: the protocol
both ``Adapter`` (one breaker) and ``ShardedAdapter`` (one per primary) follow, the prober
shell it is given (``Supervisor``), what ``health()`` answers, and the markers a call's
``writes`` may carry."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar

from kvcache._core.events import Emitter
from kvcache._core.state import State, StateMachine
from kvcache._core.stats import Stats
from kvcache._core.types import Call, Request

if TYPE_CHECKING:
    from kvcache.errors import StoreError

R = TypeVar("R")

Offline = bool | list[bool]
"""Whether a call was served without Redis (by the fallback); for a cluster get_many that
met a degraded shard, one flag per key (``_cluster/routing.py``)."""

Routed = Generator[Call, Any, tuple[R, Offline]]
"""A request carried out by the adapter: its reply, and whether it was served offline."""
# applies a journal taken on recovery, (keys, clear the namespace?), in Redis; returns the
# number of keys deleted
Recovery = Callable[[list[bytes], bool], Generator[Call, Any, int]]

ALL_KEYS: Final[Sequence[bytes]] = (b"*",)
"""``writes`` of clear(): the whole namespace changed (compared by identity)."""
UNJOURNALED: Final[Sequence[bytes]] = ()
"""``writes`` of a get_or_set fill: a value just computed from the source carries nothing
Redis must forget, so served offline it is kept in the fallback but not journaled."""


class Supervisor(Protocol):
    """The shell that runs the prober (a thread, or an asyncio task) and lets callers wait."""

    is_async: ClassVar[bool]

    def ensure_probing(self) -> None:
        """Start the prober unless one is running (idempotent, cheap, never blocks)."""

    def wake(self) -> None:
        """A probe ended or the state changed: wake whoever waits, to look again."""

    def wait_until(self, done: Callable[[], bool], timeout: float) -> Any:
        """Block (or be awaited) until ``done()``, at most ``timeout`` seconds."""

    def spawn(self, job: Generator[Any, Any, Any]) -> bool:
        """Run an operation of the core once in the background; False if it cannot now."""

    def stop(self) -> None:
        """After close(): end the prober."""


class ResilientAdapter(Protocol):
    """What the operations and the shells drive: one breaker (``Adapter``), or one per
    primary behind a router (``ShardedAdapter``). Written once here, instead of the union
    of the two classes in every signature (and the core importing the cluster package)."""

    namespace: str
    stats: Stats
    events: Emitter
    throw_on_errors: bool

    @property
    def supervisor(self) -> Supervisor | None: ...

    @supervisor.setter
    def supervisor(self, supervisor: Supervisor) -> None: ...  # the shell attaches its own

    @property
    def machine(self) -> StateMachine: ...

    @property
    def state(self) -> State: ...

    @property
    def probe_timeout(self) -> float: ...

    def call(self, asked: Request[R], writes: Sequence[bytes] | None = None) -> Routed[R]: ...

    def trips(self, error: StoreError) -> bool: ...

    def scan_store(self) -> Generator[Call, Any, Any]: ...

    def probe(self) -> Generator[Call, Any, None]: ...

    def close(self) -> None: ...

    def health(self) -> Health: ...


@dataclass(frozen=True, slots=True)
class Health:
    """What ``cache.health()`` answers."""

    state: State
    seconds_in_state: float
    last_error: str | None  # the class of the last failure, e.g. "TimeoutError"
    probes: int  # probes since the last READY
    failed_probes: int  # of which failed in a row
    next_probe_in: float | None  # seconds; None when no probe is scheduled
    journal_keys: int  # keys to delete in Redis on recovery
    journal_overflowed: bool  # the namespace will be cleared on recovery instead
    fallback: str | None  # repr of the fallback store
    shards: Mapping[str, Health] | None = None  # cluster: each primary's breaker
