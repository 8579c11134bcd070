"""``kvcache doctor``: one screen that says whether this process can use its Redis, and if
not, at which step it fails: settings, DNS, TCP, TLS, AUTH (password, ACL or IAM token), mode
and topology, round-trip latency, and the cache's own verdict (its state machine).

Every step is bounded by the settings' ``connect_timeout`` (DNS, TCP, TLS, AUTH) or
``op_timeout`` (each PING). A step that cannot run because an earlier one failed is skipped;
the cache's verdict always runs. Secrets are never printed: the URL is redacted, the signing
key masked, an IAM token never shown.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kvcache._core.events import ErrorEvent
from kvcache._core.instruments import error_type
from kvcache._core.state import State
from kvcache._redis.slots import SLOTS
from kvcache._redis.url import redact_url
from kvcache.errors import KVCacheError
from kvcache.settings import KVCacheSettings

Status = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "--"}
CERT_WARN_DAYS = 14


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    target: str  # the URL, redacted
    settings: dict[str, Any]
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "healthy": self.healthy,
            "settings": self.settings,
            "checks": [asdict(check) for check in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def render(self) -> str:
        lines = [f"kvcache doctor: {self.target}"]
        shown = ("mode", "namespace", "op_timeout", "connect_timeout", "fallback", "serializer")
        lines.append("  " + "  ".join(f"{k}={self.settings.get(k)}" for k in shown))
        if self.settings.get("iam", {}).get("enabled"):
            iam = self.settings["iam"]
            lines.append(f"  iam: {iam['service']} {iam['name']} user={iam['user_id']}")
        for check in self.checks:
            took = "" if check.seconds is None else f" ({check.seconds * 1e3:.1f} ms)"
            lines.append(f"  {check.name:<9} {MARKS[check.status]:<4}  {check.detail}{took}")
        verdict = "HEALTHY" if self.healthy else "UNHEALTHY"
        warned = [c.name for c in self.checks if c.status == "warn"]
        lines.append(verdict + (f" (warnings: {', '.join(warned)})" if warned else ""))
        return "\n".join(lines)


def masked_settings(settings: KVCacheSettings) -> dict[str, Any]:
    """The resolved settings, fit to print: URL redacted, secrets masked."""
    shown = settings.model_dump(mode="json", exclude={"url", "serializer", "signing_key"})
    shown["url"] = redact_url(settings.url.get_secret_value())
    shown["mode"] = settings.resolved_mode
    serializer = settings.serializer
    shown["serializer"] = serializer if isinstance(serializer, str) else type(serializer).__name__
    shown["signing_key"] = "***" if settings.signing_key else None
    return shown


def diagnose(settings: KVCacheSettings, *, samples: int = 50) -> Report:
    """Run every check against the settings' Redis (nothing is changed there but 16
    short-lived keys of the doctor's own, in the namespace, each set then deleted)."""
    checks: list[Check] = []
    run = _Runner(checks)
    if settings.scheme == "memory":
        run.skip("network", "memory:// is an in-process store: nothing to reach")
    else:
        _network_checks(settings, run, samples)
    run.check("cache", lambda: _cache_verdict(settings))
    return Report(redact_url(settings.url.get_secret_value()), masked_settings(settings), checks)


class _Runner:
    """Runs checks in order, timing each; after a failure the network steps are skipped."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        self.blocked: str | None = None  # the failed step that later ones depend on

    def check(self, name: str, step: Callable[[], Check], *, needs_network: bool = False) -> Check:
        if needs_network and self.blocked is not None:
            return self.skip(name, f"skipped: {self.blocked} failed")
        started = time.perf_counter()
        try:
            result = step()
        except Exception as exc:  # a step's own bug or an unexpected error: say which
            result = Check(name, "fail", _failure(exc))
        if result.seconds is None:
            result.seconds = time.perf_counter() - started
        self.checks.append(result)
        if result.status == "fail" and needs_network:
            self.blocked = name
        return result

    def skip(self, name: str, detail: str) -> Check:
        check = Check(name, "skip", detail)
        self.checks.append(check)
        return check


def _failure(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    message = str(cause) or str(exc)
    return f"{error_type(exc)}: {message}" if message else error_type(exc)


# -- the network steps -------------------------------------------------------------------


def _network_checks(settings: KVCacheSettings, run: _Runner, samples: int) -> None:
    from kvcache._redis.auth import connection_policy
    from kvcache._redis.factory import seed_address, sync_client

    timeout = settings.connect_timeout
    unix = settings.scheme == "unix"
    host, port = ("", 0) if unix else seed_address(settings)
    if unix:
        run.skip("dns", "unix socket")
    else:
        run.check("dns", lambda: _dns(host, port, timeout), needs_network=True)
    policy = connection_policy(settings)
    client = sync_client(settings, policy=policy)
    client_kwargs = client.connection_pool.connection_kwargs
    try:
        run.check("tcp", lambda: _tcp(client_kwargs, timeout), needs_network=True)
        if settings.scheme == "rediss":
            run.check("tls", lambda: _tls(client, timeout), needs_network=True)
        else:
            run.skip("tls", f"not used ({settings.scheme}://)")
        run.check("auth", lambda: _auth(settings, client, policy, timeout), needs_network=True)
        run.check("mode", lambda: _mode(settings, client), needs_network=True)
        run.check("latency", lambda: _latency(settings, client, samples), needs_network=True)
    finally:
        client.close()
        if policy is not None:
            policy.close()  # closes only a provider it made (the IAM one from the settings)


def _bounded(action: Callable[[], Any], timeout: float, what: str) -> Any:
    """``action()`` in a daemon thread, given up after ``timeout`` (getaddrinfo has none)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(action())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, name="kvcache-doctor", daemon=True)
    worker.start()
    worker.join(timeout)
    if failure:
        raise failure[0]
    if not result:
        raise TimeoutError(f"{what} took more than {timeout} s")
    return result[0]


def _dns(host: str, port: int, timeout: float) -> Check:
    infos = _bounded(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout, "DNS"
    )
    addresses = sorted({info[4][0] for info in infos})
    return Check("dns", "ok", f"{host} -> {', '.join(addresses)}", data={"addresses": addresses})


def _tcp(kwargs: dict[str, Any], timeout: float) -> Check:
    if "path" in kwargs:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(kwargs["path"])
        finally:
            sock.close()
        return Check("tcp", "ok", f"connected to {kwargs['path']}")
    where = (kwargs["host"], kwargs["port"])
    with socket.create_connection(where, timeout=timeout) as sock:
        peer = sock.getpeername()
    return Check("tcp", "ok", f"connected to {peer[0]}:{peer[1]}")


def _tls(client: Any, timeout: float) -> Check:
    """redis-py's own TCP + TLS handshake, with every ``ssl_*`` option of the URL (CA file or
    data, client certificate and its password, minimum version, ciphers). Bounded as a
    whole: an encrypted key without its password would make OpenSSL prompt and wait."""
    connection = client.connection_pool.make_connection()
    tls = _bounded(connection._connect, timeout, "the TLS handshake")
    try:
        version, cipher = tls.version(), (tls.cipher() or ("?",))[0]
        cert = tls.getpeercert() or {}
    finally:
        tls.close()
    detail = f"{version}, {cipher}"
    data: dict[str, Any] = {"version": version, "cipher": cipher}
    if "notAfter" in cert:
        days = (ssl.cert_time_to_seconds(str(cert["notAfter"])) - time.time()) / 86400
        data["certificate_days_left"] = math.floor(days)
        detail += f"; certificate valid {math.floor(days)} more days"
        if days < CERT_WARN_DAYS:
            return Check("tls", "warn", detail + " (renew it soon)", data=data)
    return Check("tls", "ok", detail, data=data)


def _auth(settings: KVCacheSettings, client: Any, policy: Any, timeout: float) -> Check:
    """A fresh connection's whole handshake (AUTH with the password, ACL user or IAM
    token, then PING), as every new connection of the cache makes it."""
    kwargs = client.connection_pool.connection_kwargs
    if settings.iam.enabled:
        how = f"IAM token for {settings.iam.user_id} ({settings.iam.service})"
    elif kwargs.get("username"):
        how = f"ACL user {kwargs['username']}"
    elif kwargs.get("password"):
        how = "password"
    elif policy is not None:
        how = "credential provider"
    else:
        how = "no credentials"
    if settings.iam.enabled:  # boto3's chain may ask IMDS or STS first: bounded
        _bounded(policy.provider.token, timeout, "resolving AWS credentials")
    connection = client.connection_pool.make_connection()
    try:
        connection.connect()
        connection.send_command("PING")
        connection.read_response()
    finally:
        connection.disconnect()
    return Check("auth", "ok", f"{how}: AUTH + PING accepted", data={"method": how})


def _mode(settings: KVCacheSettings, client: Any) -> Check:
    """What the server is (standalone, cluster, or something that refuses CLUSTER: a proxy,
    or an ACL without it), and whether ``mode`` fits it."""
    import redis

    configured = settings.resolved_mode
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.ResponseError:  # a proxy or an ACL may refuse INFO
        version = "?"
    try:
        slots = client.execute_command("CLUSTER", "SLOTS")
    except redis.ResponseError as exc:
        if "cluster support disabled" in str(exc).lower():
            detail = f"standalone server (Redis {version})"
            if configured == "cluster":
                return Check("mode", "fail", detail + "; but mode=cluster: use auto or standalone")
            return Check("mode", "ok", detail, data={"server": "standalone", "version": version})
        detail = f"CLUSTER SLOTS refused ({exc}): a proxy, or an ACL without it"
        data = {"server": "unknown", "version": version}
        if configured == "standalone":  # one client for one address: what a proxy needs
            return Check("mode", "ok", detail + "; mode=standalone fits a proxy", data=data)
        return Check("mode", "fail", detail + f"; mode={configured} needs it", data=data)
    nodes = _slot_table(slots)
    covered = sum(node["slots"] for node in nodes)
    table = ", ".join(
        f"{node['primary']} ({node['slots']} slots, {node['replicas']} replicas)" for node in nodes
    )
    data = {"server": "cluster", "version": version, "primaries": nodes, "slots": covered}
    detail = f"cluster (Redis {version}): {len(nodes)} primaries: {table}"
    if covered < SLOTS:
        return Check("mode", "fail", f"{detail}; {SLOTS - covered} slots unassigned", data=data)
    if configured == "standalone":
        return Check(
            "mode",
            "warn",
            f"{detail}; mode=standalone sends every key to one node: right behind a cluster "
            "proxy, otherwise use mode=cluster",
            data=data,
        )
    return Check("mode", "ok", detail, data=data)


def _slot_table(reply: Any) -> list[dict[str, Any]]:
    by_primary: dict[str, dict[str, Any]] = {}
    for start, end, primary, *replicas in reply:
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        name = f"{host}:{int(primary[1])}"
        node = by_primary.setdefault(name, {"primary": name, "slots": 0, "replicas": 0})
        node["slots"] += int(end) - int(start) + 1
        node["replicas"] = max(node["replicas"], len(replicas))
    return sorted(by_primary.values(), key=lambda node: node["primary"])


def _latency(settings: KVCacheSettings, client: Any, samples: int) -> Check:
    timings: list[float] = []
    for _ in range(max(1, samples)):
        started = time.perf_counter()
        client.ping()
        timings.append(time.perf_counter() - started)
    timings.sort()

    def pct(p: float) -> float:
        return timings[min(len(timings) - 1, math.ceil(p / 100 * len(timings)) - 1)] * 1e3

    data = {
        "samples": len(timings),
        "p50_ms": round(pct(50), 3),
        "p90_ms": round(pct(90), 3),
        "p99_ms": round(pct(99), 3),
        "max_ms": round(timings[-1] * 1e3, 3),
        "mean_ms": round(statistics.fmean(timings) * 1e3, 3),
    }
    detail = (
        f"{len(timings)} PINGs: p50 {data['p50_ms']} ms, p90 {data['p90_ms']} ms, "
        f"p99 {data['p99_ms']} ms, max {data['max_ms']} ms"
    )
    status: Status = "ok"
    if pct(99) / 1e3 > settings.op_timeout / 2:
        status = "warn"
        detail += f"; p99 is over half of op_timeout ({settings.op_timeout} s)"
    return Check("latency", status, detail, data=data, seconds=sum(timings))


# -- the cache's verdict -----------------------------------------------------------------


def _spread_keys(namespace: str, marker: str, buckets: int = 16) -> list[str]:
    """Keys of the doctor's own, one in each 1/16 of the cluster's slots (hash tags), so the
    round trip reaches every node whatever owns what."""
    from redis.crc import key_slot

    found: dict[int, str] = {}
    n = 0
    while len(found) < buckets:
        tag = f"d{n}"
        found.setdefault(key_slot(tag.encode()) * buckets // SLOTS, f"doctor-{{{tag}}}-{marker}")
        n += 1
    return list(found.values())


def _cache_verdict(settings: KVCacheSettings) -> Check:
    """What a Cache built from these settings says: its state after the first-connect
    phase, and a set/get/delete of one key of the doctor's own."""
    from kvcache._shells.cache import Cache

    with Cache.from_settings(settings.model_copy(update={"telemetry": False})) as cache:
        deadline = time.monotonic() + cache._adapter.first_connect_timeout + 0.5
        while (state := cache.state) is State.STARTING and time.monotonic() < deadline:
            time.sleep(0.01)  # the first-connect phase settles: READY, or DEGRADED
        health = cache.health()
        data: dict[str, Any] = {"state": state.value, "last_error": health.last_error}
        if health.shards:
            data["shards"] = {name: s.state.value for name, s in health.shards.items()}
        if state is not State.READY:
            why = f" (last error: {health.last_error})" if health.last_error else ""
            served = "served from memory" if settings.fallback == "memory" else "failing fast"
            detail = f"{state.value.upper()}{why}: calls would be {served}"
            return Check("cache", "fail", detail, data=data)
        marker = uuid.uuid4().hex
        errors: list[ErrorEvent] = []
        cache.on("error", errors.append)  # failures are events, not exceptions
        stored, read = True, True
        try:
            for key in _spread_keys(cache.namespace, marker):
                stored = cache.set(key, marker, ttl=30) and stored
                read = cache.get(key) == marker and read
                cache.delete(key)
        except KVCacheError as exc:
            return Check("cache", "fail", f"READY, but a round trip failed: {_failure(exc)}")
        if errors or not stored or not read or cache.state is not State.READY:
            why = _failure(errors[0].error) if errors else f"state {cache.state.value}"
            detail = f"READY, but the set/get round trip failed: {why}"
            return Check("cache", "fail", detail, data=data)
        shards = f", {len(health.shards)} shards READY" if health.shards else ""
        return Check("cache", "ok", f"READY{shards}; set/get/delete round trip ok", data=data)
