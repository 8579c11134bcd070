"""Each store call as raw commands and how to read their replies: written once for the sync
and the async store, and for the router's ASK path (the same commands, each after ASKING, on
the importing node). A store sends a plan of one command alone, more in one pipeline (one
round trip; MULTI/EXEC when ``transaction``), and none without touching the network.

The functions are named after the store methods they plan (``PLANS``): ``plans.get(key)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from kvcache._redis.commands import (
    batches,
    merge_get_many,
    one_unlink,
    replace_command,
    set_command,
    xadd_command,
)
from kvcache._redis.slots import slot_groups

R = TypeVar("R")
Command = tuple[Any, ...]
Finish = Callable[[list[Any]], Any]


class Plan(Generic[R]):
    __slots__ = ("commands", "finish", "keys", "transaction")

    def __init__(
        self,
        commands: list[Command],
        finish: Callable[[list[Any]], R],
        transaction: bool = False,
        keys: Sequence[bytes] | None = None,
    ) -> None:
        self.commands = commands
        self.finish = finish  # the replies (redis-py's response callbacks applied) -> result
        self.transaction = transaction
        # The keys a read of one command names, as redis-py's own helpers pass them: a
        # client with redis-py's client-side cache (cache_config) refuses a cacheable
        # command without them ("Cannot create cache key"); others ignore them.
        self.keys = keys


def _first(replies: list[Any]) -> Any:
    return replies[0]


def _last(replies: list[Any]) -> Any:
    return replies[-1]


def _nothing(replies: list[Any]) -> None:
    return None


def _true(replies: list[Any]) -> bool:
    return bool(replies[0])


def _one(replies: list[Any]) -> bool:
    return bool(replies[-1] == 1)


def _with_ttl(replies: list[Any]) -> tuple[bytes | None, int]:
    return replies[0], int(replies[1])


def get(key: bytes) -> Plan[bytes | None]:
    return Plan([("GET", key)], _first, keys=(key,))


def get_many(keys: Sequence[bytes], cluster: bool = False) -> Plan[list[bytes | None]]:
    groups = slot_groups(keys) if cluster else [keys]
    if len(groups) == 1:
        return Plan([("MGET", *keys)] if keys else [], _first if keys else list, keys=keys)
    # One MGET per slot: a cluster node refuses a cross-slot MGET.
    return Plan(
        [("MGET", *group) for group in groups],
        lambda replies: merge_get_many(keys, groups, replies),
    )


def set(key: bytes, value: bytes, ttl_ms: int | None) -> Plan[None]:
    return Plan([set_command(key, value, ttl_ms)], _nothing)


def add(key: bytes, value: bytes, ttl_ms: int | None) -> Plan[bool]:
    return Plan([set_command(key, value, ttl_ms, nx=True)], _true)


def set_many(
    items: Sequence[tuple[bytes, bytes]], ttl_ms: int | None, cluster: bool = False
) -> Plan[None]:
    if ttl_ms is not None:
        return Plan([set_command(key, value, ttl_ms) for key, value in items], _nothing)
    values = dict(items)
    groups = slot_groups(list(values)) if cluster else [list(values)]
    # A cluster node takes MSET only within one slot.
    commands: list[Command] = [
        ("MSET", *[part for key in group for part in (key, values[key])]) for group in groups
    ]
    return Plan(commands if values else [], _nothing)


def delete_many(keys: Sequence[bytes], cluster: bool = False) -> Plan[int]:
    if not keys:
        return Plan([], sum)
    if one_unlink(keys, cluster):
        return Plan([("UNLINK", *keys)], _first)
    # Many keys: UNLINK in batches (no one huge command), all in one round trip; on a
    # cluster node, one slot per UNLINK.
    commands: list[Command] = [
        ("UNLINK", *batch)
        for group in (slot_groups(keys) if cluster else [keys])
        for batch in batches(iter(group))
    ]
    return Plan(commands, sum)


def exists(key: bytes) -> Plan[bool]:
    return Plan([("EXISTS", key)], _one, keys=(key,))


def incr(key: bytes, amount: int, ttl_ms: int | None) -> Plan[int]:
    if ttl_ms is None:
        return Plan([("INCRBY", key, amount)], _first)
    # MULTI / SET NX PX / INCRBY / EXEC: a *new* counter gets the TTL, an existing one keeps
    # its own, atomically, in one round trip. (Not Lua: it turns replies into doubles, and
    # counters past 2**53 would come back rounded.)
    start = set_command(key, b"0", ttl_ms, nx=True)
    return Plan([start, ("INCRBY", key, amount)], _last, transaction=True)


def pttl(key: bytes) -> Plan[int]:
    return Plan([("PTTL", key)], _first, keys=(key,))


def expire(key: bytes, ttl_ms: int | None) -> Plan[bool]:
    if ttl_ms is None:  # PERSIST answers 0 for a key without a TTL: EXISTS says if it is there
        return Plan([("PERSIST", key), ("EXISTS", key)], _one)
    return Plan([("PEXPIRE", key, ttl_ms)], _true)


def get_with_ttl(key: bytes) -> Plan[tuple[bytes | None, int]]:
    """GET and PTTL in one round trip (the near cache keeps a copy no longer than Redis)."""
    return Plan([("GET", key), ("PTTL", key)], _with_ttl)


def replace(key: bytes, old: bytes, new: bytes, ttl_ms: int | None) -> Plan[bool]:
    return Plan([replace_command(key, old, new, ttl_ms)], _true)


def publish(stream: bytes, fields: dict[bytes, bytes], maxlen: int) -> Plan[None]:
    """XADD an invalidation, trimming the stream to about ``maxlen`` entries."""
    return Plan([xadd_command(stream, fields, maxlen)], _nothing)


PLANS: dict[str, Callable[..., Plan[Any]]] = {
    "get": get,
    "get_many": get_many,
    "set": set,
    "add": add,
    "set_many": set_many,
    "delete_many": delete_many,
    "exists": exists,
    "incr": incr,
    "pttl": pttl,
    "expire": expire,
    "get_with_ttl": get_with_ttl,
    "replace": replace,
    "publish": publish,
}
"""The store methods a plan carries out, by name: what the ASK path can re-send."""


def ask_commands(method: str, args: tuple[Any, ...]) -> tuple[list[Command], Finish]:
    """The raw commands that carry out a one-key store call, and how to read their replies
    (the key moved to the importing node, which serves it only right after ASKING)."""
    if method not in PLANS:
        raise ValueError(f"no ASK form for {method}")
    plan = PLANS[method](*args)
    return plan.commands, plan.finish
