"""Hybrid logical clock stamps (Kulkarni et al., 2014): physical milliseconds, a counter, and
the node id as the final tie-break.

Every change to a session is stamped by the node that accepted it, never by a device: device
clocks are wrong by seconds. A stamp orders changes the way people expect (a later action wins)
while staying causal across nodes whose clocks differ a little. Stamps from elsewhere that are
too far ahead of this node's clock are clamped, so one node with a bad clock (or a hostile
peer) cannot make its changes win for hours or drag every other clock into the future.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: How far ahead of this node's clock a stamp from elsewhere may be before it is clamped.
MAX_AHEAD_MS = 2000


@dataclass(frozen=True, order=True, slots=True)
class Stamp:
    """One point of the hybrid logical clock; compares as (wall_ms, counter, node)."""

    wall_ms: int
    counter: int
    node: str

    def to_json(self) -> list[int | str]:
        return [self.wall_ms, self.counter, self.node]

    @classmethod
    def from_json(cls, doc: object) -> Stamp:
        """ValueError for anything but [int, int, str] with sane values."""
        if not (isinstance(doc, list) and len(doc) == 3):
            raise ValueError("a stamp is [wall_ms, counter, node]")
        wall, counter, node = doc
        if (type(wall) is not int or type(counter) is not int or not isinstance(node, str)
                or not 0 <= wall < 2**53 or not 0 <= counter < 2**32 or not 0 < len(node) <= 64):
            raise ValueError("a stamp is [wall_ms, counter, node] with sane values")
        return cls(wall, counter, node)

    def __str__(self) -> str:
        """Compact and sortable as text: the SSE event id."""
        return f"{self.wall_ms:x}.{self.counter:x}.{self.node}"

    @classmethod
    def parse(cls, text: str) -> Stamp:
        """The inverse of str(); ValueError otherwise."""
        wall, counter, node = text.split(".", 2)
        return cls.from_json([int(wall, 16), int(counter, 16), node])


ZERO = Stamp(0, 0, "")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """This node's hybrid logical clock."""

    def __init__(self, node: str, now_ms: Callable[[], int] = wall_clock_ms,
                 max_ahead_ms: int = MAX_AHEAD_MS) -> None:
        self.node = node
        self._now_ms = now_ms
        self.max_ahead_ms = max_ahead_ms
        self._last = Stamp(0, 0, node)

    def now_ms(self) -> int:
        """Physical time in milliseconds (the clock positions are extrapolated with)."""
        return self._now_ms()

    def tick(self) -> Stamp:
        """A new stamp for a change accepted here, later than every stamp seen so far."""
        physical = self._now_ms()
        last = self._last
        if physical > last.wall_ms:
            self._last = Stamp(physical, 0, self.node)
        else:
            self._last = Stamp(last.wall_ms, last.counter + 1, self.node)
        return self._last

    def clamp(self, remote: Stamp) -> Stamp:
        """`remote`, or, when it is more than max_ahead_ms ahead of this clock, a stamp at
        that limit (same counter and node): what a change from elsewhere may claim."""
        limit = self._now_ms() + self.max_ahead_ms
        return remote if remote.wall_ms <= limit else Stamp(limit, remote.counter, remote.node)

    def observe(self, remote: Stamp) -> Stamp:
        """Take a stamp from elsewhere into account (clamped first); returns the clamped one.

        After this, tick() returns stamps later than it, so a change made here after seeing a
        change from elsewhere wins over it everywhere.
        """
        clamped = self.clamp(remote)
        if clamped.wall_ms > self._last.wall_ms or (
                clamped.wall_ms == self._last.wall_ms and clamped.counter > self._last.counter):
            self._last = Stamp(clamped.wall_ms, clamped.counter, self.node)
        return clamped
