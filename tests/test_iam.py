"""IAM authentication for ElastiCache / MemoryDB, offline.

Tokens are signed by botocore with static credentials and checked against an independent
SigV4 computation. Then an IAM-enforcing stand-in: real TLS redis-servers (certificates made
by trustme) whose ACL user accepts, as its passwords, exactly the tokens that are valid at the
test's clock; the test rotates them, revokes them and kills connections, and the cache must
reconnect with a fresh token by itself, with no error reaching the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

import boto3
import botocore.auth
import botocore.session
import pytest
import redis
from botocore.model import ServiceId
from botocore.signers import RequestSigner

from conftest import Traffic, listener_has_read_all, ready_cache
from kvcache import Cache, State
from kvcache._near.cache import ALL, stream_key
from kvcache.aws import TOKEN_LIFETIME, IAMCredentialProvider, sign_token
from kvcache.cli import main
from kvcache.errors import ConfigurationError
from kvcache.settings import KVCacheSettings
from kvcache.stores import open_store
from kvcache.testing import RedisClusterServer, RedisServer, TLSFiles

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"
NAME = "my-cache"
USER = "app-user"
START = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.timezone.utc)
UTC = datetime.timezone.utc


class FakeClock:
    """Wall time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class CountingSession:
    """A real boto3 Session (static credentials, no network) that records which thread
    resolved credentials, and can be made to fail or to be slow."""

    def __init__(self, token: str | None = None) -> None:
        self._session = boto3.Session(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            aws_session_token=token,
            region_name=REGION,
        )
        self.region_name = REGION
        self.threads: list[str] = []
        self.fail = False
        self.delay = 0.0

    def get_credentials(self) -> Any:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the instance metadata service timed out")
        return self._session.get_credentials()


def provider(clock: Callable[[], float], session: Any = None, **options: Any) -> Any:
    made = IAMCredentialProvider(
        "elasticache",
        name=NAME,
        user_id=USER,
        region=REGION,
        session=session or CountingSession(),
        clock=clock,
        **options,
    )
    return made


def frozen(token: str | None = None) -> Any:
    return CountingSession(token)._session.get_credentials().get_frozen_credentials()


# -- the token -------------------------------------------------------------------------------


def independent_signature(token: str, service: str, region: str) -> str:
    """SigV4 for a presigned GET, computed by hand from AWS's specification."""
    host, _, query = token.partition("/?")
    params = [(k, v) for k, v in parse_qsl(query) if k != "X-Amz-Signature"]
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params)
    )
    canonical_request = "\n".join(
        ["GET", "/", canonical_query, f"host:{host}", "", "host", hashlib.sha256(b"").hexdigest()]
    )
    stamp = dict(params)["X-Amz-Date"]
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            stamp,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("service", "serverless", "session_token"),
    [("elasticache", False, None), ("elasticache", True, None), ("memorydb", False, "FwoG/x+y")],
)
def test_token_carries_the_documented_query_and_a_correct_signature(
    service: Any, serverless: bool, session_token: str | None
) -> None:
    token = sign_token(
        frozen(session_token),
        service=service,
        name="My-Cache",
        user_id=USER,
        region=REGION,
        serverless=serverless,
        at=START,
    )
    assert not token.startswith("https://")
    host, _, query = token.partition("/?")
    assert host == "my-cache"  # the cache name, lowercased; not an endpoint
    params = dict(parse_qsl(query))
    assert params["Action"] == "connect"
    assert params["User"] == USER
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Expires"] == "900"
    assert params["X-Amz-Date"] == "20261123T120000Z"
    assert params["X-Amz-Credential"] == f"{ACCESS_KEY}/20261123/{REGION}/{service}/aws4_request"
    assert params["X-Amz-SignedHeaders"] == "host"
    assert ("ResourceType" in params) is serverless
    if serverless:
        assert params["ResourceType"] == "ServerlessCache"
    assert params.get("X-Amz-Security-Token") == session_token
    assert params["X-Amz-Signature"] == independent_signature(token, service, REGION)


def test_token_equals_what_botocores_presigner_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS's documented recipe (RequestSigner.generate_presigned_url), at the same instant."""
    credentials = CountingSession()._session.get_credentials()
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda *_, **__: START.replace(tzinfo=None)
    )
    signer = RequestSigner(
        ServiceId("elasticache"),
        REGION,
        "elasticache",
        "v4",
        credentials,
        botocore.session.get_session().get_component("event_emitter"),
    )
    presigned = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"https://{NAME}/?Action=connect&User={USER}",
            "body": {},
            "headers": {},
            "context": {},
        },
        operation_name="connect",
        expires_in=900,
        region_name=REGION,
    )
    ours = sign_token(
        credentials.get_frozen_credentials(),
        service="elasticache",
        name=NAME,
        user_id=USER,
        region=REGION,
        at=START,
    )
    assert dict(parse_qsl(ours.partition("?")[2])) == dict(
        parse_qsl(presigned.removeprefix("https://").partition("?")[2])
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"service": "dynamodb"}, "service must be one of"),
        ({"name": ""}, "cache name and the user id"),
        ({"user_id": ""}, "cache name and the user id"),
        ({"service": "memorydb", "serverless": True}, "ElastiCache only"),
        ({"refresh_margin": 30}, "refresh_margin"),
        ({"refresh_margin": 900}, "refresh_margin"),
    ],
)
def test_provider_rejects_bad_configuration(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"name": NAME, "user_id": USER, "session": CountingSession()}
    service = options.pop("service", "elasticache")
    with pytest.raises(ConfigurationError, match=message):
        IAMCredentialProvider(service, **{**arguments, **options})


def test_region_comes_from_the_session_or_is_required() -> None:
    made = IAMCredentialProvider(name=NAME, user_id=USER, session=CountingSession())
    assert made.region == REGION
    regionless = CountingSession()
    regionless.region_name = None  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="region"):
        IAMCredentialProvider(name=NAME, user_id=USER, session=regionless)


# -- the token's lifecycle ---------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def token_time(token: str) -> datetime.datetime:
    stamp = dict(parse_qsl(token.partition("?")[2]))["X-Amz-Date"]
    return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def test_token_is_cached_refreshed_ahead_in_the_background_and_never_nearly_expired() -> None:
    clock = FakeClock()
    session = CountingSession()
    iam = provider(clock, session, refresh_margin=300)
    try:
        user, first = iam.get_credentials()
        assert user == USER
        assert iam.get_credentials()[1] == first  # cached
        assert session.threads == [threading.current_thread().name]  # startup: once, inline

        clock.advance(TOKEN_LIFETIME - 300 - 1)  # not due yet
        time.sleep(0.05)
        assert iam.get_credentials()[1] == first
        clock.advance(2)  # due: re-signed in the background (the old one served meanwhile)
        wait_for(lambda: iam.get_credentials()[1] != first)
        second = iam.get_credentials()[1]
        assert token_time(second) == datetime.datetime.fromtimestamp(clock.now, UTC)
        # credentials were resolved again only off the request path
        assert set(session.threads[1:]) == {"kvcache-iam-refresh"}

        session.fail = True  # the refresher cannot resolve credentials any more ...
        clock.advance(TOKEN_LIFETIME - 60 + 1)  # ... and the token is within a minute of expiry
        third = iam.get_credentials()[1]
        assert third != second  # never handed out: signed now, with the cached credentials
        assert token_time(third) == datetime.datetime.fromtimestamp(clock.now, UTC)
        assert session.threads.count(threading.current_thread().name) == 1
    finally:
        iam.close()


def test_a_slow_credential_source_never_delays_a_connection() -> None:
    clock = FakeClock()
    session = CountingSession()
    iam = provider(clock, session)
    try:
        iam.get_credentials()
        session.delay = 1.0  # IMDS / STS being slow
        clock.advance(TOKEN_LIFETIME - 200)  # due
        started = time.monotonic()
        for _ in range(20):
            iam.get_credentials()
        assert time.monotonic() - started < 0.5
        wait_for(lambda: len(session.threads) >= 2)
    finally:
        iam.close()


def test_a_failing_refresh_is_logged_once_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    session = CountingSession()
    iam = provider(clock, session)
    try:
        first = iam.get_credentials()[1]
        session.fail = True
        clock.advance(TOKEN_LIFETIME - 200)
        for attempt in range(2, 5):  # the first attempt, then later ones RETRY_AFTER apart
            wait_for(lambda: iam._failed_at == clock.now)
            assert len(session.threads) == attempt
            clock.advance(6)
        assert iam.get_credentials()[1] == first  # still valid: still served
        warnings = [r for r in caplog.records if r.name == "kvcache.aws"]
        assert len(warnings) == 1
        assert "RuntimeError" in warnings[0].getMessage()
        session.fail = False
        clock.advance(6)
        wait_for(lambda: iam.get_credentials()[1] != first)
    finally:
        iam.close()


def test_tokens_and_secrets_stay_out_of_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    iam = provider(FakeClock())
    try:
        token = iam.get_credentials()[1]
        signature = dict(parse_qsl(token.partition("?")[2]))["X-Amz-Signature"]
        text = repr(iam) + caplog.text
        assert signature not in text
        assert SECRET_KEY not in text
    finally:
        iam.close()


def test_the_refresher_stops_with_its_provider() -> None:
    iam = provider(FakeClock())
    iam.get_credentials()
    assert any(t.name == "kvcache-iam-refresh" for t in threading.enumerate())
    iam.close()
    wait_for(lambda: not any(t.name == "kvcache-iam-refresh" for t in threading.enumerate()))


def test_a_clock_that_went_back_never_makes_an_old_token_usable() -> None:
    clock = FakeClock()
    iam = provider(clock)
    try:
        first = iam.get_credentials()[1]
        clock.advance(-3600)  # NTP stepped the clock back an hour
        second = iam.get_credentials()[1]
        assert second != first
        assert token_time(second) == datetime.datetime.fromtimestamp(clock.now, UTC)
    finally:
        iam.close()


class BrokenCredentials:
    def get_frozen_credentials(self) -> None:
        return None  # signing with this fails


def test_the_refresher_survives_an_error_while_signing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    session = CountingSession()
    iam = provider(clock, session)
    try:
        first = iam.get_credentials()[1]
        real = session._session
        session._session = type("S", (), {"get_credentials": lambda self: BrokenCredentials()})()
        clock.advance(TOKEN_LIFETIME - 200)
        wait_for(lambda: any(r.name == "kvcache.aws" for r in caplog.records))
        session._session = real
        clock.advance(6)
        wait_for(lambda: iam.get_credentials()[1] != first)  # the same thread, still alive
    finally:
        iam.close()


# -- settings ----------------------------------------------------------------------------------


IAM = {"enabled": True, "name": NAME, "user_id": USER, "region": REGION}


@pytest.mark.parametrize(
    ("url", "iam", "message"),
    [
        ("redis://cache.example:6379/0", IAM, "needs TLS"),
        ("rediss://app-user:secret@cache.example:6379", IAM, "must not carry a password"),
        ("rediss://someone@cache.example:6379", IAM, "user name must be iam.user_id"),
        ("rediss://cache.example:6379/0?password=secret", IAM, "username=/password="),
        ("rediss://cache.example:6379/0?mode=cluster&username=x", IAM, "username=/password="),
        ("rediss://cache.example", {"enabled": True, "name": NAME}, "iam.user_id"),
        ("rediss://cache.example", {**IAM, "service": "memorydb", "serverless": True}, "only"),
        ("rediss://cache.example", {**IAM, "max_connection_age": 13 * 3600}, "max_connection_age"),
    ],
)
def test_iam_settings_are_checked(url: str, iam: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        KVCacheSettings(url=url, iam=iam)
    assert "secret" not in str(caught.value)


def test_iam_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "URL": "rediss://app-user@cache.example:6379/0",
        "IAM__ENABLED": "true",
        "IAM__SERVICE": "memorydb",
        "IAM__NAME": "Orders",
        "IAM__USER_ID": USER,
        "IAM__REGION": REGION,
        "IAM__MAX_CONNECTION_AGE": "3600",
    }.items():
        monkeypatch.setenv(f"KVCACHE_{name}", value)
    settings = KVCacheSettings()
    assert settings.iam.service == "memorydb"
    assert settings.iam.max_connection_age == 3600
    assert settings.redis_url == "rediss://cache.example:6379/0"  # the provider gives the user


# -- an IAM-enforcing stand-in: real TLS redis-servers --------------------------------------------


class IAMStandIn:
    """Plays ElastiCache's IAM check on real servers: the ACL user's passwords are exactly
    the tokens ``allow`` names (by their signing time); ``kill`` drops the user's
    connections, as a node restart or AWS's 12-hour limit would."""

    def __init__(self, admins: list[redis.Redis]) -> None:
        self.admins = admins

    @staticmethod
    def token_at(when: float) -> str:
        return sign_token(
            frozen(),
            service="elasticache",
            name=NAME,
            user_id=USER,
            region=REGION,
            at=datetime.datetime.fromtimestamp(when, UTC),
        )

    def allow(self, *times: float) -> None:
        self.set_passwords(*(self.token_at(when) for when in times))

    def set_passwords(self, *passwords: str) -> None:
        rules = [f">{password}" for password in passwords]
        for admin in self.admins:
            admin.execute_command(
                "ACL", "SETUSER", USER, "reset", "on", *rules, "~*", "&*", "+@all"
            )
            admin.execute_command("ACL", "LOG", "RESET")

    def refused(self) -> int:
        """AUTH attempts the servers refused since the passwords were last set."""
        return sum(
            int(entry["count"])
            for admin in self.admins
            for entry in admin.acl_log()
            if entry["reason"] == "auth"
        )

    def kill(self) -> int:
        return sum(int(a.execute_command("CLIENT", "KILL", "USER", USER)) for a in self.admins)

    def connection_ids(self) -> set[str]:
        ids = set()
        for admin in self.admins:
            for client in admin.client_list():
                if client.get("user") == USER:
                    ids.add(f"{admin.connection_pool.connection_kwargs['port']}:{client['id']}")
        return ids


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.generate(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_server(tls: TLSFiles) -> Iterator[RedisServer]:
    with RedisServer(tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def tls_cluster(tls: TLSFiles) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3, tls=tls) as cluster:
        yield cluster


def test_a_test_server_is_not_pinged_before_it_listens(tls: TLSFiles) -> None:
    """``RedisServer.start`` talks TLS to its port only once the server says it listens: a
    handshake that a peer resets leaks Python's SSLSocket (its ResourceWarning, at a later
    collection, failed whichever test it landed in; seen under load, at cluster start). Here
    the port is held by a listener that resets every connection, so the server cannot bind."""
    holder = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def reset_each() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = holder.accept()
                accepted.append(1)
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()

    threading.Thread(target=reset_each, daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            RedisServer(port=holder.getsockname()[1], tls=tls).start()
        assert accepted == []  # never a handshake with what was not our server
    finally:
        holder.close()


@contextlib.contextmanager
def enforcing(
    target: RedisServer | RedisClusterServer, tls: TLSFiles
) -> Iterator[tuple[IAMStandIn, FakeClock, IAMCredentialProvider]]:
    """The target's IAM stand-in, accepting the token of now; a clock; a provider on it."""
    ports = target.primary_ports if isinstance(target, RedisClusterServer) else [target.port]
    stand_in = IAMStandIn([redis.Redis(port=p, **tls.client_options()) for p in ports])
    clock = FakeClock()
    stand_in.allow(clock.now)
    iam = provider(clock)
    try:
        yield stand_in, clock, iam
    finally:
        iam.close()
        stand_in.set_passwords("unused")


def server_for(target: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("tls_server" if target == "standalone" else "tls_cluster")


@pytest.fixture(params=["sync", "async"])
def make_cache(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(url: str, provider: Any, iam: Any = None, **options: Any) -> Any:
        """A cache authenticating with ``provider``, READY; ``iam``: IAM settings."""
        settings = KVCacheSettings(url=url, iam={**IAM, **(iam or {})}, **options)
        made.append(ready_cache(request.param, settings, loop, credential_provider=provider))
        return made[-1]

    yield make
    for cache in made:
        cache.close()


def wait_ready(cache: Any, timeout: float = 10.0) -> None:
    wait_for(lambda: cache.get("probe") is None and cache.state is State.READY, timeout)


@pytest.mark.redis
@pytest.mark.parametrize("target", ["standalone", "cluster"])
def test_reconnects_with_a_fresh_token_after_expiry_with_no_caller_visible_error(
    target: str,
    request: pytest.FixtureRequest,
    tls: TLSFiles,
    make_cache: Callable[..., Any],
) -> None:
    server = server_for(target, request)
    with enforcing(server, tls) as (stand_in, clock, iam):
        cache = make_cache(server.url, iam, mode=target)
        with Traffic(cache, [f"k{i}" for i in range(60)]) as traffic:
            traffic.run_for(0.3)
            for _ in range(3):
                # The token expires: the server takes only the one valid now, and every
                # connection is dropped (AWS drops them too, at the latest after 12 h).
                signed = iam.signed
                stand_in.allow(clock.advance(TOKEN_LIFETIME))
                assert stand_in.kill() >= 1
                traffic.run_for(0.5)
                wait_ready(cache)
                assert iam.signed > signed
                assert stand_in.connection_ids()  # connected again, with the new token
            # Refresh-ahead: a token signed in the background before the old one expires
            # is what the next connections use; the old one is then revoked.
            before = clock.now
            clock.advance(TOKEN_LIFETIME - 200)
            stand_in.allow(before, clock.now)
            wait_for(lambda: token_time(iam.get_credentials()[1]).timestamp() == clock.now)
            signed = iam.signed
            stand_in.allow(clock.now)  # the old token is gone
            stand_in.kill()
            traffic.run_for(0.5)
            wait_ready(cache)
            assert iam.signed == signed  # reconnected with the token signed ahead
        assert traffic.exceptions == []
        assert traffic.wrong == []


@pytest.mark.redis
@pytest.mark.parametrize("target", ["standalone", "cluster"])
def test_the_near_cache_listener_reconnects_with_a_fresh_token(
    target: str,
    request: pytest.FixtureRequest,
    tls: TLSFiles,
    make_cache: Callable[..., Any],
) -> None:
    server = server_for(target, request)
    with enforcing(server, tls) as (stand_in, clock, iam):
        options = {"mode": target, "namespace": f"near{time.monotonic_ns()}", "near_cache": True}
        reader = make_cache(server.url, iam, **options)
        writer = make_cache(server.url, iam, **options)
        stream = stream_key(reader.namespace)
        port = server.owner(stream) if isinstance(server, RedisClusterServer) else server.port
        admin = redis.Redis(port=port, **tls.client_options())

        def read_to_the_end() -> bool:
            return listener_has_read_all(reader, admin)

        full = f"{reader.namespace}:k"
        owner = server.owner(full) if isinstance(server, RedisClusterServer) else server.port
        in_redis = redis.Redis(port=owner, **tls.client_options())
        # On a busy machine any call may outlast op_timeout, and that cache then serves from
        # memory until its prober is back: each step waits for the state it needs.
        wait_for(lambda: writer.set("k", 1) and in_redis.get(full) == b"1", 10)
        hits = reader.stats.near_hits
        # Until the reader holds 1 in its near cache (a near hit), its listener caught up.
        wait_for(
            lambda: read_to_the_end() and reader.get("k") == 1 and reader.stats.near_hits > hits, 10
        )
        signed = iam.signed
        before = admin.xinfo_stream(stream)["last-generated-id"].decode()
        stand_in.allow(clock.advance(TOKEN_LIFETIME))  # the token expires; connections drop
        assert stand_in.kill() >= 2  # the listener's among them
        # (a write that meets a dropped connection is served by the writer's fallback)
        wait_for(lambda: writer.set("k", 2) and in_redis.get(full) == b"2", 10)

        def announced() -> bool:  # (an XADD that met a dropped connection is made later;
            # pending with the writer's flush after its recovery, it goes as that one: ALL)
            entries = admin.xrange(stream, min=f"({before}")
            return any({full.encode(), ALL} & set(fields.values()) for _, fields in entries)

        wait_for(announced, 10)
        wait_for(read_to_the_end, 10)  # the listener is back, with a new token
        assert iam.signed > signed
        # Until the reader answers 2 from its near cache again: from Redis first (or None
        # from the fallback while its own connection is away: asyncio may see a dropped
        # connection only when it writes), then a near hit. (A fill can be dropped, or a
        # copy evicted, by a later entry: the writer's flush after its recovery, say.)
        seen: list[Any] = []

        def a_near_hit_of_2() -> bool:
            hits = reader.stats.near_hits
            seen.append(reader.get("k"))
            return seen[-1] == 2 and reader.stats.near_hits == hits + 1

        wait_for(a_near_hit_of_2, 15)
        assert 1 not in seen  # never the old value


@pytest.mark.redis
def test_a_refused_token_is_replaced_once_then_the_cache_degrades(
    tls_server: RedisServer, tls: TLSFiles, make_cache: Callable[..., Any]
) -> None:
    with enforcing(tls_server, tls) as (stand_in, clock, iam):
        cache = make_cache(tls_server.url, iam)
        assert cache.set("k", 1)
        # The server stops accepting a token the provider still thinks valid (revoked,
        # or a skewed clock): one WRONGPASS, one new token, accepted.
        clock.advance(60)
        stand_in.allow(clock.now)
        stand_in.kill()
        signed = iam.signed
        wait_ready(cache)  # (asyncio may see the dropped connection only when it writes)
        assert cache.get("k") == 1
        assert iam.signed == signed + 1
        assert stand_in.refused() == 1
        # Nothing it signs is accepted: each connection attempt (the call's, then the
        # prober's) tries twice, with one new token, then fails; calls are answered from
        # memory, with no exception.
        stand_in.set_passwords("not-a-token")
        stand_in.kill()
        signed = iam.signed
        assert cache.get("k") in (None, 1)
        assert cache.state is State.DEGRADED
        wait_for(lambda: iam.signed - signed >= 2, 10)  # the prober keeps trying
        attempts = iam.signed - signed
        # 2 refusals per new token (no retry would give 1, a loop many); one attempt may
        # be caught between its two AUTHs at either end of the count
        assert abs(stand_in.refused() - 2 * attempts) <= 1
        stand_in.allow(clock.now)  # accepted again: the prober brings it back
        wait_ready(cache)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_credentials_at_startup_degrades_then_recovers(
    kind: str, tls_server: RedisServer, tls: TLSFiles, loop: asyncio.AbstractEventLoop
) -> None:
    """IMDS down when the app starts: the first connections get no token; the cache serves
    from memory (no crash, no unauthenticated socket kept) and connects once it has one."""
    with enforcing(tls_server, tls) as (_stand_in, clock, _iam):
        session = CountingSession()
        session.fail = True
        iam = provider(clock, session)
        settings = KVCacheSettings(url=tls_server.url, iam=IAM, connect_attempts=2)
        cache = ready_cache(
            kind, settings, loop, expect=State.DEGRADED, timeout=1.0, credential_provider=iam
        )
        try:
            assert cache.health().last_error == "CredentialsUnavailable"
            assert cache.set("k", 1)  # into the fallback
            assert cache.get("k") == 1
            session.fail = False
            wait_ready(cache)
            assert cache.set("k", 2)
            assert cache.get("k") == 2
            assert cache.stats.hits >= 1
        finally:
            cache.close()
            iam.close()


def test_a_credential_provider_and_url_credentials_do_not_mix() -> None:
    settings = KVCacheSettings(url="rediss://user:secret@cache.example:6379/0")
    with pytest.raises(ConfigurationError, match="must not carry credentials") as caught:
        open_store(settings, credential_provider=provider(FakeClock()))
    assert "secret" not in str(caught.value)


@pytest.mark.redis
@pytest.mark.parametrize("target", ["standalone", "cluster"])
def test_connections_older_than_the_max_age_are_reopened_when_idle(
    target: str, request: pytest.FixtureRequest, tls: TLSFiles, make_cache: Callable[..., Any]
) -> None:
    server = server_for(target, request)
    keys = {f"k{i}": i for i in range(30)}  # on every node of the cluster
    with enforcing(server, tls) as (stand_in, _clock, iam):
        cache = make_cache(server.url, iam, iam={"max_connection_age": 0.3}, mode=target)
        assert cache.set_many(keys)
        first = stand_in.connection_ids()
        assert len(first) == len(stand_in.admins)  # one per node
        time.sleep(0.5)
        assert cache.get_many(list(keys)) == keys  # each re-opened before this command
        second = stand_in.connection_ids()
        assert len(second) == len(stand_in.admins)
        assert not first & second
        assert cache.stats.errors == 0
        assert cache.stats.fallback_hits == 0


def test_iam_settings_alone_give_every_connection_a_provider_closed_with_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From settings alone (boto3's chain: here the environment); no I/O at construction."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = KVCacheSettings(url="rediss://app-user@cache.example:6379/0", iam=IAM)
    cache = Cache.from_settings(settings)
    kwargs = cache.store._client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    made = kwargs["credential_provider"]
    assert isinstance(made, IAMCredentialProvider)
    assert "username" not in kwargs
    assert "password" not in kwargs
    user, token = made.get_credentials()
    assert user == USER
    assert token.startswith(f"{NAME}/?Action=connect&User={USER}&")
    assert any(t.name == "kvcache-iam-refresh" for t in threading.enumerate())
    cache.close()
    wait_for(lambda: not any(t.name == "kvcache-iam-refresh" for t in threading.enumerate()))


def _child_refreshes(iam: Any, clock: FakeClock, queue: Any) -> None:
    clock.advance(TOKEN_LIFETIME - 200)  # due: only a refresher thread of its own can sign
    deadline = time.monotonic() + 5
    while iam.signed < 2 and time.monotonic() < deadline:
        iam.get_credentials()
        time.sleep(0.01)
    queue.put(iam.signed)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_worker_gets_a_refresher_of_its_own() -> None:
    clock = FakeClock()
    iam = provider(clock)
    try:
        iam.get_credentials()  # the parent's refresher runs; it does not exist in a child
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child_refreshes, args=(iam, clock, queue))
        child.start()
        assert queue.get(timeout=10) == 2
        child.join(10)
    finally:
        iam.close()


# -- kvcache doctor under IAM ------------------------------------------------------------------


def test_doctor_signs_a_token_and_checks_it_on_a_fresh_connection(
    tls_server: RedisServer,
    tls: TLSFiles,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "KVCACHE_IAM__ENABLED": "true",
        "KVCACHE_IAM__NAME": NAME,
        "KVCACHE_IAM__USER_ID": USER,
        "KVCACHE_IAM__REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    stand_in = IAMStandIn([redis.Redis(port=tls_server.port, **tls.client_options())])
    url = f"rediss://{USER}@127.0.0.1:{tls_server.port}/0?{tls.url_query()}"

    def doctor() -> tuple[int, dict[str, Any], str]:
        status = main(["doctor", "--url", url, "--json", "--samples", "3"])
        out = capsys.readouterr().out
        report = json.loads(out)
        return status, {c["name"]: c for c in report["checks"]}, out

    try:
        now = int(time.time())  # the doctor signs a token of its own, at a whole second
        stand_in.allow(*range(now - 2, now + 20))
        status, checks, out = doctor()
        assert status == 0, checks
        assert checks["tls"]["status"] == "ok"
        assert (
            checks["auth"]["detail"] == f"IAM token for {USER} (elasticache): AUTH + PING accepted"
        )
        assert checks["cache"]["status"] == "ok"

        stand_in.set_passwords("not-this-token")  # the server refuses whatever is signed
        status, checks, out = doctor()
        assert status == 1
        assert checks["auth"]["status"] == "fail"
        assert "AuthenticationError" in checks["auth"]["detail"]
        assert checks["cache"]["status"] == "fail"
        assert "X-Amz-Signature" not in out
        assert SECRET_KEY not in out
    finally:
        stand_in.set_passwords("unused")
