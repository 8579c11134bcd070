"""The pure cluster core: slot maps, the refresh schedule, ASK re-sends. No I/O."""

from __future__ import annotations

from redis.crc import key_slot

from kvcache._cluster.refresh import RefreshSchedule
from kvcache._cluster.topology import Topology
from kvcache._redis.plans import ask_commands
from kvcache._redis.slots import SLOTS, slot_groups

REPLY = [
    [0, 8191, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.2", 7001, b"id2"]],
    [8192, 16383, [b"", 7002, b"id3"]],  # empty host: the node asked
]


def test_parse_maps_every_slot_remaps_and_fills_an_empty_host() -> None:
    topology = Topology.parse(REPLY, "seed", lambda w: ("proxy", w[1] + 100))
    assert topology.owners[0] == topology.owners[8191] == "proxy:7100"
    assert topology.owners[8192] == "proxy:7102"
    assert topology.primaries == {"proxy:7100", "proxy:7102"}  # replicas are not shards
    unremapped = Topology.parse(REPLY, "seed")
    assert unremapped.owners[16383] == "seed:7002"
    assert unremapped != topology
    assert Topology.parse(REPLY, "seed") == unremapped  # compared by value


def test_moved_reassigns_one_slot_and_single_covers_all() -> None:
    topology = Topology.parse(REPLY, "seed")
    moved = topology.moved(5, "10.0.0.9:7009")
    assert moved.owners[5] == "10.0.0.9:7009"
    assert moved.owners[4] == topology.owners[5] == "10.0.0.1:7000"
    single = Topology.single("h:1")
    assert single.primaries == {"h:1"}
    assert not single.cluster
    assert len(single.owners) == SLOTS
    assert single.owner(b"anything") == "h:1"


def test_slot_groups_keep_hash_tags_together_in_first_seen_order() -> None:
    keys = [b"{u1}:a", b"x", b"{u1}:b", b"y"]
    groups = slot_groups(keys)
    assert [b"{u1}:a", b"{u1}:b"] in groups
    assert sum(len(g) for g in groups) == 4
    assert all(len({key_slot(k) for k in g}) == 1 for g in groups)
    assert groups[0][0] == b"{u1}:a"


def test_schedule_is_jittered_rate_limited_and_single_flight() -> None:
    now = [0.0]
    schedule = RefreshSchedule(10.0, 0.5, clock=lambda: now[0], jitter=lambda: 0.5)
    assert not schedule.claim()  # first check one interval after start
    now[0] = 10.0
    assert schedule.claim()
    assert not schedule.claim()  # one at a time
    schedule.done()
    assert schedule.next_at == 20.0
    schedule.soon()  # asked for early, but not within min_gap of the last check
    assert schedule.next_at == 10.5
    now[0] = 10.5
    assert schedule.claim()
    schedule.done()
    jittered = RefreshSchedule(10.0, 0.5, clock=lambda: 0.0, jitter=lambda: 0.0)
    assert jittered.next_at == 8.0  # 0.8x .. 1.2x the interval


def test_schedule_backs_off_from_min_gap_to_interval_while_a_shard_is_down() -> None:
    now = [0.0]
    schedule = RefreshSchedule(3.0, 0.5, clock=lambda: now[0], jitter=lambda: 0.5)
    gaps = []
    for _ in range(5):
        now[0] = schedule.next_at
        assert schedule.claim()
        schedule.done(urgent=True)
        gaps.append(schedule.next_at - now[0])
    assert gaps == [0.5, 1.0, 2.0, 3.0, 3.0]
    now[0] = schedule.next_at
    assert schedule.claim()
    schedule.done()  # all shards up again: back to the interval, and the backoff restarts
    assert schedule.next_at == now[0] + 3.0
    now[0] = schedule.next_at
    assert schedule.claim()
    schedule.done(urgent=True)
    assert schedule.next_at == now[0] + 0.5


def test_ask_commands_cover_every_one_key_call() -> None:
    commands, finish = ask_commands("set", (b"k", b"v", 100))
    assert commands == [("SET", b"k", b"v", "PX", 100)]
    assert finish([True]) is None
    commands, finish = ask_commands("add", (b"k", b"v", None))
    assert commands == [("SET", b"k", b"v", "NX")]
    assert finish([True]) is True
    assert finish([None]) is False
    commands, finish = ask_commands("incr", (b"k", 2, None))
    assert commands == [("INCRBY", b"k", 2)]
    assert finish([5]) == 5
    commands, finish = ask_commands("expire", (b"k", None))
    assert commands == [("PERSIST", b"k"), ("EXISTS", b"k")]
    assert finish([False, 1]) is True
    commands, finish = ask_commands("get_many", ([b"a"],))
    assert commands == [("MGET", b"a")]
    assert finish([[b"1"]]) == [b"1"]
    commands, finish = ask_commands("delete_many", ([b"a", b"b"],))
    assert commands == [("UNLINK", b"a", b"b")]
    assert finish([1]) == 1
