"""The public surface is what ``__all__`` says, and nothing more (as httpx's own test pins
it): a name added or dropped by accident fails here, not in a user's import."""

from __future__ import annotations

import importlib
import pkgutil
import types
import typing

import pytest

import kvcache

PUBLIC_MODULES = [
    "kvcache",
    "kvcache.aws",
    "kvcache.errors",
    "kvcache.serializers",
    "kvcache.settings",
    "kvcache.stores",
    "kvcache.stores.base",
    "kvcache.testing",
]


def test_the_package_exports_exactly_its_public_names() -> None:
    public = sorted(
        name
        for name, member in vars(kvcache).items()
        if not name.startswith("_") and not isinstance(member, types.ModuleType)
    )
    assert public == sorted(set(kvcache.__all__) - {"__version__"})
    assert kvcache.__version__


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_name_exists_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for member in module.__all__:
        found = getattr(module, member)
        if isinstance(found, type):  # its annotations resolve (pydantic, FastAPI read them)
            typing.get_type_hints(found)


def test_internals_are_private_packages() -> None:
    """Everything besides the public modules, the integrations, the CLI and the testing
    kit lives under a private name (``kvcache._core`` …)."""
    allowed = {"aws", "errors", "serializers", "settings", "stores", "integrations", "testing"}
    allowed.add("cli")
    top = {m.name for m in pkgutil.iter_modules(kvcache.__path__)}
    assert {name for name in top if not name.startswith("_")} == allowed
