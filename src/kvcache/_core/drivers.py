"""The two drivers: the only code that carries out the calls the pure core yields.

Operations (``operations/``) and the adapter (``breaker.py``) are generators that
``yield`` calls ``(target, request)`` (``types.py``) and get each result sent back (or a
``KVCacheError`` thrown in).
``run`` performs them on sync targets; ``arun`` also awaits the targets that are async.
A target may answer with a generator of its own (a sub-operation: the cluster router's
routed calls), which the driver runs in place. Anything else a target raises (a cancelled
task, an interrupt, a bug) is thrown into the operation too, so it unwinds at once (its span
ends, a probe lets the next one run) rather than whenever it is garbage-collected; it
propagates unless the operation handles it.
"""

from __future__ import annotations

from types import GeneratorType
from typing import TypeVar

from kvcache._core.types import Op
from kvcache.errors import KVCacheError

T = TypeVar("T")


def run(op: Op[T]) -> T:
    try:
        call = next(op)
        while True:
            try:
                target, asked = call
                result = getattr(target, asked.method)(*asked.args)
                if type(result) is GeneratorType:
                    result = run(result)
            except KVCacheError as exc:
                call = op.throw(exc)
            except BaseException as exc:
                op.throw(exc)
                raise
            else:
                call = op.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(op: Op[T]) -> T:
    try:
        call = next(op)
        while True:
            try:
                target, asked = call
                result = getattr(target, asked.method)(*asked.args)
                if target.is_async:
                    result = await result
                elif type(result) is GeneratorType:
                    result = await arun(result)
            except KVCacheError as exc:
                call = op.throw(exc)
            except BaseException as exc:
                op.throw(exc)
                raise
            else:
                call = op.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
