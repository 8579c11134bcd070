"""Fork safety: objects that hold locks, threads or connection slots re-initialise in a
forked child (gunicorn and celery prefork workers fork after the app built its cache).

A lock another thread held at fork time stays held forever in the child, a prober thread
does not exist there, and a connection slot taken by another thread is never given back.
Each such object registers here and gets ``after_fork()`` called in the child; a module's
own state registers a function (``at_fork``). One hook for the process, a weak set of
objects: registering costs no memory once an object is gone.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Protocol


class ForkAware(Protocol):
    def after_fork(self) -> None: ...


log = logging.getLogger("kvcache.forks")

_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_functions: list[Callable[[], None]] = []  # modules' hooks: they live as long as the process


def register(obj: ForkAware) -> None:
    _objects.add(obj)


def at_fork(function: Callable[[], None]) -> Callable[[], None]:
    """Call ``function`` in every forked child (a decorator for module-level state)."""
    _functions.append(function)
    return function


def _in_child() -> None:
    """Each hook on its own: one that fails must not leave the others' locks held."""
    for hook in [*_functions, *(obj.after_fork for obj in list(_objects))]:
        try:
            hook()
        except Exception as exc:
            log.warning("kvcache: after fork, %r failed: %r", hook, exc)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
