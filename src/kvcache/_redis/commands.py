"""Raw commands and pipeline queuing, shared by the sync and async stores: SET with its
options, the compare-and-set script, XADD, INCR with a TTL, UNLINK and MSET in batches and per
slot on a cluster node, ASKING before each command."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kvcache._redis.slots import slot_groups

UNLINK_BATCH = 500  # keys per UNLINK, so clear() never sends one huge command
SCAN_COUNT = 1000  # keys per SCAN round trip
# The sync and async stores' bounds on commands in flight (per event loop for the async one)
DEFAULT_MAX_IN_FLIGHT = 64  # commands at once
DEFAULT_WAIT_TIMEOUT = 0.25  # seconds to wait for a free slot


def batches(keys: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == UNLINK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def queue_incr(pipe: Any, key: bytes, amount: int, ttl_ms: int) -> None:
    # MULTI / SET NX PX / INCRBY / EXEC: a *new* counter gets the TTL, an existing one keeps
    # its own, atomically, in one round trip. (Not Lua: it turns replies into doubles, and
    # counters past 2**53 would come back rounded.)
    pipe.set(key, b"0", nx=True, px=ttl_ms).incrby(key, amount)


def queue_unlink(pipe: Any, keys: Sequence[bytes], cluster: bool = False) -> None:
    # Many keys: UNLINK in batches (no one huge command), all in one round trip; on a
    # cluster node, one slot per UNLINK.
    for group in slot_groups(keys) if cluster else [keys]:
        for batch in batches(iter(group)):
            pipe.unlink(*batch)


def one_unlink(keys: Sequence[bytes], cluster: bool) -> bool:
    """Can one UNLINK carry ``keys``?"""
    return len(keys) <= UNLINK_BATCH and (not cluster or len(slot_groups(keys)) == 1)


def queue_set_many(
    pipe: Any, items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None, cluster: bool
) -> None:
    if ttl_ms is not None:
        for key, value in items:
            pipe.execute_command(*set_command(key, value, ttl_ms))
    elif not cluster:
        pipe.mset(dict(items))
    else:  # a cluster node takes MSET only within one slot
        values = dict(items)
        for group in slot_groups(list(values)):
            pipe.mset({key: values[key] for key in group})


def queue_get_many(pipe: Any, groups: Sequence[Sequence[bytes]]) -> None:
    for group in groups:  # one MGET per slot: a cluster node refuses cross-slot MGET
        pipe.mget(group)


def merge_get_many(
    keys: Sequence[bytes],
    groups: Sequence[Sequence[bytes]],
    replies: list[list[bytes | None]],
) -> list[bytes | None]:
    found = {
        key: value
        for group, values in zip(groups, replies, strict=True)
        for key, value in zip(group, values, strict=True)
    }
    return [found[key] for key in keys]


def queue_asking(pipe: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    # ASKING holds for the next command only, so it goes before each.
    for command in commands:
        pipe.execute_command("ASKING")
        pipe.execute_command(*command)


# Compare-and-set: Redis has no command for it. EVAL, not EVALSHA: the script is short,
# Redis keeps it compiled, and nothing has to be loaded first on every node.
_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


def replace_command(key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> tuple[Any, ...]:
    """Store ``new`` with ``ttl_ms`` only if ``key`` still holds ``old`` (1 if it did)."""
    return ("EVAL", _REPLACE, 1, key, old, new, b"" if ttl_ms is None else ttl_ms)


def xadd_command(stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> tuple[Any, ...]:
    """XADD ``fields``, trimming the stream to about ``maxlen`` entries (the near cache's
    invalidations: from the stores, the router's ASK path and the listener's connection)."""
    flat = [part for pair in fields.items() for part in pair]
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat)


def set_command(
    key: bytes, value: bytes, ttl_ms: int | None, *, nx: bool = False
) -> tuple[Any, ...]:
    """SET as a raw command: the stores send it with ``execute_command``, which skips
    redis-py's ``set()`` argument handling (~7 µs a call, measured)."""
    command: tuple[Any, ...] = ("SET", key, value)
    if ttl_ms is not None:
        command += ("PX", ttl_ms)
    return (*command, "NX") if nx else command


# -- ASK: the slot is being migrated, and this key already lives on the importing node, which
# serves it only right after ASKING. A call is re-sent there as raw commands, one key at a time.

Finish = Callable[[list[Any]], Any]


def ask_commands(method: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], Finish]:
    """The raw commands that carry out a one-key store call, and how to read their replies."""
    if method == "get":
        return [("GET", args[0])], lambda r: r[0]
    if method == "get_many":
        return [("GET", key) for key in args[0]], list
    if method == "exists":
        return [("EXISTS", args[0])], lambda r: r[0] == 1
    if method == "pttl":
        return [("PTTL", args[0])], lambda r: r[0]
    if method == "set":
        return [set_command(args[0], args[1], args[2])], lambda r: None
    if method == "add":
        return [set_command(args[0], args[1], args[2], nx=True)], lambda r: r[0] is not None
    if method == "set_many":
        return [set_command(key, value, args[1]) for key, value in args[0]], lambda r: None
    if method == "delete_many":
        return [("UNLINK", key) for key in args[0]], sum
    if method == "incr":
        key, amount, ttl_ms = args
        start = [] if ttl_ms is None else [("SET", key, b"0", "NX", "PX", ttl_ms)]
        return [*start, ("INCRBY", key, amount)], lambda r: r[-1]
    if method == "get_with_ttl":
        return [("GET", args[0]), ("PTTL", args[0])], lambda r: (r[0], int(r[1]))
    if method == "replace":
        return [replace_command(*args)], lambda r: bool(r[0])
    if method == "publish":
        return [xadd_command(*args)], lambda r: None
    if method == "expire":
        key, ttl_ms = args
        if ttl_ms is None:
            return [("PERSIST", key), ("EXISTS", key)], lambda r: r[1] == 1
        return [("PEXPIRE", key, ttl_ms)], lambda r: bool(r[0])
    raise ValueError(f"no ASK form for {method}")
