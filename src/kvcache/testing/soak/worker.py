"""One soak process: a ``Cache`` driven by threads and an ``AsyncCache`` driven by tasks,
both through this process's own ChaosProxy, every call recorded."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from kvcache import AsyncCache, Cache, State
from kvcache.testing.soak.history import Record, to_row

NAMESPACE = "soak"
KEYS = [f"k{n}" for n in range(20)]
COUNTERS = [f"n{n}" for n in range(3)]
OPS = ["get"] * 6 + ["set"] * 3 + ["get_many", "set_many", "delete", "incr", "add", "touch"]
OPS += ["get_or_set"] * 2
_log = logging.getLogger(__name__)
PACE = 0.001  # seconds between one thread's calls: a history the checker reads in seconds


Touch = tuple[str, str, str | None, bool]  # (kind, key, value, ok) of one key a call touched


# Who is calling: a token set at the start of each call, in this thread's or task's
# context. A task the call starts (AsyncCache's get_or_set fills in a task of its own)
# copies the context, so its error events are still the call's.
_CALL: ContextVar[int] = ContextVar("kvcache_soak_call", default=0)
_CALLS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _Began:
    start: float
    wall: float
    transitions: int  # state changes so far (any caller's: the cache's state is shared)
    call: int  # this call's token (its error events: ``_Recorder.errors[call]``)
    store_errors: int  # the cache's ``stats.errors``: every caller's failures, events or not
    state: State
    near_hits: int  # the cache's counters: exact for a cache with one caller (``solo``)
    stale_hits: int
    # A cluster cache: the slot map, each shard's state and state changes (None: the root's)
    topology: Any = None
    shards: dict[str | None, tuple[State, int]] | None = None


class _Recorder:
    """Counts this cache's state changes, and its error events per caller: a call was
    answered by Redis when the cache was READY before and after it, its state did not
    change meanwhile, and the call itself met no error. In a cluster the same holds of each
    key's shard (and of the root): one primary away leaves the others' keys answered by
    Redis, as they are."""

    def __init__(
        self,
        name: str,
        cache: Cache | AsyncCache,
        keyspace: str = "",
        solo: bool = False,
        ttls: tuple[float | None, ...] = (None, 30.0, 2.0),
        calls: Any = None,
    ) -> None:
        self.name = name
        self.cache = cache
        self.ttls = ttls  # what its writes draw from
        self.calls = calls  # this process's call counter, shared with the runner (or None)
        self.keyspace = keyspace  # before each key in the records: one namespace per group
        # One caller: a change of the near-hit or stale-hit counter during a call is its
        # own, so its answer's source is known ("l1", "stale"); the factory of its
        # get_or_set fails now and then (a source that is down), as fail-safe is for.
        self.solo = solo
        self.transitions = 0
        self.by_shard: Counter[str | None] = Counter()  # state changes per shard
        self.sharded = hasattr(cache._adapter, "shards")
        self._lock = threading.Lock()  # probers of several shards may report at once
        self.errors: Counter[int] = Counter()
        self.records: list[tuple[Any, ...]] = []  # rows (history.to_row)
        self.seq = itertools.count(1)
        cache.on("state", self._transition)
        cache.on("error", self._error)

    def _transition(self, event: Any) -> None:
        with self._lock:
            self.transitions += 1
            self.by_shard[event.shard] += 1

    def _error(self, event: object) -> None:
        with self._lock:  # emitted in the failing call's own context
            self.errors[_CALL.get()] += 1

    def value(self) -> str:
        return f"{self.name}:{next(self.seq)}"

    def _topology(self) -> Any:
        adapter: Any = self.cache._adapter
        return adapter.topology

    def _shards(self) -> dict[str | None, tuple[State, int]]:
        """Each shard's state and state changes so far (None: the root's)."""
        adapter: Any = self.cache._adapter
        shards = {name: shard.machine.state for name, shard in adapter.shards.items()}
        with self._lock:
            changes = dict(self.by_shard)
        seen: dict[str | None, tuple[State, int]] = {
            None: (adapter.root.machine.state, changes.get(None, 0))
        }
        seen.update({name: (state, changes.get(name, 0)) for name, state in shards.items()})
        return seen

    def before(self) -> _Began:
        call = next(_CALLS)
        _CALL.set(call)
        return _Began(
            time.monotonic(),
            time.time(),
            self.transitions,
            call,
            self.cache.stats.errors,
            self.cache.state,
            self.cache.stats.near_hits,
            self.cache.stats.stale_hits,
            *((self._topology(), self._shards()) if self.sharded else ()),
        )

    def _on_shard(
        self, began: _Began, now: dict[str | None, tuple[State, int]], topology: Any, key: str
    ) -> tuple[State | None, bool]:
        """The state ``key``'s shard (and the root) held throughout the call, or None if it
        changed, or the key moved; and whether the cluster's map routed it at all. ``now``,
        ``topology``: the shards and the map as the call ended."""
        assert began.shards is not None
        root = began.shards[None]
        if now[None] != root:
            return None, False
        if root[0] is not State.READY or began.topology is None or key == "-":
            return root[0], False  # the root serves (no map yet) or no key
        full = self.cache._ops.keys.build(key)
        owner = began.topology.owner(full)
        if not owner or topology is None or topology.owner(full) != owner:
            return None, False
        held = began.shards.get(owner)
        return (held[0] if held is not None and now.get(owner) == held else None), True

    def after(
        self, began: _Began, op: str, touched: list[Touch], error: BaseException | None
    ) -> None:
        end = time.monotonic()
        if error is not None:  # a rule-3 violation: its repr alone rarely says where it arose
            where = "".join(traceback.format_exception(error))
            _log.error("soak: %s %s raised at %.3f:\n%s", self.name, op, end, where)
        if self.calls is not None:
            self.calls.value += 1  # (unlocked: a lost increment only blurs the progress line)
        steady = self.transitions == began.transitions and self.cache.state is began.state
        failed = self.errors.pop(began.call, 0) > 0  # this call met an error of its own
        uncounted = self.cache.stats.errors == began.store_errors
        held: State | None = began.state if steady else None
        if self.sharded:  # the shards and the map as the call ended, once for all its keys
            now, topology = self._shards(), self._topology()
        source = ""
        if self.solo and self.cache.stats.stale_hits != began.stale_hits:
            source = "stale"
        elif self.solo and (hits := self.cache.stats.near_hits - began.near_hits):
            # A get_many counts a hit per key the L1 answered: all of them, or some (which
            # ones is unknown; the rest came from Redis or, its shard away, the fallback)
            reads = sum(kind == "read" for kind, *_ in touched)
            source = "l1" if hits >= reads else "l1-some"
        for kind, key, value, ok in touched or [("other", "-", None, True)]:
            if self.sharded:
                held, routed = self._on_shard(began, now, topology, key)
                held = held if routed or held is not State.READY else None
            contact = held is State.READY and not failed
            # Served by the fallback without a try at Redis: its breaker open throughout,
            # no failure counted (a write while the journal drains goes to Redis, and a
            # timeout then makes no event). Any other write Redis did not answer may have
            # reached it: in doubt.
            offline = held is State.DEGRADED and uncounted
            self.records.append(
                to_row(
                    Record(
                        self.name,
                        kind,
                        op,
                        self.keyspace + key,
                        value,
                        began.start,
                        end,
                        began.wall,
                        contact,
                        source=source if kind == "read" else "",
                        error=None if error is None else repr(error),
                        # (a delete that found nothing answers False: acknowledged unless it
                        # met an error, when it may not have been made)
                        ok=(ok or (op == "delete" and not failed)) and error is None,
                        in_doubt=kind == "write" and not contact and not offline,
                    )
                )
            )


def _plan(
    rng: random.Random, rec: _Recorder
) -> tuple[str, Callable[[Any], Any], list[Touch], Callable[[Any], list[Touch]]]:
    """One random call: (op, how to make it on a cache, the writes it plans, what it wrote
    or read given its result). A call that raised leaves its planned writes, not acknowledged
    and in doubt (they may have reached Redis), and no reads."""
    op = rng.choice(OPS)
    key = rng.choice(KEYS)
    ttl = rng.choice(rec.ttls)
    if op == "get":
        return op, lambda c: c.get(key), [], lambda got: [("read", key, got, True)]
    if op in ("set", "add"):
        v = rec.value()
        return (
            op,
            lambda c: getattr(c, op)(key, v, ttl),
            [("write", key, v, False)],
            lambda ok: [("write", key, v, ok)],
        )
    if op == "get_many":
        keys = rng.sample(KEYS, 4)
        return (
            op,
            lambda c: c.get_many(keys),
            [],
            lambda got: [("read", k, got.get(k), True) for k in keys],
        )
    if op == "set_many":
        mapping = {k: rec.value() for k in rng.sample(KEYS, 3)}
        return (
            op,
            lambda c: c.set_many(mapping, ttl),
            [("write", k, v, False) for k, v in mapping.items()],
            lambda ok: [("write", k, v, ok) for k, v in mapping.items()],
        )
    if op == "delete":
        planned: list[Touch] = [("write", key, None, False)]
        return op, lambda c: c.delete(key), planned, lambda d: [("write", key, None, d)]
    if op == "touch":
        return op, lambda c: c.touch(key, 30.0), [], lambda _: [("other", key, None, True)]
    if op == "incr":
        counter = rng.choice(COUNTERS)
        return op, lambda c: c.incr(counter), [], lambda _: [("other", counter, None, True)]
    v = rec.value()  # get_or_set: a write when its factory ran, else a read
    ran: list[bool] = []
    fails = rec.solo and rng.random() < 0.3

    def factory() -> str:
        if fails:
            raise SourceDown(key)
        ran.append(True)
        return v

    return (
        op,
        lambda c: c.get_or_set(key, factory, ttl),
        [("write", key, v, False)],  # had its factory not run, no read can find ``v``
        lambda got: [("write" if ran else "read", key, got, True)],
    )


class SourceDown(Exception):
    """A ``get_or_set`` factory's own failure: fail-safe answers a stale value instead, or
    it reaches the caller (no stale value), as documented; not kvcache's error."""


def _sync_thread(rec: _Recorder, rng: random.Random, until: float) -> None:
    cache = rec.cache
    while time.monotonic() < until:
        op, call, planned, touched = _plan(rng, rec)
        began = rec.before()
        try:
            result = call(cache)
        except SourceDown:
            rec.after(began, op, [], None)
        except Exception as exc:
            rec.after(began, op, planned, exc)
        else:
            rec.after(began, op, touched(result), None)
        time.sleep(PACE)


async def _async_task(rec: _Recorder, rng: random.Random, until: float) -> None:
    cache = rec.cache
    while time.monotonic() < until:
        op, call, planned, touched = _plan(rng, rec)
        began = rec.before()
        try:
            result = call(cache)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:
            rec.after(began, op, planned, exc)
        else:
            rec.after(began, op, touched(result), None)
        await asyncio.sleep(PACE * 4)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


class _FallbackWatch:
    """Samples every cache's fallback while the soak runs: the most bytes over its bound
    (``fallback_max_bytes``) seen, 0 if it never went over (rule 5)."""

    def __init__(self) -> None:
        self.caches: list[Any] = []
        self.over = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvcache-soak-watch")

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for cache in list(self.caches):
                adapter = cache._adapter
                fallback = getattr(adapter, "root", adapter).fallback  # (a cluster's: all shards)
                if fallback is not None and fallback.max_bytes is not None:
                    self.over = max(self.over, fallback.size_bytes - fallback.max_bytes)

    def start(self) -> _FallbackWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.caches.clear()


def _opened(
    cls: Any, url: str, options: dict[str, Any], remap: dict[int, int], namespace: str = NAMESPACE
) -> Any:
    """A cache on ``url``; in a cluster, every node it learns of dialled through this
    process's own proxy of it (``remap``: node port -> proxy port)."""
    cache = cls.from_url(url, namespace=namespace, **options)
    if remap and getattr(cache.store, "sharded", False):
        cache.store.remap = lambda where: (where[0], remap.get(where[1], where[1]))
    return cache


def main(
    index: int,
    url: str,
    seed: int,
    duration: float,
    out: str,
    options: dict[str, Any],
    remap: dict[int, int] | None = None,
    calls: Any = None,
) -> None:
    """Run for ``duration`` seconds; write the history and the leak check to ``out``.
    ``calls``: a ``multiprocessing.Value`` counting this process's calls, for progress."""
    remap = remap or {}
    logging.getLogger("kvcache").setLevel(logging.ERROR)  # each outage logs; the history says more
    threads_before, fds_before = threading.active_count(), _fds()
    rng = random.Random(f"{seed}:{index}")
    until = time.monotonic() + duration
    watch = _FallbackWatch().start()
    sync = _opened(Cache, url, options, remap)
    watch.caches.append(sync)
    sync.connect(timeout=5)
    sync_rec = _Recorder(f"p{index}.sync", sync, calls=calls)
    threads = [
        threading.Thread(target=_sync_thread, args=(sync_rec, random.Random(rng.random()), until))
        for _ in range(3)
    ]
    # Two more groups, one thread each, in namespaces of their own: every process's cache
    # there near-cached (each writer must announce its writes), or with fail-safe.
    # Fail-safe's values expire (logically) within a second, so that many are stale.
    groups: list[tuple[str, str, dict[str, Any], tuple[float | None, ...]]] = [
        ("near", "l1:", {"near_cache": True}, (None, 30.0, 2.0)),
        ("stale", "stale:", {"stale_ttl": 30.0}, (0.05, 0.3, 1.0)),
    ]
    solos: list[_Recorder] = []
    for group, keyspace, extra, ttls in groups:
        solo = _opened(Cache, url, {**options, **extra}, remap, f"{NAMESPACE}_{group}")
        solo.connect(timeout=5)
        watch.caches.append(solo)
        solos.append(
            _Recorder(f"p{index}.{group}", solo, keyspace, solo=True, ttls=ttls, calls=calls)
        )
        args = (solos[-1], random.Random(rng.random()), until)
        threads.append(threading.Thread(target=_sync_thread, args=args))
    for thread in threads:
        thread.start()

    async def run_async() -> _Recorder:
        cache = _opened(AsyncCache, url, options, remap)
        watch.caches.append(cache)
        await cache.connect(timeout=5)
        rec = _Recorder(f"p{index}.async", cache, calls=calls)
        await asyncio.gather(
            *(_async_task(rec, random.Random(rng.random()), until) for _ in range(8))
        )
        await cache.close()
        return rec

    async_rec = asyncio.run(run_async())
    for thread in threads:
        thread.join()
    watch.stop()
    sync.close()
    for rec in solos:
        rec.cache.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaks = {
        "threads left": threading.active_count() - threads_before,
        "file descriptors left": _fds() - fds_before,
        "fallback bytes over its bound": watch.over,
    }
    with open(out, "w") as file:
        json.dump(
            {
                "records": [row for rec in (sync_rec, async_rec, *solos) for row in rec.records],
                "leaks": leaks,
            },
            file,
        )
