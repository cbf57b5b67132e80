"""Blocking work in worker threads, always under a limiter and a deadline.

Reads of a share, catalogue queries and metrics rendering block; they run in trio's worker
threads so the event loop keeps serving. A thread cannot be stopped, only abandoned: on the
deadline the caller gets trio.TooSlowError at once, while the thread keeps its limiter token
until it returns. That is why each caller passes the limiter of the resource it waits on (a
share's, the catalogue's): a hung resource then uses up its own capacity and no other's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def in_thread(fn: Callable[[*Ts], T], *args: *Ts,
                    limiter: trio.CapacityLimiter, timeout_s: float) -> T:
    """`fn(*args)` in a worker thread under `limiter`; trio.TooSlowError after `timeout_s`."""
    with trio.fail_after(timeout_s):
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter,
                                             abandon_on_cancel=True)
