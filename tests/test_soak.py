"""A short seeded soak in CI: worker processes through their own ChaosProxies, random
operations, a seeded schedule of faults (refuse, blackhole, reset, latency above and below
op_timeout, one process partitioned, kill -9 and restart, CLIENT KILL), then the whole
history checked (docs/consistency.md). Longer runs: ``python -m kvcache.testing.soak``."""

from __future__ import annotations

import pytest

from kvcache.errors import ConfigurationError
from kvcache.testing.soak.runner import run

pytestmark = pytest.mark.redis


def test_a_seeded_soak_against_standalone_redis_finds_no_violation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = run(20261202, 20, 3)
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert " records, faults " in printed


def test_the_soak_catches_stale_reads_of_a_cache_that_forgets_its_outage_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same soak over caches told to forget what they wrote while Redis was away (a
    journal of one key that, full, is ignored): the checker must see the stale reads."""
    status = run(20261202, 20, 3, journal_size=1, journal_overflow="ignore")
    printed = capsys.readouterr().out
    assert status == 1, printed
    assert "rule 1" in printed or "rule 2" in printed, printed


@pytest.mark.parametrize("option", [{"near_cache": True}, {"stale_ttl": 30.0}])
def test_the_soak_refuses_options_its_workers_cannot_record(option: dict[str, object]) -> None:
    """On the caches shared by many threads or tasks, a near-cache hit or a fail-safe
    answer would be recorded as Redis's, and the checker would report stale reads the model
    allows: refused, before any server starts (the soak has one-caller caches of each)."""
    with pytest.raises(ConfigurationError, match=next(iter(option))):
        run(1, 1, 1, **option)


def test_a_seeded_soak_against_a_redis_cluster_finds_no_violation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """3 primaries with a replica each: primaries killed (their replicas elected), stopped
    and failed over, slots with the soak's keys moved under load, one primary removed,
    beside the proxy faults of each worker's own proxy of every node."""
    status = run(20261203, 20, 3, topology="cluster")
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert " records, faults " in printed
