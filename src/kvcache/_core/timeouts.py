"""The bound one call to Redis has, in one place: the socket timeout its commands get
(``command_timeout``), and the rule a probe must meet to count as passed (``fits_a_call``).

Pure and dependency-free, so both the client factory (which sets the socket timeouts) and the
stores (which probe) use it without importing each other.
"""

from __future__ import annotations

from kvcache.errors import SlowReplyError


def command_timeout(op_timeout: float) -> float:
    """The socket timeout for a call whose whole budget is ``op_timeout``: a little less,
    so the call that meets a dead socket also has time to open the breaker and ask the
    fallback (measured: ~0.7 ms of socket-timeout overshoot + ~0.5 ms of bookkeeping)."""
    return op_timeout - min(0.005, op_timeout / 20)


def fits_a_call(what: str, took: float, op_timeout: float) -> None:
    """A probe's round trip (``what`` took ``took`` seconds) must fit the bound a call has:
    a Redis that answers a probe slower than that would time out the calls that follow, so
    the probe fails (SlowReplyError) instead of closing the breaker for them."""
    bound = command_timeout(op_timeout)
    if took > bound:
        raise SlowReplyError(
            f"{what} took {took * 1000:.0f} ms, over the {bound * 1000:.0f} ms a call may take"
        )
