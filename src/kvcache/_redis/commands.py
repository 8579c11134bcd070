"""Raw commands, shared by the sync and async stores and their plans (``plans.py``): SET with
its options, the compare-and-set script, XADD, UNLINK batches, ASKING before each command;
and the bounds the two stores share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def one_unlink(keys: Sequence[bytes], cluster: bool) -> bool:
    """Can one UNLINK carry ``keys``?"""
    return len(keys) <= UNLINK_BATCH and (not cluster or len(slot_groups(keys)) == 1)


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
