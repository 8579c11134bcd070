"""The soak's checker on hand-made histories: each rule of docs/consistency.md is caught
where it is broken and only there (the checker is pure: no Redis here)."""

from __future__ import annotations

from kvcache.testing.soak import Record, check

BOUND = 0.5  # seconds a call may take in these histories


def bound(record: Record) -> float:
    return BOUND


def write(client: str, value: str | None, start: float, end: float, **kw: object) -> Record:
    kw.setdefault("contact", True)
    return Record(client, "write", "set", "k", value, start, end, **kw)  # type: ignore[arg-type]


def read(client: str, value: str | None, start: float, end: float, **kw: object) -> Record:
    kw.setdefault("contact", True)
    return Record(client, "read", "get", "k", value, start, end, **kw)  # type: ignore[arg-type]


def rules(records: list[Record], **options: object) -> list[int]:
    return [v.rule for v in check(records, bound=bound, **options)]  # type: ignore[arg-type]


def test_a_clean_history_has_no_violation() -> None:
    history = [
        write("a", "a:1", 0.0, 0.1),
        read("b", "a:1", 0.2, 0.3),
        write("b", "b:1", 0.4, 0.5),
        read("a", "b:1", 0.6, 0.7),
        read("a", None, 0.8, 0.9),  # a miss is never stale: a cache may lose anything
    ]
    assert rules(history) == []


def test_reading_an_older_value_than_ones_own_write_breaks_rule_1() -> None:
    history = [
        write("a", "a:1", 0.0, 0.1),
        write("a", "a:2", 0.2, 0.3, contact=False),  # to the fallback: still acknowledged
        read("a", "a:1", 0.4, 0.5, contact=False),
    ]
    [violation] = check(history, bound=bound)
    assert violation.rule == 1
    assert [r.value for r in violation.records] == ["a:1", "a:2", "a:1"]
    assert "a:2" in violation.show()


def test_an_older_value_after_contact_breaks_rule_2_and_not_before() -> None:
    older, newer = write("a", "a:1", 0.0, 0.1), write("b", "b:1", 0.2, 0.3)
    # c is cut off from Redis: its fallback read may answer the old value.
    assert rules([older, newer, read("c", "a:1", 0.4, 0.5, contact=False)]) == []
    # Its read answered by Redis after b's write: it must see b's value or later.
    assert rules([older, newer, read("c", "a:1", 0.4, 0.5)]) == [2]
    # Or an earlier contact on that key, then a fallback read.
    touched = Record("c", "other", "touch", "k", None, 0.35, 0.38, contact=True)
    assert rules([older, newer, touched, read("c", "a:1", 0.4, 0.5, contact=False)]) == [2]


def test_a_write_served_by_its_own_fallback_is_visible_to_its_client_only() -> None:
    older = write("a", "a:1", 0.0, 0.1)
    offline = write("b", "b:1", 0.2, 0.3, contact=False)
    assert rules([older, offline, read("c", "a:1", 0.4, 0.5)]) == []
    assert rules([older, offline, read("b", "a:1", 0.4, 0.5)]) == [1]


def test_concurrent_writes_may_land_in_either_order() -> None:
    history = [
        write("a", "a:1", 0.0, 0.3),
        write("b", "b:1", 0.1, 0.2),  # started before a's write ended
        read("c", "a:1", 0.4, 0.5),
        read("b", "a:1", 0.6, 0.7),
    ]
    assert rules(history) == []


def test_a_write_that_raised_hides_nothing() -> None:
    history = [
        write("a", "a:1", 0.0, 0.1),
        write("a", "a:2", 0.2, 0.3, error="TimeoutError()"),
        read("a", "a:1", 0.4, 0.5),
    ]
    assert rules(history) == [3]  # the exception, not a stale read


def test_a_near_cache_copy_may_outlive_a_write_by_the_window_only() -> None:
    older, newer = write("a", "a:1", 0.0, 0.1), write("b", "b:1", 0.2, 0.3)
    within = read("c", "a:1", 1.0, 1.01, contact=False, source="l1")
    past = read("c", "a:1", 2.0, 2.01, contact=False, source="l1")
    assert rules([older, newer, within], near_window=1.5) == []
    [violation] = check([older, newer, past], bound=bound, near_window=1.5)
    assert violation.rule == 2
    assert "near-cache copy" in violation.what


def test_a_deleted_key_read_back_is_stale() -> None:
    history = [
        write("a", "a:1", 0.0, 0.1),
        Record("b", "write", "delete", "k", None, 0.2, 0.3, contact=True),
        read("c", "a:1", 0.4, 0.5),
    ]
    assert rules(history) == [2]


def test_a_value_nobody_wrote_is_a_violation() -> None:
    [violation] = check([read("a", "x:9", 0.0, 0.1)], bound=bound)
    assert (violation.rule, violation.what) == (2, "read a value no write produced")


def test_exceptions_and_slow_calls_break_rules_3_and_4() -> None:
    history = [
        read("a", None, 0.0, 0.1, error="ValueError('I/O operation on closed file')"),
        read("a", None, 1.0, 1.0 + BOUND + 0.01),
    ]
    assert rules(history) == [3, 4]


def test_fail_safe_answers_are_stale_by_request() -> None:
    older, newer = write("a", "a:1", 0.0, 0.1), write("a", "a:2", 0.2, 0.3)
    assert rules([older, newer, read("a", "a:1", 0.4, 0.5, source="stale")]) == []


def test_a_stale_read_where_redis_may_lose_writes_is_reported_apart() -> None:
    older, newer = write("a", "a:1", 0.0, 0.1), write("b", "b:1", 0.2, 0.3)
    stale = read("c", "a:1", 0.6, 0.7)
    # b's write was acknowledged just before a primary died: Redis may have lost it
    [violation] = check([older, newer, stale], bound=bound, lossy=[(0.25, 0.5)])
    assert violation.lossy
    # acknowledged before (or after) the window: kept, so the stale read is kvcache's
    for window in [(0.35, 0.5), (0.0, 0.25)]:
        [violation] = check([older, newer, stale], bound=bound, lossy=[window])
        assert not violation.lossy


def test_a_long_history_is_checked_in_one_pass() -> None:
    history = [write("a", f"a:{n}", n, n + 0.5) for n in range(20_000)]
    history += [read("b", f"a:{n}", n + 0.6, n + 0.7) for n in range(20_000)]
    history.append(read("b", "a:3", 20_001.0, 20_001.1))  # long after a:19999
    [violation] = check(history, bound=bound)
    assert violation.rule == 2


def test_a_write_in_doubt_may_land_after_later_writes() -> None:
    """A SET that timed out (answered by the fallback) can reach Redis after another
    process's write: reading it then is no violation, as it would be for a write that
    certainly ended."""
    late = write("a", "a:1", 0.0, 0.25, contact=False)
    newer = write("b", "b:1", 0.3, 0.31)
    after = read("b", "a:1", 1.6, 1.61)
    assert rules([late, newer, after]) == [1]
    doubtful = write("a", "a:1", 0.0, 0.25, contact=False, in_doubt=True)
    assert rules([doubtful, newer, after]) == []
    # Not for ever: once the fault its call met is over (and DOUBT more), it has landed
    # or never will, and a later acknowledged write is newer than it.
    newest = write("b", "b:2", 3.0, 3.01)
    reread = read("b", "a:1", 3.1, 3.11)
    assert rules([doubtful, newest, reread], faults=[(0.1, 1.5)]) == [1]
    assert rules([doubtful, newest, reread], faults=[(0.1, 2.5)]) == []  # held till 2.5


def test_a_near_cache_copy_is_checked_by_its_window_even_after_a_contact() -> None:
    """An add that found the key, a touch: calls answered by Redis that leave the L1 copy
    in place. A hit within the window after the write is allowed all the same."""
    older, newer = write("a", "a:1", 0.0, 0.1), write("b", "b:1", 0.2, 0.3)
    touched = Record("c", "other", "touch", "k", None, 0.4, 0.41, contact=True)
    hit = read("c", "a:1", 1.0, 1.01, contact=False, source="l1")
    assert rules([older, newer, touched, hit], near_window=1.5) == []


def test_a_fill_the_fallback_took_is_a_value_but_no_later_read_must_see_it() -> None:
    """Seed 20261202 (CI, 2026-12-02): p1's get_or_set, cut off from Redis, filled its
    fallback; after recovery p1 read p0's older value from Redis. kvcache never journals a
    fill (a fill invalidates nothing, and journaling them would overflow the journal in
    any read-heavy outage): allowed, as docs/consistency.md says. A set there is rule 1."""
    older = write("p0", "p0:1", 0.0, 0.003)

    def fill(op: str) -> Record:
        return Record("p1", "write", op, "k", "p1:1", 0.027, 0.028, contact=False)

    after = read("p1", "p0:1", 0.059, 0.063)
    assert rules([older, fill("get_or_set"), after]) == []
    assert rules([older, fill("set"), after]) == [1]
    # The fill's value is one someone produced: reading it is no invention.
    assert rules([older, fill("get_or_set"), read("p1", "p1:1", 0.03, 0.031, contact=False)]) == []
    # A fill Redis answered is a write like any other.
    answered = Record("p1", "write", "get_or_set", "k", "p1:1", 0.027, 0.028, contact=True)
    assert rules([older, answered, read("p2", "p0:1", 0.059, 0.063)]) == [2]


def test_an_add_that_found_the_key_produced_no_value() -> None:
    # a's add answered False: "a:1" never reached Redis, so nobody may read it.
    refused = Record("a", "write", "add", "k", "a:1", 0.0, 0.1, contact=True, ok=False)
    assert rules([refused, read("b", "a:1", 0.2, 0.3)]) == [2]
    # In doubt (its call failed after it may have sent the command), it may have landed.
    doubtful = Record("a", "write", "add", "k", "a:1", 0.0, 0.1, ok=False, in_doubt=True)
    assert rules([doubtful, read("b", "a:1", 0.2, 0.3)]) == []


def test_reading_a_value_before_its_write_began_breaks_rule_2() -> None:
    [violation] = check([read("b", "a:1", 0.0, 0.1), write("a", "a:1", 0.2, 0.3)], bound=bound)
    assert violation.rule == 2
    assert "before its write began" in violation.what
    # Overlapping calls are concurrent: the read may see the write.
    assert rules([read("b", "a:1", 0.0, 0.25), write("a", "a:1", 0.2, 0.3)]) == []


def test_a_get_many_the_near_cache_answered_in_part_is_checked_for_rule_1_only() -> None:
    """Seed 114 (cluster): a get_many took one key from the L1 and another from the
    fallback (its shard away); judged as wholly L1's, the fallback's value was flagged."""
    older, newer = write("a", "a:1", 0.0, 0.1, contact=False), write("b", "b:1", 0.2, 0.3)
    partial = Record("a", "read", "get_many", "k", "a:1", 2.0, 2.01, source="l1-some")
    assert rules([older, newer, partial], near_window=1.5) == []
    wholly = Record("a", "read", "get_many", "k", "a:1", 2.0, 2.01, source="l1")
    assert rules([older, newer, wholly], near_window=1.5) == [2]
    own = write("a", "a:2", 0.4, 0.5, contact=False)  # its own write: rule 1 holds still
    assert rules([older, own, partial], near_window=1.5) == [1]


def test_a_record_travels_from_a_worker_to_the_runner_whole() -> None:
    import json

    from kvcache.testing.soak.history import from_row, to_row

    sent = [
        Record("p1.sync", "write", "set", "k", "p1.sync:3", 1.5, 1.7, 9.0, True, "", None, True),
        Record("p2.near", "read", "get", "k", None, 2.0, 2.1, source="l1", error="boom", ok=False),
    ]
    received = [from_row(row) for row in json.loads(json.dumps([to_row(r) for r in sent]))]
    assert received == sent


def test_a_long_history_is_checked_in_linear_time() -> None:
    """A 600 s soak leaves ~100,000 records a key. Each reader's first call answered by Redis
    after a write was found by rebuilding that reader's list of call starts per lookup: about
    3 s for 20,000 records on one key and 100 times that for 200,000, so the 600 s run's
    check did not end. A generous bound (it takes ~1.5 s here)."""
    import time

    records: list[Record] = []
    last = None
    for i in range(200_000):
        client, at = f"p{i % 4}", i / 1000
        if i % 3 == 0:
            last = f"{client}:{i}"
            records.append(Record(client, "write", "set", "k", last, at, at + 0.0005, contact=True))
        else:
            records.append(Record(client, "read", "get", "k", last, at, at + 0.0005, contact=True))
    started = time.perf_counter()
    assert check(records, bound=lambda r: 1.0) == []
    assert time.perf_counter() - started < 30
