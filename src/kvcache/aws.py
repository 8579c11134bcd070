"""IAM authentication for Amazon ElastiCache and MemoryDB: ``IAMCredentialProvider``, a
redis-py ``CredentialProvider`` that any redis-py client can use too, and ``sign_token``.

    provider = IAMCredentialProvider("elasticache", name="my-cache", user_id="app-user",
                                     region="eu-west-1")
    redis.Redis(host=..., port=6379, ssl=True, credential_provider=provider)

The work lives in ``kvcache._redis.auth.iam``; see its docstring for the token's rules.
"""

from kvcache._redis.auth.iam import (
    SERVICES,
    TOKEN_LIFETIME,
    CredentialsUnavailable,
    IAMCredentialProvider,
    Service,
    Session,
    sign_token,
)

__all__ = [
    "SERVICES",
    "TOKEN_LIFETIME",
    "CredentialsUnavailable",
    "IAMCredentialProvider",
    "Service",
    "Session",
    "sign_token",
]
