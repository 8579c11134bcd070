"""Framework integrations: Django, Flask-Caching, FastAPI (each imports its framework)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from kvcache.errors import ConfigurationError


def sign_pickle_with_secret(
    options: dict[str, Any], secret: Callable[[], str | bytes | None], name: str, purpose: str
) -> None:
    """Make ``options`` pickle (a framework's default) signed with a key derived from the
    framework's secret (``secret()``, read only then), unless they name another serializer or
    their own ``signing_key``.

    Pickle is never unsigned by accident: with no key and no secret it is a
    ConfigurationError naming ``name`` (e.g. ``SECRET_KEY``); ``pickle-unsigned`` is the
    app's explicit choice."""
    options.setdefault("serializer", "pickle")
    if options["serializer"] != "pickle" or options.get("signing_key"):
        return
    secret_value = secret()
    if not secret_value:
        raise ConfigurationError(
            f"{name} is empty: signed pickle derives its signing key from it. Set {name}, "
            "or give a signing_key, or name serializer='pickle-unsigned' (only for a Redis "
            "nobody else can write to)"
        )
    material = secret_value if isinstance(secret_value, bytes) else str(secret_value).encode()
    # Derived per integration (``purpose``): the cache's key is not the framework's secret.
    options["signing_key"] = hashlib.sha256(f"{purpose}:".encode() + material).hexdigest()
