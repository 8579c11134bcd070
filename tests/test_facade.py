"""The Keyv-style API, run against Cache and AsyncCache over memory and a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any

import pytest

from kvcache import (
    FOREVER,
    ErrorEvent,
    InvalidKeyError,
    InvalidTTLError,
    InvalidValueError,
    SerializationError,
)

VALUES = [
    "text",
    "ünïcødé ✓",
    "",
    0,
    -17,
    2**70,
    3.25,
    True,
    False,
    None,
    [1, "two", [3.0]],
    {"nested": {"list": [1, 2], "none": None}},
    "x" * 50_000,  # compressed
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_set_then_get_round_trips(cache: Any, value: Any) -> None:
    assert cache.set("k", value) is True
    got = cache.get("k", default="<missing>")
    assert got == value
    assert type(got) is type(value)


def test_get_missing_answers_default(cache: Any) -> None:
    assert cache.get("absent") is None
    assert cache.get("absent", default=42) == 42


def test_str_and_bytes_keys_are_the_same_key(cache: Any) -> None:
    cache.set("ключ", 1)
    assert cache.get("ключ".encode()) == 1


def test_delete_and_has(cache: Any) -> None:
    cache.set("k", "v")
    assert cache.has("k") is True
    assert "k" in cache
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.has("k") is False
    assert cache.get("k") is None


def test_get_many_set_many_delete_many(cache: Any) -> None:
    assert cache.set_many({"a": 1, "b": [2], "c": {"three": 3}}) is True
    assert cache.get_many(["a", "missing", "c", "a"]) == {"a": 1, "c": {"three": 3}}
    assert cache.get_many([]) == {}
    assert cache.delete_many(["a", "b", "missing"]) == 2
    assert cache.get_many(["a", "b", "c"]) == {"c": {"three": 3}}
    assert cache.delete_many([]) == 0


def test_set_many_needs_a_mapping(cache: Any) -> None:
    with pytest.raises(InvalidValueError):
        cache.set_many([("a", 1)])


def test_add_stores_only_absent_keys(cache: Any) -> None:
    assert cache.add("a", 1) is True
    assert cache.add("a", 2) is False
    assert cache.get("a") == 1
    cache.delete("a")
    assert cache.add("a", 3, ttl=60) is True
    assert 0 < cache.ttl("a") <= 60
    assert cache.stats.sets == 2


def test_incr_decr(cache: Any) -> None:
    assert cache.incr("n") == 1
    assert cache.incr("n", 10) == 11
    assert cache.decr("n", 4) == 7
    assert cache.get("n") == 7
    cache.set("m", 100)
    assert cache.incr("m") == 101  # ints set by set() are counters too


def test_incr_on_non_integer_raises(cache: Any) -> None:
    cache.set("s", "text")
    with pytest.raises(InvalidValueError):
        cache.incr("s")
    with pytest.raises(InvalidValueError):
        cache.decr("s")
    assert cache.get("s") == "text"


@pytest.mark.parametrize("amount", [1.5, True, "1", None, 2**63, -(2**63)], ids=repr)
def test_bad_amounts_raise_before_io(cache: Any, amount: Any) -> None:
    for call in (cache.incr, cache.decr):
        with pytest.raises(InvalidValueError, match="amount"):
            call("n", amount)
    assert cache.has("n") is False


def test_counters_are_signed_64_bit_on_every_store(cache: Any) -> None:
    cache.set("top", 2**63 - 1)
    with pytest.raises(InvalidValueError, match="overflow"):
        cache.incr("top")
    assert cache.get("top") == 2**63 - 1
    cache.set("big", 2**64)  # storable, but not a counter
    with pytest.raises(InvalidValueError):
        cache.incr("big")
    assert cache.decr("low", 2**63 - 1) == -(2**63) + 1


def test_ttl_expiry_and_default_ttl(harness: Any) -> None:
    # "Still there" checks get wide margins (a stalled machine must not fail them);
    # "gone" checks cannot be flaky: sleeping longer only makes them truer.
    cache = harness.make(namespace="ttl", default_ttl=0.6)
    cache.set("default", 1)
    cache.set("short", 1, ttl=0.05)
    cache.set("forever", 1, ttl=FOREVER)
    assert 0 < cache.ttl("short") <= 0.05
    assert 0.05 < cache.ttl("default") <= 0.6
    assert cache.ttl("forever") == FOREVER
    assert cache.ttl("missing") is None
    time.sleep(0.1)
    assert cache.get("short") is None
    assert cache.get("default") == 1
    time.sleep(0.55)
    assert cache.get("default") is None
    assert cache.get("forever") == 1


def test_no_default_ttl_means_no_expiry(cache: Any) -> None:
    cache.set("k", 1)
    assert cache.ttl("k") == FOREVER


def test_touch_resets_expiry(cache: Any) -> None:
    cache.set("k", 1, ttl=0.5)
    assert cache.touch("k", ttl=60) is True
    assert cache.ttl("k") > 59
    assert cache.touch("k", ttl=FOREVER) is True
    assert cache.ttl("k") == FOREVER
    assert cache.touch("k", ttl=FOREVER) is True  # already persistent: still exists
    assert cache.touch("missing", ttl=5) is False
    time.sleep(0.6)
    assert cache.get("k") == 1


def test_incr_gives_new_counters_the_default_ttl_and_keeps_existing_ones(harness: Any) -> None:
    cache = harness.make(namespace="ctr", default_ttl=30)
    cache.incr("new")
    assert 29 < cache.ttl("new") <= 30
    cache.set("kept", 5, ttl=100)
    cache.incr("kept")
    assert cache.ttl("kept") > 99


def test_namespaces_are_isolated(harness: Any) -> None:
    one, two = harness.make(namespace="one"), harness.make(namespace="two")
    harness.raw_set(b"foreign-key", b'\x00"keep me"')
    one.set_many({"a": 1, "b": 2})
    two.set("a", "other")
    assert two.get("a") == "other"
    assert sorted(one) == ["a", "b"]
    assert one.clear() == 2
    assert one.get("a") is None
    assert list(one) == []
    assert two.get("a") == "other"
    assert list(two) == ["a"]
    assert harness.raw_get(b"foreign-key") == b'\x00"keep me"'


def test_clear_handles_glob_characters_in_the_namespace(harness: Any) -> None:
    tricky, plain = harness.make(namespace="a*[b]?"), harness.make(namespace="aX[b]Y")
    tricky.set("k", 1)
    plain.set("k", 2)
    assert tricky.clear() == 1
    assert plain.get("k") == 2


def test_clear_many_keys(harness: Any) -> None:
    cache = harness.make(namespace="bulk")
    cache.set_many({f"k{i}": i for i in range(1234)})
    assert len(list(cache)) == 1234
    assert cache.clear() == 1234
    assert list(cache) == []


def test_separator_is_used(harness: Any) -> None:
    cache = harness.make(namespace="ns", separator="/")
    cache.set("k", 1)
    harness.raw_set(b"ns/raw", b"5")
    assert cache.get("raw") == 5


def test_iteration_yields_bytes_for_non_utf8_keys(cache: Any) -> None:
    cache.set(b"\xff\xfe", 1)
    cache.set("text", 2)
    assert sorted(cache, key=repr) == sorted([b"\xff\xfe", "text"], key=repr)


def test_get_or_set_calls_factory_once(cache: Any) -> None:
    calls: list[int] = []

    def factory() -> dict[str, int]:
        calls.append(1)
        return {"computed": len(calls)}

    assert cache.get_or_set("k", factory, ttl=60) == {"computed": 1}
    assert cache.get_or_set("k", factory, ttl=60) == {"computed": 1}
    assert len(calls) == 1
    assert 59 < cache.ttl("k") <= 60


def test_get_or_set_propagates_factory_errors_and_caches_nothing(cache: Any) -> None:
    def broken() -> int:
        raise RuntimeError("backend down")

    with pytest.raises(RuntimeError, match="backend down"):
        cache.get_or_set("k", broken)
    assert cache.has("k") is False


def test_get_or_set_checks_ttl_before_running_the_factory(cache: Any) -> None:
    calls: list[int] = []
    with pytest.raises(InvalidTTLError):
        cache.get_or_set("k", lambda: calls.append(1), ttl=-1)
    assert calls == []


BAD_KEYS = [None, 1, 1.5, ["k"], ("k",), "", b"", "k" * 1025, "\ud800"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_raise_before_io(cache: Any, key: Any) -> None:
    calls = [
        lambda: cache.get(key),
        lambda: cache.set(key, 1),
        lambda: cache.delete(key),
        lambda: cache.has(key),
        lambda: cache.incr(key),
        lambda: cache.decr(key),
        lambda: cache.ttl(key),
        lambda: cache.touch(key, 1),
        lambda: cache.get_or_set(key, lambda: 1),
        lambda: cache.get_many(["ok", key]),
        lambda: cache.delete_many(["ok", key]),
    ]
    if isinstance(key, Hashable):
        calls.append(lambda: cache.set_many({"ok": 1, key: 2}))
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    assert cache.get("ok") is None  # set_many wrote nothing, even for the valid key
    assert cache.stats.errors == 0


@pytest.mark.parametrize("keys", [5, None, "abc", b"abc"], ids=repr)
def test_many_operations_need_an_iterable_of_keys(cache: Any, keys: Any) -> None:
    with pytest.raises(InvalidKeyError, match="iterable of keys"):
        cache.get_many(keys)
    with pytest.raises(InvalidKeyError, match="iterable of keys"):
        cache.delete_many(keys)


def test_key_length_limit_is_configurable(harness: Any) -> None:
    cache = harness.make(namespace="n", max_key_length=4)
    assert cache.set("four", 1) is True
    with pytest.raises(InvalidKeyError, match="limit is 4"):
        cache.set("fives", 1)


BAD_TTLS = [0, -1, -0.5, float("nan"), "10", True, 1e12]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_bad_ttls_raise_before_io(cache: Any, ttl: Any) -> None:
    for call in (
        lambda: cache.set("k", 1, ttl=ttl),
        lambda: cache.set_many({"k": 1}, ttl=ttl),
        lambda: cache.touch("k", ttl=ttl),
    ):
        with pytest.raises(InvalidTTLError):
            call()
    assert cache.has("k") is False


@pytest.mark.parametrize(
    "value",
    [object(), b"raw bytes", {1, 2}, float, 10**5000],
    ids=["object", "bytes", "set", "type", "int-too-long-for-str"],
)
def test_unserializable_values_raise_before_io(cache: Any, value: Any) -> None:
    with pytest.raises(SerializationError):
        cache.set("k", value)
    with pytest.raises(SerializationError):
        cache.set_many({"ok": 1, "k": value})
    assert cache.has("k") is False
    assert cache.has("ok") is False


@pytest.mark.parametrize(
    "payload", [b"garbage", b"\x00{not json", b"\x01not zlib", b"", b"12ab"], ids=repr
)
def test_foreign_payload_is_a_miss_and_an_error_event(harness: Any, payload: bytes) -> None:
    cache = harness.make(namespace="n")
    events: list[ErrorEvent] = []
    cache.on("error", events.append)
    harness.raw_set(b"n:k", payload)
    assert cache.get("k", default="dflt") == "dflt"
    assert cache.get_many(["k"]) == {}
    assert [type(e.error) for e in events] == [SerializationError, SerializationError]
    assert events[0].key == "k"
    assert cache.stats.misses == 2
    assert cache.stats.errors == 2


def test_stats_count_hits_misses_sets_deletes(cache: Any) -> None:
    cache.set("a", 1)
    cache.set_many({"b": 2, "c": 3, "d": 4})
    cache.get("a")
    cache.get("zz")
    cache.get_many(["b", "yy"])
    cache.delete("a")
    cache.delete("a")  # gone already: not a delete
    cache.delete_many(["b", "c", "missing"])
    cache.clear()  # removes "d"
    assert cache.stats.as_dict() == {
        "hits": 2,
        "misses": 2,
        "fallback_hits": 0,  # Redis (or the memory store) answered every read
        "fallback_misses": 0,
        "sets": 4,
        "deletes": 4,
        "errors": 0,
        "near_hits": 0,
        "stale_hits": 0,
    }
    cache.stats.reset()
    assert set(cache.stats.as_dict().values()) == {0}


def test_unknown_event_name_is_refused(cache: Any) -> None:
    with pytest.raises(ValueError, match="unknown event"):
        cache.on("eror", print)


def test_a_failing_event_handler_does_not_break_the_call(harness: Any) -> None:
    cache = harness.make(namespace="n")
    harness.raw_set(b"n:k", b"garbage")

    def broken(_event: object) -> None:
        raise RuntimeError("listener bug")

    seen: list[object] = []
    cache.on("error", broken)
    cache.on("error", seen.append)
    assert cache.get("k") is None
    assert len(seen) == 1
    cache.off("error", seen.append)
    cache.get("k")
    assert len(seen) == 1
