"""IAM authentication for Amazon ElastiCache and MemoryDB (public as ``kvcache.aws``).

``IAMCredentialProvider`` is a redis-py ``CredentialProvider``: every new connection asks it
for ``(user_id, token)`` and sends ``AUTH``. A token is a SigV4 query-presigned
``GET https://<cache name>/?Action=connect&User=<user id>`` (plus
``ResourceType=ServerlessCache`` for ElastiCache Serverless) with the scheme stripped, signed
for the service (``elasticache`` or ``memorydb``) and region, valid 15 minutes.

The provider keeps one token and re-signs it in a background thread well before it expires
(``refresh_margin``); a token within a minute of expiry is never handed out. Credentials are
resolved (boto3's chain: environment, profile, IMDS, STS, …) once when the first token is
signed and then only by that thread, never on a connection's path. ``invalidate()`` drops
the token after the server refused it (see ``_redis/auth/policy.py``).

    provider = IAMCredentialProvider("elasticache", name="my-cache", user_id="app-user",
                                     region="eu-west-1")
    redis.Redis(host=..., port=6379, ssl=True, credential_provider=provider)
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

from kvcache import _telemetry as telemetry
from kvcache._core import forks
from kvcache.errors import ConfigurationError

log = logging.getLogger("kvcache.aws")

Service = Literal["elasticache", "memorydb"]
SERVICES: tuple[Service, ...] = ("elasticache", "memorydb")
TOKEN_LIFETIME = 900  # seconds: X-Amz-Expires, the validity AWS gives an IAM auth token
SAFETY_MARGIN = 60.0  # seconds: a token this close to its expiry is never handed out
DEFAULT_REFRESH_MARGIN = 300.0  # seconds before expiry the background re-signing starts
RECHECK = 1.0  # seconds: the refresher's longest sleep, so clock jumps and pauses are seen
RETRY_AFTER = 5.0  # seconds between background attempts after a failed refresh


def sign_token(
    credentials: Any,
    *,
    service: Service,
    name: str,
    user_id: str,
    region: str,
    serverless: bool = False,
    at: datetime.datetime,
) -> str:
    """An IAM auth token signed with ``credentials`` (botocore ``ReadOnlyCredentials``, or
    anything with ``access_key``, ``secret_key``, ``token``) at the instant ``at`` (UTC)."""
    from botocore.awsrequest import AWSRequest

    query = {"Action": "connect", "User": user_id}
    if serverless:
        query["ResourceType"] = "ServerlessCache"
    request = AWSRequest(method="GET", url=f"https://{name.lower()}/", params=query)
    _signer(credentials, service, region, at).add_auth(request)
    url: str = request.prepare().url
    return url.removeprefix("https://")


def _signer(credentials: Any, service: str, region: str, at: datetime.datetime) -> Any:
    from botocore.auth import SIGV4_TIMESTAMP, SigV4QueryAuth

    class SigV4QueryAt(SigV4QueryAuth):  # type: ignore[misc]
        """botocore's query presigning, at a given instant, without its DEBUG lines (they
        print the signature, which is the password)."""

        def add_auth(self, request: Any) -> None:
            request.context["timestamp"] = at.strftime(SIGV4_TIMESTAMP)
            self._modify_request_before_signing(request)
            canonical = self.canonical_request(request)
            signature = self.signature(self.string_to_sign(request, canonical), request)
            self._inject_signature_to_request(request, signature)

    return SigV4QueryAt(credentials, service, region, expires=TOKEN_LIFETIME)


class Session(Protocol):
    """What the provider needs of a ``boto3.Session``."""

    region_name: str | None

    def get_credentials(self) -> Any: ...


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    signed_at: int  # clock seconds, as X-Amz-Date has them (whole seconds)

    def usable(self, now: float) -> bool:
        """Valid for more than SAFETY_MARGIN; a clock that went back makes it unusable."""
        return 0 <= now - self.signed_at < TOKEN_LIFETIME - SAFETY_MARGIN

    def due(self, now: float, refresh_margin: float) -> bool:
        return not 0 <= now - self.signed_at < TOKEN_LIFETIME - refresh_margin


class CredentialsUnavailable(AuthenticationError):
    """No AWS credentials to sign a token with. An ``AuthenticationError`` to redis-py, so a
    connection that meets it is closed, and to kvcache a reason to degrade, not to crash."""


class IAMCredentialProvider(CredentialProvider):
    def __init__(
        self,
        service: Service = "elasticache",
        *,
        name: str,
        user_id: str,
        region: str | None = None,
        serverless: bool = False,
        session: Session | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
        telemetry: bool = True,
    ) -> None:
        """``name``: the replication group, serverless cache or MemoryDB cluster name (not
        its endpoint). ``user_id``: the IAM-enabled user's id, which is also its name.
        ``region``: the cache's; by default the session's. ``session``: where credentials
        come from (default ``boto3.Session()``, the standard chain). ``refresh_margin``:
        seconds before expiry the background re-signing starts. ``clock``: wall time.
        ``telemetry``: count tokens signed (``kvcache.iam.token.refreshes``)."""
        if service not in SERVICES:
            raise ConfigurationError(f"service must be one of {', '.join(SERVICES)}")
        if not name or not user_id:
            raise ConfigurationError("IAM authentication needs the cache name and the user id")
        if serverless and service != "elasticache":
            raise ConfigurationError("serverless applies to ElastiCache only")
        if not SAFETY_MARGIN < refresh_margin < TOKEN_LIFETIME:
            raise ConfigurationError(
                f"refresh_margin must be between {SAFETY_MARGIN:g} and {TOKEN_LIFETIME} s"
            )
        self._own_session = session is None  # then a forked child makes its own
        if session is None:
            session = _default_session()
        region = region or session.region_name
        if not region:
            raise ConfigurationError("IAM authentication needs a region (none in the session)")
        self.service = service
        self.name = name.lower()
        self.user_id = user_id
        self.region = region
        self.serverless = serverless
        self.refresh_margin = refresh_margin
        self._session = session
        self._clock = clock
        self._credentials: Any = None  # frozen, from the last resolution
        self._token: _Token | None = None
        self._failed_at: float | None = None  # last failed background refresh
        self._credentials_stale = False  # the server refused a token: resolve again
        self.signed = 0  # tokens signed so far (observability, tests)
        self._telemetry = telemetry
        self._closed = False
        self._session_stale = False
        self._new_threading()
        forks.register(self)

    def _new_threading(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def after_fork(self) -> None:
        self._new_threading()
        # The parent's session may hold a lock (a refresh in progress) and connections.
        self._session_stale = self._own_session

    def __repr__(self) -> str:  # never the token
        return (
            f"IAMCredentialProvider(service={self.service!r}, name={self.name!r}, "
            f"user_id={self.user_id!r}, region={self.region!r}, serverless={self.serverless})"
        )

    # -- redis-py's CredentialProvider -------------------------------------------------------

    def get_credentials(self) -> tuple[str, str]:
        return self.user_id, self.token()

    async def get_credentials_async(self) -> tuple[str, str]:
        if self._credentials is None:  # the first resolution may do I/O: not on the loop
            return await asyncio.to_thread(self.get_credentials)
        return self.get_credentials()

    # -- the token -----------------------------------------------------------------------------

    def token(self) -> str:
        """A token with more than a minute left: the cached one, else one signed now."""
        now = self._clock()
        token = self._token
        if token is None or not token.usable(now):
            with self._lock:  # one signer; the others wait for its token
                token = self._token
                if token is None or not token.usable(now):
                    if self._credentials is None:  # startup: the one inline resolution
                        try:
                            self._credentials = self._resolve()
                        except Exception as exc:
                            self._count(ok=False)
                            raise CredentialsUnavailable(
                                f"IAM credentials unavailable ({type(exc).__name__})"
                            ) from exc
                    token = self._sign(self._credentials)
        self._start_refresher()
        return token.value

    def invalidate(self) -> None:
        """The server refused the token: sign a new one for the next connection, and have
        the background thread resolve the credentials again (they may have been rotated)."""
        self._token = None
        self._credentials_stale = True
        self._wake.set()

    def close(self) -> None:
        """Stop the background refresher (it also stops when the provider is collected)."""
        self._closed = True
        self._wake.set()

    def _resolve(self) -> Any:
        if self._session_stale:
            self._session, self._session_stale = _default_session(), False
        credentials = self._session.get_credentials()
        if credentials is None:
            raise ConfigurationError("no AWS credentials found for IAM authentication")
        return credentials.get_frozen_credentials()

    def _count(self, ok: bool) -> None:
        if self._telemetry:
            telemetry.token_signed(ok)

    def _sign(self, credentials: Any) -> _Token:
        now = int(self._clock())
        value = sign_token(
            credentials,
            service=self.service,
            name=self.name,
            user_id=self.user_id,
            region=self.region,
            serverless=self.serverless,
            at=datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
        )
        self._token = token = _Token(value, now)
        self.signed += 1
        self._count(ok=True)
        return token

    # -- the background refresher ----------------------------------------------------------

    def _start_refresher(self) -> None:
        thread = self._thread
        if (thread is None or not thread.is_alive()) and not self._closed:
            with self._lock:
                if self._thread is thread:
                    self._thread = threading.Thread(
                        target=_refresh_loop,
                        args=(weakref.ref(self), self._wake),
                        name="kvcache-iam-refresh",
                        daemon=True,
                    )
                    self._thread.start()

    def _due(self) -> bool:
        now = self._clock()
        if self._failed_at is not None and 0 <= now - self._failed_at < RETRY_AFTER:
            return False
        token = self._token
        return self._credentials_stale or token is None or token.due(now, self.refresh_margin)

    def _refresh(self) -> None:
        """Resolve the credentials (this may call IMDS or STS) and sign a new token. A
        failure is logged once per streak and retried RETRY_AFTER later; meanwhile
        connections keep the current token while it is usable."""
        try:
            credentials = self._resolve()
            with self._lock:
                token = self._token
                fresh = token is not None and not token.due(self._clock(), self.refresh_margin)
                if not (fresh and credentials == self._credentials):  # else nothing changes
                    self._sign(credentials)
                self._credentials = credentials
                self._credentials_stale = False
        except Exception as exc:
            self._count(ok=False)
            if self._failed_at is None:
                log.warning(
                    "kvcache: IAM credentials could not be refreshed (%s); will retry",
                    type(exc).__name__,
                )
            self._failed_at = self._clock()
        else:
            self._failed_at = None


def _refresh_loop(ref: weakref.ref[IAMCredentialProvider], wake: threading.Event) -> None:
    """Re-sign ahead of expiry; ends when the provider is closed or collected."""
    while True:
        provider = ref()
        if provider is None or provider._closed:
            return
        try:
            if provider._due():
                provider._refresh()
        except Exception as exc:  # never die (a broken clock?): no fresh token otherwise
            log.debug("kvcache: IAM refresher: %s", type(exc).__name__)
        del provider  # hold no reference while asleep
        wake.wait(RECHECK)
        wake.clear()


def _default_session() -> Session:
    try:
        import boto3
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "IAM authentication needs boto3: pip install 'kvcache[aws]'"
        ) from None
    session: Session = boto3.Session()
    return session
