"""What a wrong setting tells the user: pydantic's errors as one line per setting, naming its
``KVCACHE_`` variable and its value (URLs redacted, secrets never shown), and a warning for a
``KVCACHE_`` variable that names no setting. ``fields``: the settings model's fields."""

from __future__ import annotations

import difflib
import os
import re
import warnings

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from kvcache._redis.url import redact_url
from kvcache.errors import ConfigurationWarning

Fields = dict[str, FieldInfo]

_SECRET_SETTINGS = re.compile(r"signing_key|password|token|secret", re.IGNORECASE)
# KVCACHE_ variables kvcache reads that are not settings (the testing helpers' binary).
_NOT_SETTINGS = frozenset({"KVCACHE_REDIS_SERVER"})
_warned: set[str] = set()  # each unknown variable warns once per process


def _shown(setting: str, value: object) -> str:
    """A bad value as an error may show it: URLs redacted, secrets never."""
    if _SECRET_SETTINGS.search(setting):
        return "***"
    if setting == "url":
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return repr(redact_url(raw))
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _env_name(setting: str) -> str:
    return "KVCACHE_" + setting.replace(".", "__").upper()


def _setting(loc: tuple[int | str, ...], fields: Fields) -> str:
    """The setting an error's location names: ``iam.name``, not a union member's tag."""
    if not loc:
        return ""
    first = str(loc[0])
    field = fields.get(first)
    nested = field.annotation if field is not None else None
    nested_model = isinstance(nested, type) and issubclass(nested, BaseModel)
    if len(loc) > 1 and nested_model and loc[1] in nested.model_fields:  # type: ignore[union-attr]
        return f"{first}.{loc[1]}"
    return first


def explain(exc: ValidationError, fields: Fields) -> str:
    """pydantic's errors as one line each, naming the setting, its variable and the value."""
    lines, named = [], set()
    for error in exc.errors():
        setting = _setting(error["loc"], fields)
        if setting in named:  # a union's members each add an error: the first says enough
            continue
        named.add(setting)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(setting, sorted(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"unknown setting {setting!r}{hint}")
        elif not setting or isinstance(error["input"], dict):  # a check across settings
            lines.append(f"{setting}: {message}" if setting else message)
        else:
            value = _shown(setting, error["input"])
            lines.append(f"{setting} ({_env_name(setting)}) = {value}: {message}")
    return "invalid kvcache settings: " + "; ".join(lines)


def _setting_variables(fields: Fields) -> list[str]:
    """Every ``KVCACHE_*`` variable a setting is read from, nested ones included."""
    names = []
    for name, field in fields.items():
        names.append(_env_name(name))
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names += [_env_name(f"{name}.{sub}") for sub in nested.model_fields]
    return names


def warn_unknown_variables(fields: Fields) -> None:
    """One warning per ``KVCACHE_`` variable that names no setting (a typo such as
    ``KVCACHE_NAMESPCE`` would otherwise be ignored without a word)."""
    known: list[str] | None = None
    for variable in os.environ:
        upper = variable.upper()  # (pydantic-settings reads them case-insensitively)
        if not upper.startswith("KVCACHE_") or upper in _NOT_SETTINGS or upper in _warned:
            continue
        known = known if known is not None else _setting_variables(fields)
        if upper in known:
            continue
        _warned.add(upper)
        close = difflib.get_close_matches(upper, known, n=1)
        warnings.warn(
            f"{variable} names no kvcache setting"
            + (f": did you mean {close[0]}?" if close else ""),
            ConfigurationWarning,
            stacklevel=3,  # the code that builds the settings
        )
