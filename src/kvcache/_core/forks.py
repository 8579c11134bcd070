"""Fork safety: objects that hold locks, threads or connection slots re-initialise in a
forked child (gunicorn and celery prefork workers fork after the app built its cache).

A lock another thread held at fork time stays held forever in the child, a prober thread
does not exist there, and a connection slot taken by another thread is never given back.
Each such object registers here and gets ``after_fork()`` called in the child. One hook for
the process, a weak set of objects: registering costs no memory once an object is gone.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def after_fork(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    _objects.add(obj)


def _in_child() -> None:
    for obj in list(_objects):
        obj.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
