"""Configuration from keyword arguments or ``KVCACHE_*`` environment variables."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .codec import DEFAULT_COMPRESS_THRESHOLD
from .keys import DEFAULT_MAX_KEY_LENGTH
from .nearcache import NearCacheConfig
from .serializers import Serializer, serializer_named
from .state import Policy
from .stores.memory import (
    DEFAULT_FALLBACK_MAXSIZE,
    DEFAULT_FALLBACK_TTL,
    DEFAULT_MAXSIZE,
    MemoryStore,
)
from .ttl import MAX_TTL

URL_SCHEMES = ("redis", "rediss", "unix", "memory")
MODES = ("auto", "cluster", "standalone")
Mode = Literal["auto", "cluster", "standalone"]
_MODE_PARAM = re.compile(r"(^|&)mode=([^&]*)")


def redact_url(url: str) -> str:
    """The URL with its credentials masked (user info, and ``username``, ``password``,
    ``ssl_password`` and other ``*password``/``*token``/``*secret`` query parameters), fit
    for logs and reprs."""
    head, question, query = url.partition("?")
    scheme, slashes, rest = head.partition("://")
    if "@" in rest:  # up to the last "@": a password with a raw "/" or "@" stays hidden too
        rest = "***@" + rest.rpartition("@")[2]
    query = _CREDENTIAL_PARAM.sub(r"\1\2=***", query)
    return scheme + slashes + rest + question + query


# redis-py reads username/password from the query too, and passes ssl_password (a client
# key's) and any other parameter on to the connection.
_CREDENTIAL_PARAM = re.compile(
    r"(^|&)(username|[a-z_]*password|[a-z_]*token|[a-z_]*secret)=[^&]*", re.IGNORECASE
)


def _url_user(url: str) -> tuple[str, str]:
    """The URL's user name and password from its user info (either may be empty)."""
    info = url.partition("?")[0].partition("://")[2].rpartition("@")[0]
    user, _, password = info.partition(":")
    return unquote(user), unquote(password)


class NearCacheSettings(BaseModel):
    """The near cache (``KVCACHE_NEAR_CACHE__ENABLED=true`` …): a per-process copy of values
    read, evicted through a Redis Stream when any process writes (``nearcache.py``)."""

    enabled: bool = False
    maxsize: int = Field(10_000, ge=1, description="entries kept in each process")
    ttl: float = Field(60.0, gt=0, le=86_400, description="seconds a copy lives at most")
    stream_maxlen: int = Field(
        10_000, ge=100, description="invalidations kept; a listener further behind flushes"
    )
    block: float = Field(1.0, gt=0, le=60, description="seconds a blocked read waits")

    def config(self) -> NearCacheConfig | bool:
        if not self.enabled:
            return False
        return NearCacheConfig(self.maxsize, self.ttl, self.stream_maxlen, self.block)


class IAMSettings(BaseModel):
    """ElastiCache / MemoryDB IAM authentication (``KVCACHE_IAM__ENABLED=true`` …). The AWS
    credentials come from boto3's standard chain (environment, profile, instance role)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    service: Literal["elasticache", "memorydb"] = "elasticache"
    name: str | None = Field(
        None, description="replication group, serverless cache or MemoryDB cluster name"
    )
    user_id: str | None = Field(None, description="the IAM-enabled user (its id is its name)")
    region: str | None = Field(None, description="the cache's region; default: boto3's")
    serverless: bool = Field(False, description="ElastiCache Serverless")
    refresh_margin: float = Field(
        300.0, gt=60, lt=900, description="seconds before expiry a token is re-signed"
    )
    max_connection_age: float = Field(
        11 * 3600.0,
        gt=0,
        le=12 * 3600.0,
        description="seconds after which an idle connection is re-opened (AWS closes IAM "
        "connections at 12 h)",
    )

    @model_validator(mode="after")
    def _complete(self) -> IAMSettings:
        if self.enabled and not (self.name and self.user_id):
            raise ValueError("IAM authentication needs iam.name and iam.user_id")
        if self.serverless and self.service != "elasticache":
            raise ValueError("iam.serverless applies to ElastiCache only")
        return self


class KVCacheSettings(BaseSettings):
    """Every setting can come from the environment, e.g. ``KVCACHE_URL``, ``KVCACHE_NAMESPACE``."""

    model_config = SettingsConfigDict(
        env_prefix="KVCACHE_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,  # a bad URL must not echo its password in the error
        env_parse_none_str="none",  # KVCACHE_COMPRESS_THRESHOLD=none turns compression off
    )

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        repr=False,
        description="redis://, rediss:// (TLS), unix:// or memory:// (in-process store)",
    )
    namespace: str = Field("kvcache", min_length=1, description="key prefix; clear() stays in it")
    separator: str = ":"
    default_ttl: float | None = Field(None, gt=0, description="seconds; None = no expiry")
    connect_timeout: float = Field(
        0.5, gt=0, le=60, description="seconds per step of a background probe (connect, AUTH)"
    )
    op_timeout: float = Field(
        0.25, gt=0, le=60, description="seconds a call gives the network, and per wait for a slot"
    )
    max_connections: int = Field(
        64, ge=1, description="connections per process (per event loop for AsyncCache)"
    )
    client_name: str | None = Field(
        None, description="CLIENT SETNAME on each connection (needs that ACL permission)"
    )
    serializer: Literal["json", "pickle", "pickle-unsigned"] | InstanceOf[Serializer] = Field(
        "json", description="json, pickle (signed), pickle-unsigned, or (in code) any Serializer"
    )
    signing_key: SecretStr | None = Field(
        None, description="key for signed pickle (a keyed BLAKE2b MAC)"
    )
    compress_threshold: int | None = Field(DEFAULT_COMPRESS_THRESHOLD, ge=0)
    max_key_length: int = Field(DEFAULT_MAX_KEY_LENGTH, ge=1, le=512 * 1024 * 1024)
    throw_on_errors: bool = False
    memory_maxsize: int = Field(DEFAULT_MAXSIZE, ge=1, description="entries in the memory store")
    non_blocking: bool = Field(
        True, description="while STARTING, serve calls from the fallback instead of waiting"
    )
    connect_attempts: int = Field(
        3, ge=1, le=100, description="probes in the first-connect phase before DEGRADED"
    )
    retry_base: float = Field(0.05, gt=0, le=60, description="seconds: first probe delay")
    retry_max: float = Field(
        0.5, gt=0, le=300, description="seconds: longest probe delay (bounds recovery time)"
    )
    fallback: Literal["memory", "none"] | None = Field(
        "memory", description="what serves while Redis is away; none: calls fail fast"
    )
    fallback_maxsize: int = Field(DEFAULT_FALLBACK_MAXSIZE, ge=1, description="fallback entries")
    fallback_ttl: float = Field(
        DEFAULT_FALLBACK_TTL, gt=0, description="seconds: TTL cap of outage-era entries"
    )
    journal_size: int = Field(10_000, ge=0, description="keys remembered for deletion on recovery")
    journal_overflow: Literal["clear", "ignore"] = Field(
        "clear", description="past journal_size: clear the namespace on recovery, or not"
    )
    mode: Mode = Field(
        "standalone",
        description="standalone: one client for one address, MOVED never followed (also for "
        "Envoy/HAProxy-style proxies); cluster: Redis Cluster; auto: ask the server (CLUSTER "
        "SLOTS, which the ACL user must be allowed). A ?mode=... in the URL wins.",
    )
    topology_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between cluster topology checks (jittered)"
    )
    iam: IAMSettings = Field(default_factory=IAMSettings)
    telemetry: bool = Field(
        True, description="OpenTelemetry metrics and spans (no-ops until an SDK is installed)"
    )
    near_cache: NearCacheSettings = Field(default_factory=NearCacheSettings)
    stale_ttl: float | None = Field(
        None,
        gt=0,
        le=MAX_TTL,
        description="seconds a value is kept past its TTL, for get_or_set to serve when its "
        "factory fails (fail-safe); none: off",
    )

    @field_validator("near_cache", mode="before")
    @classmethod
    def _near_cache_switch(cls, value: Any) -> Any:
        """``near_cache=True`` is short for ``near_cache={"enabled": True}``."""
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in URL_SCHEMES:
            raise ValueError(
                f"URL scheme must be one of {', '.join(s + '://' for s in URL_SCHEMES)}"
            )
        return url

    @model_validator(mode="after")
    def _consistent(self) -> KVCacheSettings:
        if self.signing_key is not None and self.serializer != "pickle":
            raise ValueError("signing_key is only used with serializer='pickle'")
        if isinstance(self.serializer, str):  # pickle without a key is refused here, early
            serializer_named(self.serializer, self._signing_key())
        if self.retry_base > self.retry_max:
            raise ValueError("retry_base must not exceed retry_max")
        in_url = _MODE_PARAM.search(self.url.partition("?")[2])
        if in_url and in_url.group(2) not in MODES:
            raise ValueError(f"the URL's mode must be one of {', '.join(MODES)}")
        if self.iam.enabled:
            self._check_iam_url()
        return self

    def _check_iam_url(self) -> None:
        if self.scheme != "rediss":
            raise ValueError("IAM authentication needs TLS: use a rediss:// URL")
        if _CREDENTIAL_PARAM.search(self.url.partition("?")[2]):
            raise ValueError("with IAM authentication the URL must not carry username=/password=")
        user, password = _url_user(self.url)
        if password:
            raise ValueError("with IAM authentication the URL must not carry a password")
        if user and user != self.iam.user_id:
            raise ValueError("the URL's user name must be iam.user_id (or none)")

    def __repr_args__(self) -> Any:
        yield "url", redact_url(self.url)
        yield from super().__repr_args__()

    @property
    def url_credentials(self) -> bool:
        """Does the URL carry a user name or password (user info, or query parameters)?"""
        return any(_url_user(self.url)) or bool(
            _CREDENTIAL_PARAM.search(self.url.partition("?")[2])
        )

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0].lower()

    @property
    def resolved_mode(self) -> Mode:
        """The URL's ``?mode=`` if it has one, else ``mode``."""
        in_url = _MODE_PARAM.search(self.url.partition("?")[2])
        return in_url.group(2) if in_url else self.mode  # type: ignore[return-value]

    @property
    def redis_url(self) -> str:
        """The URL for redis-py: without kvcache's own ``mode`` parameter, and without user
        info under IAM (the credential provider gives the user and the token)."""
        head, question, query = self.url.partition("?")
        query = _MODE_PARAM.sub("", query).lstrip("&")
        if self.iam.enabled:
            scheme, slashes, rest = head.partition("://")
            head = scheme + slashes + rest.rpartition("@")[2]
        return head + (question if query else "") + query

    def _signing_key(self) -> str | None:
        return self.signing_key.get_secret_value() if self.signing_key else None

    def cache_options(self) -> dict[str, Any]:
        """The facade's keyword arguments (``Cache(store, **options)``)."""
        serializer = self.serializer
        if isinstance(serializer, str):
            serializer = serializer_named(serializer, self._signing_key())
        return {
            "namespace": self.namespace,
            "separator": self.separator,
            "default_ttl": self.default_ttl,
            "serializer": serializer,
            "compress_threshold": self.compress_threshold,
            "max_key_length": self.max_key_length,
            "throw_on_errors": self.throw_on_errors,
            "fallback": (
                MemoryStore(self.fallback_maxsize, max_ttl=self.fallback_ttl)
                if self.fallback == "memory"
                else None
            ),
            "non_blocking": self.non_blocking,
            "policy": Policy(self.connect_attempts, self.retry_base, self.retry_max),
            "journal_size": self.journal_size,
            "journal_overflow": self.journal_overflow,
            "telemetry": self.telemetry,
            "near_cache": self.near_cache.config(),
            "stale_ttl": self.stale_ttl,
        }
