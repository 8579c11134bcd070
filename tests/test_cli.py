"""The ``kvcache`` command: ``doctor`` against healthy, refused, blackholed, wrong-password,
TLS and cluster targets (exit codes, masked secrets), and ``demo`` run to the end with a short
duration, with a private redis-server, a given one, and none."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kvcache.cli import main
from kvcache.cli.demo import run
from kvcache.testing import ChaosProxy, RedisClusterServer, RedisServer, TLSFiles

CHECKS = ["dns", "tcp", "tls", "auth", "mode", "latency", "cache"]


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Exit status and the JSON report."""
    status = main(["doctor", "--json", "--samples", "10", *args])
    return status, json.loads(capsys.readouterr().out)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def detail(report: dict[str, Any], name: str) -> str:
    return next(str(c["detail"]) for c in report["checks"] if c["name"] == name)


# -- doctor ----------------------------------------------------------------------------------


def test_doctor_on_a_healthy_redis(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = doctor(capsys, "--url", redis_url)
    assert status == 0
    assert report["healthy"] is True
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert statuses(report) == {**dict.fromkeys(CHECKS, "ok"), "tls": "skip"}
    assert detail(report, "mode").startswith("standalone server (Redis ")
    latency = next(c for c in report["checks"] if c["name"] == "latency")["data"]
    assert latency["samples"] == 10
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert detail(report, "cache") == "READY; set/get/delete round trip ok"

    assert main(["doctor", "--url", redis_url, "--samples", "5"]) == 0
    screen = capsys.readouterr().out
    assert screen.splitlines()[-1] == "HEALTHY"
    assert all(f"  {name:<9} " in screen for name in CHECKS)


def test_doctor_on_a_refused_port_fails_fast(
    chaos_proxy: ChaosProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    chaos_proxy.refuse()
    started = time.monotonic()
    status, report = doctor(capsys, "--url", chaos_proxy.url)
    assert time.monotonic() - started < 3
    assert status == 1
    assert report["healthy"] is False
    assert statuses(report) == {
        "dns": "ok",
        "tcp": "fail",
        "tls": "skip",
        "auth": "skip",
        "mode": "skip",
        "latency": "skip",
        "cache": "fail",
    }
    assert "ConnectionRefusedError" in detail(report, "tcp")
    assert detail(report, "cache").startswith("DEGRADED (last error: ConnectionError)")


def test_doctor_on_a_blackholed_redis_is_bounded(
    chaos_proxy: ChaosProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    chaos_proxy.blackhole()  # connects are accepted, nothing ever answers
    started = time.monotonic()
    status, report = doctor(capsys, "--url", chaos_proxy.url)
    assert time.monotonic() - started < 8  # connect_timeout per step, the first-connect bound
    assert status == 1
    assert statuses(report) == {
        "dns": "ok",
        "tcp": "ok",
        "tls": "skip",
        "auth": "fail",
        "mode": "skip",
        "latency": "skip",
        "cache": "fail",
    }
    assert "TimeoutError" in detail(report, "auth")
    assert detail(report, "cache").startswith("DEGRADED (last error: TimeoutError)")


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    with RedisServer(password="right-horse-battery") as server:
        yield server


def test_doctor_with_a_wrong_password_fails_at_auth_and_never_prints_it(
    guarded: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVCACHE_SERIALIZER", "pickle")
    monkeypatch.setenv("KVCACHE_SIGNING_KEY", "signing-secret-0123456789")
    wrong = f"redis://:wrong-staple@127.0.0.1:{guarded.port}/0"
    status, report = doctor(capsys, "--url", wrong)
    assert status == 1
    assert statuses(report)["auth"] == "fail"
    assert statuses(report)["mode"] == "skip"
    assert "AuthenticationError" in detail(report, "auth")
    assert report["target"] == f"redis://***@127.0.0.1:{guarded.port}/0"
    assert report["settings"]["signing_key"] == "***"
    assert main(["doctor", "--url", wrong]) == 1
    shown = json.dumps(report) + capsys.readouterr().out
    for secret in ("wrong-staple", "right-horse-battery", "signing-secret-0123456789"):
        assert secret not in shown

    status, report = doctor(capsys, "--url", guarded.url)  # the right one
    assert status == 0
    assert detail(report, "auth") == "password: AUTH + PING accepted"
    assert "right-horse-battery" not in json.dumps(report)


def test_doctor_checks_the_tls_handshake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer(tls=TLSFiles.generate(tmp_path)) as server:
        status, report = doctor(capsys, "--url", server.url)
    assert status == 0
    assert statuses(report)["tls"] == "ok"
    tls = next(c for c in report["checks"] if c["name"] == "tls")["data"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["certificate_days_left"] > 14


def test_doctor_on_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisClusterServer(primaries=3) as cluster:
        status, report = doctor(capsys, "--url", cluster.url + "?mode=cluster")
        assert status == 0
        assert statuses(report)["mode"] == "ok"
        mode = next(c for c in report["checks"] if c["name"] == "mode")["data"]
        assert mode["server"] == "cluster"
        assert mode["slots"] == 16384
        assert sorted(node["primary"] for node in mode["primaries"]) == sorted(
            f"127.0.0.1:{port}" for port in cluster.primary_ports
        )
        assert detail(report, "cache") == "READY, 3 shards READY; set/get/delete round trip ok"

        # mode=standalone against a cluster node (not a proxy): keys of other nodes fail.
        status, report = doctor(capsys, "--url", cluster.url)
        assert status == 1
        assert statuses(report)["mode"] == "warn"
        assert "use mode=cluster" in detail(report, "mode")
        assert "MovedError" in detail(report, "cache")


def test_doctor_rejects_unusable_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["doctor", "--url", "http://example.com"]) == 2
    assert "unusable settings" in capsys.readouterr().err
    monkeypatch.setenv("KVCACHE_SERIALIZER", "pickle")
    monkeypatch.setenv("KVCACHE_SIGNING_KEY", "short")
    assert main(["doctor", "--url", "redis://127.0.0.1:1"]) == 2
    assert "at least 16 bytes" in capsys.readouterr().err


# -- demo ------------------------------------------------------------------------------------


def test_demo_shows_traffic_served_through_both_outages() -> None:
    out = io.StringIO()
    done = run(6, out=out, workers=2)
    assert done.ok
    timeline = done.seconds
    text = out.getvalue()
    assert [s.phase for s in timeline] == [
        "healthy", "healthy", "refused", "back", "partition", "back",
    ]  # fmt: skip
    for second in timeline:
        assert second.ops > 0
        assert second.stale == second.raised == 0
    by_phase = {s.phase: s for s in timeline}
    assert by_phase["healthy"].fallback_hits + by_phase["healthy"].fallback_misses == 0
    for outage in ("refused", "partition"):  # served from memory, not Redis
        from_redis = by_phase[outage].hits + by_phase[outage].misses
        from_memory = by_phase[outage].fallback_hits + by_phase[outage].fallback_misses
        # Calls that finished between the previous second's count and the cut still count
        # here: a few on a loaded machine, never a real share.
        assert from_redis <= from_memory / 10, (from_redis, from_memory)
    assert "kvcache: lost RedisStore" in text  # the one log line of each transition
    assert "Final state: ready. Stale reads: 0. Exceptions raised to callers: 0." in text


def test_demo_command_with_a_plot(tmp_path: Path) -> None:
    picture = tmp_path / "timeline.png"
    done = subprocess.run(
        [sys.executable, "-m", "kvcache.cli", "demo", "--duration", "5", "--plot", str(picture)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Started a private redis-server" in done.stdout
    assert "Stale reads: 0" in done.stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_without_redis_server_runs_on_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvcache.cli", "demo", "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KVCACHE_REDIS_SERVER": "/nonexistent/redis-server"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "redis-server not found" in done.stdout
    assert "MemoryStore(" in done.stdout
    assert "Exceptions raised to callers: 0" in done.stdout


def test_demo_against_a_given_url(redis_url: str) -> None:
    out = io.StringIO()
    done = run(5, url=redis_url, out=out, workers=1)
    assert done.ok
    assert "through a ChaosProxy" in out.getvalue()
    assert sum(s.fallback_hits + s.fallback_misses for s in done.seconds) > 0
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("demo:*") == []  # cleared at the end


def test_demo_refuses_a_tls_url_it_cannot_proxy() -> None:
    with pytest.raises(SystemExit, match="takes a redis:// URL"):
        run(5, url="rediss://cache.example:6379/0", out=io.StringIO())


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("kvcache ")


def test_doctor_when_cluster_is_refused_like_behind_a_proxy(
    guarded: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with guarded.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", "reset", "on", ">app-pass", "~*", "+@all")
        admin.execute_command("ACL", "SETUSER", "app", "-cluster", "-info")
    url = f"redis://app:app-pass@127.0.0.1:{guarded.port}/0"
    status, report = doctor(capsys, "--url", url)
    assert status == 0
    assert statuses(report)["mode"] == "ok"
    assert detail(report, "mode").endswith("mode=standalone fits a proxy")
    assert detail(report, "auth") == "ACL user app: AUTH + PING accepted"
    status, report = doctor(capsys, "--url", url + "?mode=auto")
    assert status == 1
    assert statuses(report)["mode"] == "fail"


@pytest.mark.parametrize(
    "args",
    [
        ["doctor", "--samples", "0"],
        ["doctor", "--samples", "-3"],
        ["demo", "--workers", "0"],
        ["demo", "--duration", "0"],
        ["demo", "--duration", "-5"],
        ["demo", "--duration", "nan"],
    ],
    ids=" ".join,
)
def test_a_count_or_duration_that_cannot_work_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    # Before: doctor --samples 0 ran without a single PING for its figures, demo --workers 0
    # drove no traffic, demo --duration 0 silently ran for 5 s.
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert f"argument {args[1]}" in capsys.readouterr().err
