"""The names every layer shares, defined once: the effects the core yields, "no value", and
the outcome vocabulary of stats, telemetry and logs."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Concatenate, Final, Generic, ParamSpec, TypeVar

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class Request(Generic[R]):
    """A method call the core wants made, its target not chosen yet (the adapter picks
    Redis or the fallback): the method's name and its arguments. ``R`` is what it answers.
    Made by ``request``, which mypy checks against the protocol method it names."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.method = method
        self.args = args

    def again(self, *args: Any) -> Request[R]:
        """The same method with other arguments (the cluster router's part for one shard)."""
        return Request(self.method, args)

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {len(self.args)} args)"  # (values may be secrets)


def request(
    method: Callable[Concatenate[Any, P], R], /, *args: P.args, **kwargs: P.kwargs
) -> Request[R]:
    """``request(Store.get, key)``: a ``Request[bytes | None]``. ``method`` is the protocol's
    (or class's) function, called later on whichever target carries the request out."""
    if kwargs:
        raise TypeError("a request takes positional arguments only")
    return Request(method.__name__, args)


Call = tuple[Any, Request[Any]]
"""What the core yields to its driver (``drivers.py``): a request and the target to carry it
out on (a store, the prober shell, the listener's reader); the driver sends back the reply."""

Op = Generator[Call, Any, T]
"""An operation of the core: yields calls, is sent their results, returns a ``T``."""

MISSING: Any = object()  # "no value" where None is a value

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # Redis counters (INCRBY) are signed 64-bit

# Outcomes: what a call ended as (reads count one per key).
HIT: Final = "hit"
MISS: Final = "miss"
FALLBACK_HIT: Final = "fallback_hit"
FALLBACK_MISS: Final = "fallback_miss"
NEAR_HIT: Final = "near_hit"  # answered by the near cache (L1)
STALE_HIT: Final = "stale_hit"  # get_or_set's factory failed: a stale value served (fail-safe)
OK: Final = "ok"
FALLBACK: Final = "fallback"
ERROR: Final = "error"

Outcome = str | BaseException  # an outcome, or the error a call ended with
