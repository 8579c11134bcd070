"""Configuration from keyword arguments or ``KVCACHE_*`` environment variables."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from kvcache._core.codec import DEFAULT_COMPRESS_THRESHOLD, DEFAULT_MAX_VALUE_SIZE
from kvcache._core.keys import DEFAULT_MAX_KEY_LENGTH
from kvcache._core.state import Policy
from kvcache._core.ttl import MAX_TTL
from kvcache._near.cache import NearCacheConfig
from kvcache._redis.url import check_url, query_credentials, redact_url, url_user
from kvcache._settings_messages import explain, warn_unknown_variables
from kvcache.errors import ConfigurationError
from kvcache.serializers import Serializer, serializer_named
from kvcache.stores.memory import (
    DEFAULT_FALLBACK_MAX_BYTES,
    DEFAULT_FALLBACK_MAXSIZE,
    DEFAULT_FALLBACK_TTL,
    DEFAULT_MAXSIZE,
    MemoryStore,
)

__all__ = [
    "IAMSettings",
    "KVCacheSettings",
    "Mode",
    "NearCacheSettings",
]


URL_SCHEMES = ("redis", "rediss", "unix", "memory")
MODES = ("auto", "cluster", "standalone")
Mode = Literal["auto", "cluster", "standalone"]
_MODE_PARAM = re.compile(r"(^|&)mode=([^&]*)")


# Defaults are written Field(default=...), never Field(value, ...): a type checker without
# pydantic's mypy plugin (an application's) sees only a keyword default, and would take every
# other setting for a required argument of KVCacheSettings(...).
class NearCacheSettings(BaseModel):
    """The near cache (``KVCACHE_NEAR_CACHE__ENABLED=true`` …): a per-process copy of values
    read, evicted through a Redis Stream when any process writes (``_near/cache.py``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    enabled: bool = False
    maxsize: int = Field(default=10_000, ge=1, description="entries kept in each process")
    ttl: float = Field(default=60.0, gt=0, le=86_400, description="seconds a copy lives at most")
    stream_maxlen: int = Field(
        default=10_000, ge=100, description="invalidations kept; a listener further behind flushes"
    )
    block: float = Field(default=1.0, gt=0, le=60, description="seconds a blocked read waits")

    def config(self) -> NearCacheConfig | bool:
        if not self.enabled:
            return False
        return NearCacheConfig(self.maxsize, self.ttl, self.stream_maxlen, self.block)


class IAMSettings(BaseModel):
    """ElastiCache / MemoryDB IAM authentication (``KVCACHE_IAM__ENABLED=true`` …). The AWS
    credentials come from boto3's standard chain (environment, profile, instance role)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    service: Literal["elasticache", "memorydb"] = "elasticache"
    name: str | None = Field(
        default=None, description="replication group, serverless cache or MemoryDB cluster name"
    )
    user_id: str | None = Field(
        default=None, description="the IAM-enabled user (its id is its name)"
    )
    region: str | None = Field(default=None, description="the cache's region; default: boto3's")
    serverless: bool = Field(default=False, description="ElastiCache Serverless")
    refresh_margin: float = Field(
        default=300.0, gt=60, lt=900, description="seconds before expiry a token is re-signed"
    )
    max_connection_age: float = Field(
        default=11 * 3600.0,
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
        allow_inf_nan=False,  # no expiry is None (or kvcache.FOREVER in a call), never inf
        env_parse_none_str="none",  # KVCACHE_COMPRESS_THRESHOLD=none turns compression off
    )

    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        repr=False,
        description="redis://, rediss:// (TLS), unix:// or memory:// (in-process store); "
        "a secret (it may carry a password): read it with url.get_secret_value()",
    )
    namespace: str = Field(
        default="kvcache", min_length=1, description="key prefix; clear() stays in it"
    )
    separator: str = ":"
    default_ttl: float | None = Field(default=None, gt=0, description="seconds; None = no expiry")
    connect_timeout: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="seconds per step of a background probe (connect, AUTH)",
    )
    op_timeout: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="seconds a call gives the network, and per wait for a slot",
    )
    max_connections: int = Field(
        default=64, ge=1, description="connections per process (per event loop for AsyncCache)"
    )
    client_name: str | None = Field(
        default=None, description="CLIENT SETNAME on each connection (needs that ACL permission)"
    )
    serializer: Literal["json", "pickle", "pickle-unsigned"] | InstanceOf[Serializer] = Field(
        default="json",
        description="json, pickle (signed), pickle-unsigned, or (in code) any Serializer",
    )
    signing_key: SecretStr | None = Field(
        default=None, description="key for signed pickle (a keyed BLAKE2b MAC)"
    )
    compress_threshold: int | None = Field(default=DEFAULT_COMPRESS_THRESHOLD, ge=0)
    max_key_length: int = Field(default=DEFAULT_MAX_KEY_LENGTH, ge=1, le=512 * 1024 * 1024)
    max_value_size: int = Field(
        default=DEFAULT_MAX_VALUE_SIZE,
        ge=1,
        description="bytes of a serialized value: larger writes raise ValueTooLargeError, "
        "larger stored values (a zlib bomb inflates only this far) read as misses",
    )
    throw_on_errors: bool = False
    memory_maxsize: int = Field(
        default=DEFAULT_MAXSIZE, ge=1, description="entries in the memory store"
    )
    non_blocking: bool = Field(
        default=True, description="false: STARTING calls wait for the whole first-connect phase"
    )
    connect_attempts: int = Field(
        default=3, ge=1, le=100, description="probes in the first-connect phase before DEGRADED"
    )
    retry_base: float = Field(default=0.05, gt=0, le=60, description="seconds: first probe delay")
    retry_max: float = Field(
        default=0.5, gt=0, le=300, description="seconds: longest probe delay (bounds recovery time)"
    )
    fallback: Literal["memory", "none"] | None = Field(
        default="memory", description="what serves while Redis is away; none: calls fail fast"
    )
    fallback_maxsize: int = Field(
        default=DEFAULT_FALLBACK_MAXSIZE, ge=1, description="fallback entries"
    )
    fallback_max_bytes: int = Field(
        default=DEFAULT_FALLBACK_MAX_BYTES,
        ge=4096,  # a few entries at least: below ~400 bytes an entry's bookkeeping, none
        description="bytes the fallback holds (keys, values, bookkeeping), all cluster "
        "shards' together",
    )
    fallback_ttl: float = Field(
        default=DEFAULT_FALLBACK_TTL, gt=0, description="seconds: TTL cap of outage-era entries"
    )
    journal_size: int = Field(
        default=10_000, ge=0, description="keys remembered for deletion on recovery"
    )
    journal_overflow: Literal["clear", "ignore"] = Field(
        default="clear", description="past journal_size: clear the namespace on recovery, or not"
    )
    mode: Mode = Field(
        default="standalone",
        description="standalone: one client for one address, MOVED never followed (also for "
        "Envoy/HAProxy-style proxies); cluster: Redis Cluster; auto: ask the server (CLUSTER "
        "SLOTS, which the ACL user must be allowed). A ?mode=... in the URL wins.",
    )
    topology_interval: float = Field(
        default=5.0, gt=0, le=3600, description="seconds between cluster topology checks (jittered)"
    )
    iam: IAMSettings = Field(default_factory=IAMSettings)
    telemetry: bool = Field(
        default=True,
        description="OpenTelemetry metrics and spans (no-ops until an SDK is installed)",
    )
    near_cache: NearCacheSettings = Field(default_factory=NearCacheSettings)
    stale_ttl: float | None = Field(
        default=None,
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

    def __init__(self, **values: Any) -> None:
        """As pydantic's, but an invalid setting is a ``ConfigurationError`` naming it (and
        its value, unless secret), and a ``KVCACHE_`` variable naming no setting warns."""
        warn_unknown_variables(type(self).model_fields)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(explain(exc, type(self).model_fields)) from None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretStr) -> SecretStr:
        value = url.get_secret_value()
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme not in URL_SCHEMES:
            raise ValueError(
                f"URL scheme must be one of {', '.join(s + '://' for s in URL_SCHEMES)}"
            )
        return url

    @field_serializer("url")
    def _shown_url(self, url: SecretStr) -> str:
        """Dumps show the URL with its credentials masked (the host, port and db help)."""
        return redact_url(url.get_secret_value())

    @model_validator(mode="after")
    def _consistent(self) -> KVCacheSettings:
        if self.signing_key is not None and self.serializer != "pickle":
            raise ValueError("signing_key is only used with serializer='pickle'")
        if isinstance(self.serializer, str):  # pickle without a key is refused here, early
            serializer_named(self.serializer, self._signing_key())
        if self.retry_base > self.retry_max:
            raise ValueError("retry_base must not exceed retry_max")
        in_url = _MODE_PARAM.search(self._url.partition("?")[2])
        if in_url and in_url.group(2) not in MODES:
            raise ValueError(f"the URL's mode must be one of {', '.join(MODES)}")
        if self.scheme != "memory":
            check_url(self.redis_url, self.op_timeout)
        if self.iam.enabled:
            self._check_iam_url()
        return self

    def _check_iam_url(self) -> None:
        if self.scheme != "rediss":
            raise ValueError("IAM authentication needs TLS: use a rediss:// URL")
        if query_credentials(self._url):
            raise ValueError("with IAM authentication the URL must not carry username=/password=")
        user, password = url_user(self._url)
        if password:
            raise ValueError("with IAM authentication the URL must not carry a password")
        if user and user != self.iam.user_id:
            raise ValueError("the URL's user name must be iam.user_id (or none)")

    def __repr_args__(self) -> Any:
        yield "url", redact_url(self._url)
        yield from super().__repr_args__()

    @property
    def _url(self) -> str:
        return self.url.get_secret_value()

    @property
    def url_credentials(self) -> bool:
        """Does the URL carry a user name or password (user info, or query parameters)?"""
        return any(url_user(self._url)) or query_credentials(self._url)

    @property
    def scheme(self) -> str:
        return self._url.partition("://")[0].lower()

    @property
    def resolved_mode(self) -> Mode:
        """The URL's ``?mode=`` if it has one, else ``mode``."""
        in_url = _MODE_PARAM.search(self._url.partition("?")[2])
        return in_url.group(2) if in_url else self.mode  # type: ignore[return-value]

    @property
    def redis_url(self) -> str:
        """The URL for redis-py: without kvcache's own ``mode`` parameter, and without user
        info under IAM (the credential provider gives the user and the token)."""
        head, question, query = self._url.partition("?")
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
            "max_value_size": self.max_value_size,
            "throw_on_errors": self.throw_on_errors,
            "fallback": (
                MemoryStore(
                    self.fallback_maxsize,
                    max_ttl=self.fallback_ttl,
                    max_bytes=self.fallback_max_bytes,
                )
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
