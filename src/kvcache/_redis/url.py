"""Redis URLs: what redis-py accepts in one (checked before any I/O, errors that never quote
a value), and the same URL with its credentials masked for logs and reprs."""

from __future__ import annotations

import difflib
import inspect
import re
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import connection as async_connection
from redis.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from kvcache.errors import ConfigurationError

__all__ = ["URL_OPTIONS", "check_url", "query_credentials", "redact_url", "url_user"]


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


def query_credentials(url: str) -> bool:
    """Does the URL's query carry a credential (``username=``, ``password=``, a token)?"""
    return bool(_CREDENTIAL_PARAM.search(url.partition("?")[2]))


def url_user(url: str) -> tuple[str, str]:
    """The URL's user name and password from its user info (either may be empty)."""
    info = url.partition("?")[0].partition("://")[2].rpartition("@")[0]
    user, _, password = info.partition(":")
    return unquote(user), unquote(password)


def _accepted(*classes: type) -> frozenset[str]:
    """The keyword arguments every one of ``classes`` accepts (their ``__init__``s along
    the MRO): what redis-py really passes a URL's query options to."""
    sets = []
    for cls in classes:
        names: set[str] = set()
        for base in cls.__mro__:
            if "__init__" in vars(base):
                names.update(inspect.signature(base.__init__).parameters)  # type: ignore[misc]
        sets.append(names)
    return frozenset.intersection(*map(frozenset, sets))


# Query options a URL may carry. Left out on purpose: what kvcache sets itself (retries,
# decode_responses, protocol, client_name and max_connections, which are settings), what
# redis-py deprecates (lib_name, lib_version) and what a string cannot carry (classes).
# Kept only where the connection class of the scheme, sync and async, accepts it: anything
# else would reach its constructor and make every connect fail with a TypeError.
_URL_OPTIONS = [
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_read_size",
    "health_check_interval",
]
_TLS_OPTIONS = [
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_ciphers",
    "ssl_min_version",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
]
URL_OPTIONS: dict[str, frozenset[str]] = {
    scheme: frozenset(_URL_OPTIONS + _TLS_OPTIONS) & _accepted(sync, asynchronous)
    for scheme, sync, asynchronous in (
        ("redis", Connection, async_connection.Connection),
        ("rediss", SSLConnection, async_connection.SSLConnection),
        (
            "unix",
            UnixDomainSocketConnection,
            async_connection.UnixDomainSocketConnection,
        ),
    )
}
_URL_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")


def check_url(url: str, op_timeout: float) -> None:
    """Refuse, before any I/O, what redis-py would fail on only when connecting (an unknown
    query option, a TLS option without TLS), or silently ignore (a path that is no database
    number), and URL timeouts longer than ``op_timeout``, the bound every call keeps.
    ``url`` is without kvcache's own ``mode`` option. Errors never quote a value."""
    scheme = url.partition("://")[0].lower()
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ConfigurationError("url is not a valid Redis URL (bad port)") from None
    accepted = URL_OPTIONS[scheme]
    for name in parse_qs(parts.query, keep_blank_values=True):
        if name in accepted:
            continue
        if name in _TLS_OPTIONS:
            raise ConfigurationError(f"the URL option {name!r} needs a rediss:// (TLS) URL")
        hint = difflib.get_close_matches(name, sorted(accepted), n=1)
        raise ConfigurationError(
            f"the URL option {name!r} is not accepted on {scheme}:// URLs"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; accepted: mode, {', '.join(sorted(accepted))}"
        )
    if scheme != "unix" and not re.fullmatch(r"/?\d*", unquote(parts.path)):
        raise ConfigurationError("url: the path must be a database number (redis://host:6379/0)")
    try:
        # No I/O: redis-py's own parsing of each option's value.
        options = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # "Invalid value for 'db' in connection URL.": no value shown
        raise ConfigurationError(f"url: {exc}") from None
    for name in _URL_TIMEOUTS:
        if name in options and not 0 < options[name] <= op_timeout:
            raise ConfigurationError(
                f"the URL's {name}={options[name]:g} must be > 0 and at most op_timeout "
                f"({op_timeout:g} s): op_timeout bounds every call; set op_timeout instead"
            )
