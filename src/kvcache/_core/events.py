"""Events a cache emits, and the small emitter that delivers them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvcache.errors import ConfigurationError

log = logging.getLogger("kvcache.events")


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A store command failed or a stored payload could not be read. Emitted as ``error``."""

    operation: str
    error: BaseException
    key: str | bytes | None = None


Handler = Callable[[Any], object]

# "error": an ErrorEvent, per failed call; "state": a StateChange, per transition;
# "connect_error": the StateChange STARTING -> DEGRADED, once, when the first connect fails.
EVENT_NAMES = frozenset({"error", "state", "connect_error"})


class Emitter:
    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in EVENT_NAMES}

    def on(self, name: str, handler: Handler) -> None:
        self._listeners(name).append(handler)

    def off(self, name: str, handler: Handler) -> None:
        listeners = self._listeners(name)
        if handler in listeners:
            listeners.remove(handler)

    def emit(self, name: str, event: object) -> None:
        for handler in tuple(self._handlers[name]):
            try:
                handler(event)
            except Exception:
                # A broken listener must not break the cache call that triggered it.
                log.exception("kvcache %r event handler %r raised", name, handler)

    def _listeners(self, name: str) -> list[Handler]:
        try:
            return self._handlers[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown event {name!r}; known events: {', '.join(sorted(EVENT_NAMES))}"
            ) from None
