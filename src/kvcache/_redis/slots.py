"""A key's Redis Cluster slot: redis-py's CRC16 of the key or of its ``{hash tag}``."""

from __future__ import annotations

from collections.abc import Sequence

from redis.crc import key_slot  # pure: CRC16 (binascii)

SLOTS = 16384

__all__ = ["SLOTS", "key_slot", "slot_groups"]


def slot_groups(keys: Sequence[bytes]) -> list[list[bytes]]:
    """``keys`` grouped by slot, in first-seen order (cluster nodes refuse cross-slot
    multi-key commands)."""
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return list(groups.values())
