"""The pure core without I/O: every transition of the state machine, the backoff schedule and
its jitter, the journal, and the adapter's routing and recovery driven by both drivers over
in-memory stores. A fake clock makes time explicit; nothing here sleeps."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from kvcache import (
    CacheClosedError,
    CacheUnavailableError,
    ConfigurationError,
    MemoryStore,
    NoFreeConnectionError,
    Policy,
    State,
    StateChange,
    StoreError,
)
from kvcache._core.breaker import Adapter
from kvcache._core.drivers import arun, run
from kvcache._core.events import Emitter
from kvcache._core.journal import Journal
from kvcache._core.keys import KeySpace
from kvcache._core.protocols import Store
from kvcache._core.resilience import ALL_KEYS, UNJOURNALED
from kvcache._core.state import StateMachine
from kvcache._core.stats import Stats
from kvcache._core.types import request

DOWN = CacheUnavailableError("ConnectionError: refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def machine(
    initial: State = State.STARTING, jitter: float = 0.5, **policy: Any
) -> tuple[StateMachine, Clock]:
    clock = Clock()
    return StateMachine(Policy(**policy), clock, lambda: jitter, initial=initial), clock


# -- the backoff schedule ------------------------------------------------------------------


def test_delays_double_from_retry_base_up_to_retry_max_with_equal_jitter() -> None:
    policy = Policy(retry_base=0.1, retry_max=1.0)
    assert [policy.delay(n, 0.0) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    highest = [policy.delay(n, 0.999999) for n in range(6)]
    assert highest == pytest.approx([0.1, 0.2, 0.4, 0.8, 1, 1], rel=1e-5)


@pytest.mark.parametrize("failures", [0, 1, 2, 5, 10, 63, 64, 10_000])
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 0.999999])
def test_every_delay_stays_within_half_the_base_and_the_max(failures: int, jitter: float) -> None:
    policy = Policy(retry_base=0.05, retry_max=0.5)
    delay = policy.delay(failures, jitter)
    assert policy.retry_base / 2 <= delay <= policy.retry_max  # never a storm, never a hang


@pytest.mark.parametrize(
    "options",
    [
        {"connect_attempts": 0},
        {"retry_base": 0},
        {"retry_base": 2.0, "retry_max": 1.0},
        {"retry_base": -1.0},
    ],
)
def test_bad_policies_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Policy(**options)


def test_the_first_connect_phase_has_a_bound() -> None:
    sm, _ = machine(connect_attempts=3, retry_base=0.1, retry_max=1.0)
    # three attempts of 2 s each, plus the two longest delays between them (0.2 + 0.4)
    assert sm.first_connect_bound(2.0) == pytest.approx(6.6)


# -- transitions ---------------------------------------------------------------------------

EVENTS: dict[str, Callable[[StateMachine], StateChange | None]] = {
    "command_failed": lambda sm: sm.command_failed(DOWN),
    "probe_failed": lambda sm: sm.probe_failed(DOWN),
    "recovered": lambda sm: sm.recovered(),
    "recovered_with_pending": lambda sm: sm.recovered(lambda: True),
    "close": lambda sm: sm.close(),
}

# Every (state, event) pair and where it leads; None = no transition. connect_attempts=1.
EXPECTED: dict[tuple[State, str], State | None] = {
    (State.STARTING, "command_failed"): None,
    (State.STARTING, "probe_failed"): State.DEGRADED,
    (State.STARTING, "recovered"): State.READY,
    (State.STARTING, "recovered_with_pending"): None,
    (State.STARTING, "close"): State.CLOSED,
    (State.READY, "command_failed"): State.DEGRADED,
    (State.READY, "probe_failed"): None,
    (State.READY, "recovered"): None,
    (State.READY, "recovered_with_pending"): None,
    (State.READY, "close"): State.CLOSED,
    (State.DEGRADED, "command_failed"): None,
    (State.DEGRADED, "probe_failed"): None,
    (State.DEGRADED, "recovered"): State.READY,
    (State.DEGRADED, "recovered_with_pending"): None,
    (State.DEGRADED, "close"): State.CLOSED,
    (State.CLOSED, "command_failed"): None,
    (State.CLOSED, "probe_failed"): None,
    (State.CLOSED, "recovered"): None,
    (State.CLOSED, "recovered_with_pending"): None,
    (State.CLOSED, "close"): None,
}


def test_the_table_covers_every_state_and_event() -> None:
    assert set(EXPECTED) == set(itertools.product(State, EVENTS))


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED, key=str))
def test_every_transition(state: State, event: str) -> None:
    sm, clock = machine(initial=state, connect_attempts=1)
    clock.now += 2.5
    change = EVENTS[event](sm)
    expected = EXPECTED[state, event]
    if expected is None:
        assert change is None
        assert sm.state is state
        return
    assert change is not None
    assert (change.previous, change.current) == (state, expected)
    assert change.duration == pytest.approx(2.5)
    assert sm.state is expected
    assert sm.since == clock.now
    assert change.first_connect_failed == (state is State.STARTING and expected is State.DEGRADED)


def test_the_first_connect_phase_ends_after_connect_attempts() -> None:
    sm, clock = machine(connect_attempts=3, retry_base=0.1, jitter=0.0)
    assert sm.seconds_to_probe() == 0  # the first probe is due at once
    changes = []
    for _ in range(3):
        assert sm.probe_started()
        changes.append(sm.probe_failed(DOWN))
        clock.now += sm.seconds_to_probe() or 0
    assert changes[:2] == [None, None]
    assert changes[2] is not None
    assert changes[2].current is State.DEGRADED
    assert changes[2].error is DOWN
    assert sm.last_error is DOWN
    assert sm.failures == 3
    assert sm.probes == 3


def test_probes_are_claimed_once_and_only_when_due() -> None:
    sm, clock = machine(initial=State.READY, jitter=0.0, retry_base=0.2, retry_max=1.0)
    assert not sm.probe_started()  # READY: nothing to probe
    assert sm.seconds_to_probe() is None
    sm.command_failed(DOWN)
    assert sm.seconds_to_probe() == pytest.approx(0.1)
    assert not sm.probe_started()  # not yet due
    clock.now += 0.1
    assert sm.probe_started()
    assert not sm.probe_started()  # in flight: no second prober
    assert sm.seconds_to_probe() is None
    sm.probe_failed(DOWN)
    assert sm.seconds_to_probe() == pytest.approx(0.2)  # the backoff grew


def test_an_abandoned_probe_lets_the_next_prober_run() -> None:
    sm, _ = machine()
    assert sm.probe_started()
    sm.probe_abandoned()  # its task was cancelled: no failure counted, due again now
    assert sm.failures == 0
    assert sm.seconds_to_probe() == 0
    assert sm.probe_started()


def test_a_forked_child_probes_again_even_if_the_parent_was_mid_probe() -> None:
    sm, _ = machine(initial=State.READY)
    sm.command_failed(DOWN)
    sm._clock = lambda: 10_000.0  # type: ignore[method-assign]
    assert sm.probe_started()
    sm.after_fork()
    assert sm.probe_started()


def test_unless_ready_records_atomically_with_the_state() -> None:
    sm, _ = machine(initial=State.DEGRADED)
    recorded: list[int] = []
    assert sm.unless_ready(lambda: recorded.append(1)) is True
    sm.recovered()
    assert sm.unless_ready(lambda: recorded.append(2)) is False
    assert recorded == [1]


def test_recovery_into_ready_resets_the_failure_count() -> None:
    sm, _ = machine(connect_attempts=5)
    sm.probe_started()
    sm.probe_failed(DOWN)
    assert sm.failures == 1
    sm.recovered()
    assert sm.failures == 0
    assert sm.seconds_to_probe() is None


# -- the journal ---------------------------------------------------------------------------


def test_journal_takes_what_was_added_once() -> None:
    journal = Journal(maxsize=10)
    journal.add([b"a", b"b"])
    journal.add([b"a"])
    assert journal.pending()
    keys, clear_all = journal.take()
    assert sorted(keys) == [b"a", b"b"]
    assert clear_all is False
    assert not journal.pending()
    assert journal.take() == ([], False)


def test_journal_restores_what_could_not_be_applied() -> None:
    journal = Journal(maxsize=10)
    journal.add([b"a"])
    keys, clear_all = journal.take()
    journal.add([b"b"])
    journal.restore(keys, clear_all)
    assert sorted(journal.take()[0]) == [b"a", b"b"]


def test_journal_peek_shows_what_a_recovery_took_until_it_is_applied() -> None:
    """A hand-over to a new slot map peeks while a recovery may be applying what it took."""
    journal = Journal(maxsize=10)
    journal.add([b"a"])
    journal.take()
    journal.add([b"b"])
    assert sorted(journal.peek()[0]) == [b"a", b"b"]
    assert len(journal) == 1  # only b is left to apply
    assert journal.pending()
    journal.applied()
    assert journal.peek() == ([b"b"], False)
    journal.add_all()
    journal.take()
    assert journal.peek() == ([], True)
    journal.restore([], True)  # failed: back, and no longer "being applied"
    assert journal.take() == ([], True)


def test_journal_overflow_clears_the_namespace() -> None:
    journal = Journal(maxsize=2, overflow="clear")
    journal.add([b"a", b"b"])
    assert not journal.overflowed
    journal.add([b"c"])
    assert journal.overflowed
    assert journal.take() == ([], True)
    journal.settled()
    assert not journal.overflowed


def test_journal_overflow_can_be_ignored() -> None:
    journal = Journal(maxsize=2, overflow="ignore")
    journal.add([b"a", b"b", b"c", b"a"])
    keys, clear_all = journal.take()
    assert sorted(keys) == [b"a", b"b"]
    assert clear_all is False
    assert journal.overflowed


def test_a_clear_during_the_outage_clears_the_namespace_in_redis() -> None:
    journal = Journal(maxsize=10)
    journal.add([b"a"])
    journal.add_all()
    journal.add([b"b"])  # the namespace goes anyway
    assert journal.take() == ([], True)


def test_journal_size_zero_always_clears() -> None:
    journal = Journal(maxsize=0)
    journal.add([b"a"])
    assert journal.take() == ([], True)


@pytest.mark.parametrize(("size", "overflow"), [(-1, "clear"), (10, "drop")])
def test_bad_journal_settings_are_refused(size: int, overflow: Any) -> None:
    with pytest.raises(ConfigurationError):
        Journal(size, overflow)


# -- the adapter, driven by both drivers ---------------------------------------------------


class Flaky(MemoryStore):
    """An in-memory store that can be switched off, as a remote one can: a test double for
    the core only (the real thing is tested against redis-server in test_outage.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"get", "get_many", "set", "set_many", "delete_many", "clear", "ping", "reset"}:
            calls, down = super().__getattribute__("calls"), super().__getattribute__("down")

            def call(*args: Any) -> Any:
                calls.append(name)
                if down:
                    raise DOWN
                return attr(*args)

            return call
        return attr

    def ping(self) -> None:
        pass

    def reset(self) -> None:
        pass


@pytest.fixture(params=["sync", "async"])
def drive(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    if request.param == "sync":
        return run
    return lambda op: asyncio.run(arun(op))


class Shell:
    """The supervisor's part, inline: no thread, no task; probes run when the test says. A
    wait returns at once, as if its bound passed, after ``while_waiting`` (if set) ran."""

    is_async = False

    def __init__(self) -> None:
        self.asked = 0
        self.woken = 0
        self.waits: list[float] = []  # the timeout of each wait, in order
        self.while_waiting: Callable[[], object] | None = None
        self.changes: list[StateChange] = []  # every state event (the adapter's helper wires it)

    def ensure_probing(self) -> None:
        self.asked += 1

    def wake(self) -> None:
        self.woken += 1

    def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        self.waits.append(timeout)
        if self.while_waiting is not None and not done():
            self.while_waiting()


PREFIX = KeySpace("ns").prefix


def adapter(
    primary: Any = None, fallback: Any = "memory", **options: Any
) -> tuple[Adapter, Flaky, Shell]:
    primary = primary if primary is not None else Flaky()
    made = Adapter(
        primary,
        MemoryStore() if fallback == "memory" else fallback,
        keys=KeySpace("ns"),
        stats=Stats(),
        events=Emitter(),
        clock=Clock(),
        jitter=lambda: 0.0,
        **options,
    )
    made.supervisor = shell = Shell()
    made.events.on("state", shell.changes.append)
    return made, primary, shell


def attempt_failed(made: Adapter, drive: Callable[[Any], Any]) -> None:
    """The first connect attempt fails (Redis down): STARTING calls stop waiting."""
    primary = made.primary
    primary.down = True
    probe_now(made, drive)
    primary.down = False
    primary.calls.clear()


def probe_now(made: Adapter, drive: Callable[[Any], Any]) -> None:
    clock = made.machine._clock
    assert isinstance(clock, Clock)
    clock.now += 3600  # whatever the backoff, the next probe is due
    drive(made.probe())


def test_starting_serves_from_the_fallback_and_journals_writes(drive: Any) -> None:
    made, primary, shell = adapter()
    attempt_failed(made, drive)
    assert made.machine.state is State.STARTING
    assert drive(
        made.call(request(Store.set, PREFIX + b"k", b"v", None), writes=(PREFIX + b"k",))
    ) == (
        None,
        True,
    )
    assert drive(made.call(request(Store.get, PREFIX + b"k"))) == (b"v", True)
    assert primary.calls == []  # no I/O at all
    assert shell.waits == []  # the first attempt failed: nobody waits any more
    assert shell.asked == 2  # each offline call made sure a prober runs
    assert made.journal.take()[0] == [PREFIX + b"k"]


def test_a_starting_call_waits_for_the_first_attempt_and_then_uses_redis(drive: Any) -> None:
    primary = Flaky()
    made, _, shell = adapter(primary)
    primary.op_timeout = 0.3  # type: ignore[attr-defined]
    shell.while_waiting = lambda: run(made.probe())
    key = PREFIX + b"k"
    assert drive(made.call(request(Store.set, key, b"v", None), writes=(key,))) == (None, False)
    assert shell.waits == [0.3]  # bounded by the store's op_timeout
    assert made.machine.state is State.READY
    assert primary.get(key) == b"v"  # Redis took the write
    assert not made.journal.pending()  # nothing to delete in Redis later


def test_a_wait_for_the_first_attempt_that_runs_out_ends_the_waiting(drive: Any) -> None:
    made, primary, shell = adapter()
    key = PREFIX + b"k"
    assert drive(made.call(request(Store.get, key))) == (
        None,
        True,
    )  # the attempt is still in flight
    assert drive(made.call(request(Store.set, key, b"v", None), writes=(key,))) == (None, True)
    assert shell.waits == [0.25]  # only the first call waited (the default op_timeout)
    assert primary.calls == []
    assert made.journal.take()[0] == [key]  # the write really bypassed Redis


def test_a_read_that_misses_while_starting_journals_nothing(drive: Any) -> None:
    made, primary, _ = adapter()
    attempt_failed(made, drive)
    key = PREFIX + b"shared"
    primary.set(key, b"42", None)  # another process wrote it
    assert drive(made.call(request(Store.get, key))) == (None, True)  # the fallback misses
    drive(
        made.call(request(Store.set, key, b"computed", None), writes=UNJOURNALED)
    )  # a get_or_set fill
    assert drive(made.call(request(Store.get, key))) == (b"computed", True)
    assert not made.journal.pending()
    probe_now(made, drive)
    assert made.machine.state is State.READY
    assert primary.get(key) == b"42"  # this process did not delete what it did not write


def test_an_unexpected_probe_error_is_a_failed_probe_not_a_dead_prober(
    drive: Any, caplog: pytest.LogCaptureFixture
) -> None:
    made, primary, shell = adapter(policy=Policy(connect_attempts=2))

    def broken() -> None:
        raise TypeError("__init__() got an unexpected keyword argument 'foo'")

    primary.down = True
    probe_now(made, drive)  # a network failure first: the bug's streak starts after it
    primary.down = False
    primary.ping = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="kvcache.adapter"):
        for _ in range(4):
            probe_now(made, drive)  # never raises
    assert made.machine.state is State.DEGRADED  # the first-connect phase ended
    health = made.health()
    assert health.last_error == "TypeError"
    assert health.failed_probes == 5
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # the trace once per streak, not once per probe
    assert shell.changes[-1].error is not None


def test_probe_success_applies_the_journal_then_ready_then_empties_the_fallback(
    drive: Any,
) -> None:
    made, primary, shell = adapter()
    primary.set(PREFIX + b"old", b"stale", None)
    drive(made.call(request(Store.set, PREFIX + b"old", b"new", None), writes=(PREFIX + b"old",)))
    probe_now(made, drive)
    assert made.machine.state is State.READY
    assert primary.calls[:3] == ["set", "ping", "reset"]
    assert "delete_many" in primary.calls
    assert primary.get(PREFIX + b"old") is None  # the pre-outage value is gone
    assert made.fallback.get(PREFIX + b"old") is None  # and the outage-era one too
    assert [(c.previous, c.current) for c in shell.changes] == [(State.STARTING, State.READY)]
    assert drive(made.call(request(Store.get, PREFIX + b"old"))) == (
        None,
        False,
    )  # Redis answers now


def test_a_failed_command_opens_the_breaker_and_the_fallback_answers(drive: Any) -> None:
    made, primary, shell = adapter()
    probe_now(made, drive)
    primary.down = True
    key = PREFIX + b"k"
    assert drive(made.call(request(Store.set, key, b"v", None), writes=(key,))) == (None, True)
    assert made.machine.state is State.DEGRADED
    assert made.stats.errors == 1  # the failed command is counted, not raised
    calls = len(primary.calls)
    assert drive(made.call(request(Store.get, key))) == (b"v", True)
    assert len(primary.calls) == calls  # breaker open: the network is not touched
    assert made.journal.pending()
    assert [c.current for c in shell.changes] == [State.READY, State.DEGRADED]


def test_a_probe_that_fails_while_applying_the_journal_keeps_it(drive: Any) -> None:
    made, primary, _ = adapter()
    key = PREFIX + b"k"
    drive(made.call(request(Store.delete_many, [key]), writes=[key]))
    original_delete = primary.delete_many

    def failing_delete(keys: Any) -> int:
        raise DOWN

    primary.delete_many = failing_delete  # type: ignore[method-assign]
    probe_now(made, drive)
    assert made.machine.state is State.STARTING  # not READY: the journal was not applied
    assert made.journal.take()[0] == [key]
    primary.delete_many = original_delete  # type: ignore[method-assign]


def test_writes_made_while_recovering_are_applied_before_ready(drive: Any) -> None:
    first, late = PREFIX + b"first", PREFIX + b"late"

    class Racing(Journal):
        raced = False

        def pending(self) -> bool:
            if not self.raced:  # a write lands between applying and turning READY
                self.raced = True
                self.add([late])
            return super().pending()

    made, primary, _ = adapter(journal=Racing())
    primary.set(late, b"stale", None)
    made.journal.add([first])
    probe_now(made, drive)
    assert made.machine.state is State.READY
    assert primary.get(late) is None


def test_a_clear_during_the_outage_clears_the_namespace_on_recovery(drive: Any) -> None:
    made, primary, _ = adapter()
    primary.set(PREFIX + b"a", b"1", None)
    primary.set(b"other:a", b"1", None)
    assert drive(made.call(request(Store.clear, PREFIX), writes=ALL_KEYS)) == (0, True)
    probe_now(made, drive)
    assert primary.get(PREFIX + b"a") is None
    assert primary.get(b"other:a") == b"1"  # other namespaces are left alone


@pytest.mark.parametrize(
    "options", [{"throw_on_errors": True}, {"fallback": None}], ids=["throw", "no-fallback"]
)
def test_without_a_fallback_to_serve_calls_fail_fast_but_writes_are_journaled(
    drive: Any, options: dict[str, Any]
) -> None:
    made, primary, _ = adapter(**options)
    key = PREFIX + b"k"
    with pytest.raises(CacheUnavailableError, match="starting"):
        drive(made.call(request(Store.set, key, b"v", None), writes=(key,)))
    assert primary.calls == []
    assert made.journal.take()[0] == [key]  # deleting it on recovery is always safe


@pytest.mark.parametrize(
    "error",
    [NoFreeConnectionError("no free connection"), StoreError("WRONGTYPE")],
    ids=["local-overload", "server-error"],
)
def test_failures_that_are_not_outages_do_not_open_the_breaker(
    drive: Any, error: StoreError
) -> None:
    made, primary, _ = adapter()
    probe_now(made, drive)

    def failing(key: bytes) -> bytes:
        raise error

    primary.get = failing  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        drive(made.call(request(Store.get, PREFIX + b"k")))
    assert made.machine.state is State.READY
    assert made.stats.errors == 0  # the operation reports it, not the adapter


def test_a_store_that_cannot_be_probed_is_always_ready_and_passes_errors_through(
    drive: Any,
) -> None:
    class Unprobeable(MemoryStore):
        def get(self, key: bytes) -> bytes | None:
            raise DOWN

    made, _, shell = adapter(Unprobeable())
    assert made.machine.state is State.READY
    assert made.fallback is None
    with pytest.raises(CacheUnavailableError):
        drive(made.call(request(Store.get, PREFIX + b"k")))
    assert made.machine.state is State.READY
    assert shell.changes == []


def test_a_closed_adapter_refuses_calls(drive: Any) -> None:
    made, primary, shell = adapter()
    made.close()
    with pytest.raises(CacheClosedError):
        drive(made.call(request(Store.get, PREFIX + b"k")))
    with pytest.raises(CacheClosedError):
        drive(made.scan_store())
    assert primary.calls == []
    assert shell.changes[-1].current is State.CLOSED


def test_health_tells_the_state_the_cause_and_the_schedule(drive: Any) -> None:
    made, primary, _ = adapter(policy=Policy(connect_attempts=1, retry_base=0.2))
    primary.down = True
    probe_now(made, drive)
    health = made.health()
    assert health.state is State.DEGRADED
    assert health.last_error == "CacheUnavailableError"
    assert health.probes == 1
    assert health.failed_probes == 1
    assert health.next_probe_in is not None
    assert health.next_probe_in >= 0
    assert health.journal_keys == 0
    assert not health.journal_overflowed


def test_one_event_per_transition_and_connect_error_once(drive: Any) -> None:
    made, primary, _ = adapter(policy=Policy(connect_attempts=2))
    states: list[StateChange] = []
    connect_errors: list[StateChange] = []
    made.events.on("state", states.append)
    made.events.on("connect_error", connect_errors.append)
    primary.down = True
    for _ in range(5):
        probe_now(made, drive)
        drive(made.call(request(Store.get, PREFIX + b"k")))  # calls while degraded emit nothing
    assert [c.current for c in states] == [State.DEGRADED]
    assert len(connect_errors) == 1
    primary.down = False
    probe_now(made, drive)
    assert [c.current for c in states] == [State.DEGRADED, State.READY]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads running
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_locks_held_by_another_thread_at_fork_time_are_renewed_in_the_child() -> None:
    made, _, _ = adapter()
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with made.machine._lock, made.journal._lock, made.fallback._pool.lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the holder thread does not exist here
        signal.alarm(5)  # a deadlock would otherwise hang the test run
        key = PREFIX + b"k"
        run(
            made.call(request(Store.set, key, b"v", None), writes=(key,))
        )  # journal, fallback, state lock
        made.close()
        os._exit(0 if made.machine.state is State.CLOSED else 1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_failing_fork_hook_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forked child runs every hook even if one raises: a skipped one leaves a lock held
    by a thread that no longer exists, or a prober that never starts."""
    from kvcache._core import forks

    class Aware:
        reset = 0

        def after_fork(self) -> None:
            self.reset += 1

    def broken() -> None:
        raise RuntimeError("boom")

    aware = Aware()
    monkeypatch.setattr(forks, "_functions", [broken])
    monkeypatch.setattr(forks, "_objects", forks.weakref.WeakSet())
    forks.register(aware)
    with caplog.at_level("WARNING", "kvcache.forks"):
        forks._in_child()
    assert aware.reset == 1
    assert "boom" in caplog.text
