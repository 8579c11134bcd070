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
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ... import AsyncCache, Cache, State
from .history import Record

KEYS = [f"k{n}" for n in range(20)]
COUNTERS = [f"n{n}" for n in range(3)]
OPS = ["get"] * 6 + ["set"] * 3 + ["get_many", "set_many", "delete", "incr", "add", "touch"]
OPS += ["get_or_set"] * 2
PACE = 0.001  # seconds between one thread's calls: a history the checker reads in seconds


class _Recorder:
    """Counts this cache's state and error events: a call is answered by Redis when the
    cache was READY before and after it and no event came meanwhile."""

    def __init__(self, name: str, cache: Cache | AsyncCache) -> None:
        self.name = name
        self.cache = cache
        self.events = 0
        self.records: list[Record] = []
        self.seq = itertools.count(1)
        cache.on("state", self._bump)
        cache.on("error", self._bump)

    def _bump(self, event: object) -> None:
        self.events += 1

    def value(self) -> str:
        return f"{self.name}:{next(self.seq)}"

    def before(self) -> tuple[float, float, int, bool]:
        return time.monotonic(), time.time(), self.events, self.cache.state is State.READY

    def after(
        self,
        began: tuple[float, float, int, bool],
        op: str,
        touched: list[tuple[str, str, str | None, bool]],
        error: BaseException | None,
    ) -> None:
        start, wall, events, ready = began
        end = time.monotonic()
        contact = ready and self.cache.state is State.READY and self.events == events
        for kind, key, value, ok in touched or [("other", "-", None, True)]:
            self.records.append(
                Record(
                    self.name,
                    kind,
                    op,
                    key,
                    value,
                    start,
                    end,
                    wall,
                    contact,
                    error=None if error is None else repr(error),
                    ok=ok,
                    in_doubt=kind == "write" and ready and not contact,
                )
            )


def _plan(
    rng: random.Random, rec: _Recorder
) -> tuple[str, Callable[[Any], Any], Callable[[Any], list[tuple[str, str, str | None, bool]]]]:
    """One random call: (op, how to make it on a cache, what it wrote or read)."""
    op = rng.choice(OPS)
    key = rng.choice(KEYS)
    ttl = rng.choice([None, 30.0, 2.0])
    if op == "get":
        return op, lambda c: c.get(key), lambda got: [("read", key, got, True)]
    if op == "set":
        v = rec.value()
        return op, lambda c: c.set(key, v, ttl), lambda ok: [("write", key, v, ok)]
    if op == "get_many":
        keys = rng.sample(KEYS, 4)
        return (
            op,
            lambda c: c.get_many(keys),
            lambda got: [("read", k, got.get(k), True) for k in keys],
        )
    if op == "set_many":
        mapping = {k: rec.value() for k in rng.sample(KEYS, 3)}
        return (
            op,
            lambda c: c.set_many(mapping, ttl),
            lambda ok: [("write", k, v, ok) for k, v in mapping.items()],
        )
    if op == "delete":
        return op, lambda c: c.delete(key), lambda _: [("write", key, None, True)]
    if op == "add":
        v = rec.value()
        return op, lambda c: c.add(key, v, ttl), lambda ok: [("write", key, v, ok)]
    if op == "touch":
        return op, lambda c: c.touch(key, 30.0), lambda _: [("other", key, None, True)]
    if op == "incr":
        counter = rng.choice(COUNTERS)
        return op, lambda c: c.incr(counter), lambda _: [("other", counter, None, True)]
    v = rec.value()  # get_or_set: a write when its factory ran, else a read
    ran: list[bool] = []

    def factory() -> str:
        ran.append(True)
        return v

    return (
        op,
        lambda c: c.get_or_set(key, factory, ttl),
        lambda got: [("write" if ran else "read", key, got, True)],
    )


def _sync_thread(rec: _Recorder, rng: random.Random, until: float) -> None:
    cache = rec.cache
    while time.monotonic() < until:
        op, call, touched = _plan(rng, rec)
        began = rec.before()
        try:
            result = call(cache)
        except Exception as exc:
            rec.after(began, op, [], exc)
        else:
            rec.after(began, op, touched(result), None)
        time.sleep(PACE)


async def _async_task(rec: _Recorder, rng: random.Random, until: float) -> None:
    cache = rec.cache
    while time.monotonic() < until:
        op, call, touched = _plan(rng, rec)
        began = rec.before()
        try:
            result = call(cache)
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:
            rec.after(began, op, [], exc)
        else:
            rec.after(began, op, touched(result), None)
        await asyncio.sleep(PACE * 4)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def main(
    index: int, url: str, seed: int, duration: float, out: str, options: dict[str, Any]
) -> None:
    """Run for ``duration`` seconds; write the history and the leak check to ``out``."""
    logging.getLogger("kvcache").setLevel(logging.ERROR)  # each outage logs; the history says more
    threads_before, fds_before = threading.active_count(), _fds()
    rng = random.Random(f"{seed}:{index}")
    until = time.monotonic() + duration
    sync = Cache.from_url(url, namespace="soak", **options)
    sync.connect(timeout=5)
    sync_rec = _Recorder(f"p{index}.sync", sync)
    threads = [
        threading.Thread(target=_sync_thread, args=(sync_rec, random.Random(rng.random()), until))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()

    async def run_async() -> _Recorder:
        cache = AsyncCache.from_url(url, namespace="soak", **options)
        await cache.connect(timeout=5)
        rec = _Recorder(f"p{index}.async", cache)
        await asyncio.gather(
            *(_async_task(rec, random.Random(rng.random()), until) for _ in range(8))
        )
        await cache.close()
        return rec

    async_rec = asyncio.run(run_async())
    for thread in threads:
        thread.join()
    sync.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaks = {
        "threads": threading.active_count() - threads_before,
        "fds": _fds() - fds_before,
    }
    with open(out, "w") as file:
        json.dump(
            {"records": [asdict(r) for r in sync_rec.records + async_rec.records], "leaks": leaks},
            file,
        )
