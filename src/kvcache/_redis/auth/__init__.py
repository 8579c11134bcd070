"""Authentication, in one place: what every connection of a cache authenticates with
(``connection_policy``), the policy that carries it into redis-py's handshake and rotates old
connections (``policy.py``), and the IAM token provider for ElastiCache and MemoryDB
(``iam.py``, public as ``kvcache.aws``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.credentials import CredentialProvider

from kvcache._redis.auth.iam import IAMCredentialProvider
from kvcache._redis.auth.policy import ConnectionPolicy
from kvcache.errors import ConfigurationError

if TYPE_CHECKING:  # the settings import this package (url.py): a type only here
    from kvcache.settings import KVCacheSettings


def connection_policy(
    settings: KVCacheSettings, credential_provider: CredentialProvider | None = None
) -> ConnectionPolicy | None:
    """What every connection of one cache authenticates with: ``credential_provider`` if
    given, else an IAM token provider when ``iam.enabled``; None for the URL's password."""
    iam = settings.iam
    max_age = iam.max_connection_age if iam.enabled else None
    if credential_provider is not None:
        if not iam.enabled and settings.url_credentials:  # (under IAM, redis_url has none)
            raise ConfigurationError(
                "with a credential_provider the URL must not carry credentials"
            )
        return ConnectionPolicy(credential_provider, max_age)
    if not iam.enabled:
        return None
    made = IAMCredentialProvider(
        iam.service,
        name=iam.name or "",  # (the settings checked both are given)
        user_id=iam.user_id or "",
        region=iam.region,
        serverless=iam.serverless,
        refresh_margin=iam.refresh_margin,
        telemetry=settings.telemetry,
    )
    return ConnectionPolicy(made, max_age, owned=True)
