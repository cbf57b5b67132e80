"""Single flight: one read of a thing at a time, whose outcome everyone who asked shares.

A new release brings many first plays at once, and a popular chunk many readers: each track
is opened, and each chunk read, once; those who ask meanwhile wait for that outcome, good or
bad, instead of reading again in turn (which would multiply a slow share's delay).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import trio

from segue.storage.errors import TrackNotFound, TrackUnavailable

K = TypeVar("K", bound=Hashable)


class Flight:
    """A read in flight (a track's open, a chunk's read) whose outcome others wait for."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: Exception | None = None

    async def result(self) -> Any:
        """The read's value, or its error; None when the read was cancelled before it ended
        (the request that started it went away, as a seeking player's does): ask again."""
        await self._done.wait()
        if self._error is not None:
            # A fresh exception each: one instance raised in many tasks would pile up their
            # tracebacks.
            raise type(self._error)(*self._error.args)
        return self._value


async def single_flight(flights: dict[K, Flight], key: K,
                        read: Callable[[], Awaitable[Any]], abandoned: str) -> Any:
    """`read()` as the one flight for `key` in `flights`: its outcome is the waiters' too.

    The caller has checked that no flight for `key` is under way. A read cancelled with the
    request that started it leaves its waiters None (they read again: a player that aborts a
    range and asks for it again must not get the abort); one that ends any other way than
    with a value, TrackNotFound or TrackUnavailable (a bug) leaves them
    TrackUnavailable(`abandoned`).
    """
    flight = flights[key] = Flight()
    try:
        flight._value = await read()
    except (TrackNotFound, TrackUnavailable) as e:
        flight._error = e
        raise
    except trio.Cancelled:
        raise
    except BaseException:
        flight._error = TrackUnavailable(abandoned)
        raise
    finally:
        del flights[key]
        flight._done.set()
    return flight._value
