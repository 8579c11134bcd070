"""What IAM authentication costs: kvcache with IAM tokens vs with a static password vs raw
redis-py, on one private TLS redis-server, side by side.

    python benchmarks/iam.py [--rounds 15] [--ops 1000]

Each round times every contender once, in a shuffled order; the table shows medians over the
rounds (µs per operation). Operations:

- get: a GET on a warm connection (IAM's cost here is the pool's age check on checkout);
- connect: a new TLS connection, AUTH and one PING (IAM's cost is the token hand-out, and
  the connect hook);
- token: ``IAMCredentialProvider.get_credentials()`` with a cached token, and ``sign``:
  signing a new one (what a connection pays when the refresher fell behind).

The IAM user's password is set to the provider's current token (static credentials, no AWS
involved), so the handshake is the real one.
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import boto3
import redis

from kvcache.aws import IAMCredentialProvider, sign_token
from kvcache.settings import KVCacheSettings
from kvcache.stores import RedisStore, open_store
from kvcache.testing import RedisServer, TLSFiles

USER = "app-user"
PASSWORD = "a-static-password-of-a-typical-length"


def timed(ops: int, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        action()
    return (time.perf_counter() - started) / ops * 1e6


def contenders(server: RedisServer, tls: TLSFiles) -> dict[str, dict[str, Callable[[], object]]]:
    session = boto3.Session(
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region_name="eu-west-1",
    )
    iam = IAMCredentialProvider(name="bench", user_id=USER, session=session)
    admin = server.client()
    admin.acl_setuser(
        USER,
        enabled=True,
        passwords=[f"+{iam.get_credentials()[1]}", f"+{PASSWORD}"],
        keys="*",
        commands=["+@all"],
    )
    url = f"rediss://127.0.0.1:{server.port}/0?{tls.url_query()}"
    with_iam = open_store(
        KVCacheSettings(url=url, iam={"enabled": True, "name": "bench", "user_id": USER}),
        credential_provider=iam,
    )
    with_password = open_store(
        KVCacheSettings(url=url.replace("rediss://", f"rediss://{USER}:{PASSWORD}@"))
    )
    raw = redis.Redis(port=server.port, username=USER, password=PASSWORD, **tls.client_options())
    assert isinstance(with_iam, RedisStore)
    assert isinstance(with_password, RedisStore)
    for store in (with_iam, with_password):
        store.set(b"k", b"v", None)

    def connect(pool: redis.ConnectionPool) -> Callable[[], object]:
        def once() -> object:
            connection = pool.connection_class(**pool.connection_kwargs)
            connection.connect()
            connection.send_command("PING")
            reply = connection.read_response()
            connection.disconnect()
            return reply

        return once

    frozen = session.get_credentials().get_frozen_credentials()
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "get": {
            "kvcache+iam": lambda: with_iam.get(b"k"),
            "kvcache+password": lambda: with_password.get(b"k"),
            "redis-py+password": lambda: raw.get(b"k"),
        },
        "connect": {
            "kvcache+iam": connect(with_iam._client.connection_pool),
            "kvcache+password": connect(with_password._client.connection_pool),
            "redis-py+password": connect(raw.connection_pool),
        },
        "token (cached)": {"kvcache+iam": iam.get_credentials},
        "sign": {
            "kvcache+iam": lambda: sign_token(
                frozen,
                service="elasticache",
                name="bench",
                user_id=USER,
                region="eu-west-1",
                at=now,
            )
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        tls = TLSFiles.generate(directory)
        with RedisServer(tls=tls) as server:
            table = contenders(server, tls)
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for operation, by_name in table.items():
                    ops = args.ops // 10 if operation == "connect" else args.ops
                    for name in random.sample(list(by_name), len(by_name)):
                        us = timed(ops, by_name[name])
                        samples.setdefault((operation, name), []).append(us)
    print(f"{'operation':<16}{'contender':<20}{'µs (median)':>12}{'vs password':>13}")
    for operation, by_name in table.items():
        base = samples.get((operation, "kvcache+password"))
        for name in by_name:
            median = statistics.median(samples[operation, name])
            ratio = f"{median / statistics.median(base):.2f}x" if base else "-"
            print(f"{operation:<16}{name:<20}{median:>12.1f}{ratio:>13}")


if __name__ == "__main__":
    main()
