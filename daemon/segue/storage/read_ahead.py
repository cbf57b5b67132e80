"""Read-ahead: a stream's next chunks are read and decrypted while it sends the current one.

A stream asks for the chunks after the one it is sending; each is read in a task of the
stream's own nursery (so it ends with the stream, and a hung share's deadline still applies),
one worker-thread hop for the whole read + verify + decrypt. With the chunk cache on, what is
read ahead also lands in the cache; with the cache off, the chunk goes to the stream alone. So
a cold stream's reads overlap its sending whatever the cache's size.

What bounds it: a node-wide budget of chunks read ahead and not yet taken by their stream
(`chunks`). Asking never waits: when the budget is spent, the chunk is counted as skipped and
the stream reads it when it gets there, so slow players holding pages they cannot send yet
never hold up anyone else's reads, and memory for pages ahead stays within chunks x chunk size.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable

import structlog
import trio

from segue.metrics import Metrics
from segue.storage.errors import TrackNotFound, TrackUnavailable
from segue.storage.pages import Chunk

log = structlog.get_logger("segue.storage.read_ahead")


class Ahead:
    """One chunk being read ahead for a stream: `take` it, or `drop` it."""

    __slots__ = ("_budget", "_done", "_error", "_page", "_settled", "_wanted", "index")

    def __init__(self, budget: ReadAhead, index: int) -> None:
        self._budget = budget
        self.index = index
        self._done = trio.Event()
        self._page: Chunk | None = None
        self._error: Exception | None = None
        self._wanted = True
        self._settled = False

    async def take(self) -> Chunk:
        """The chunk (the caller's reference); raises the read's TrackUnavailable."""
        await self._done.wait()
        page, self._page = self._page, None
        self._settle()
        if page is None:
            assert self._error is not None
            raise self._error
        return page

    def drop(self) -> None:
        """The stream no longer wants it (it ended early): its page goes when the read ends."""
        if self._wanted:
            self._wanted = False
            if self._done.is_set():
                self._settle()

    def _settle(self) -> None:
        """Give its place in the budget back (and its page, unless the stream took it)."""
        if self._settled:
            return
        self._settled = True
        if self._page is not None:
            self._page.release()
            self._page = None
        self._budget.free += 1


class ReadAhead:
    """The node-wide budget of chunks read ahead, and the reads themselves."""

    def __init__(self, chunks: int, metrics: Metrics) -> None:
        self.free = chunks
        self._started = metrics.read_ahead.labels("started")
        self._skipped = metrics.read_ahead.labels("skipped")

    def start(self, nursery: trio.Nursery, index: int,
              read: Callable[[], Awaitable[Chunk]]) -> Ahead | None:
        """Start `read()` of chunk `index` in `nursery`; None (counted) when over budget."""
        if self.free <= 0:
            self._skipped.inc()
            return None
        self.free -= 1
        self._started.inc()
        ahead = Ahead(self, index)
        nursery.start_soon(self._fill, ahead, read)
        return ahead

    @staticmethod
    async def _fill(ahead: Ahead, read: Callable[[], Awaitable[Chunk]]) -> None:
        try:
            ahead._page = await read()
        except (TrackNotFound, TrackUnavailable) as e:
            ahead._error = TrackUnavailable(*e.args)  # the stream reports it, if it gets there
        except Exception as e:  # a bug in a read ahead must not take the stream down
            log.exception("read-ahead failed", chunk=ahead.index)
            ahead._error = TrackUnavailable(f"chunk {ahead.index}: read-ahead failed: {e}")
        except BaseException:  # cancelled: the stream has ended (or the node is stopping)
            ahead._error = TrackUnavailable(f"chunk {ahead.index}: read-ahead abandoned")
            raise
        finally:
            ahead._done.set()
            if not ahead._wanted:
                ahead._settle()


class Window:
    """One stream's chunks in order, with up to `depth` after the current one read ahead.

    Made once the stream's first chunk is in hand; `take` each later index in order, and
    `close` when the stream ends (what was read ahead and not taken is given back).
    """

    def __init__(self, read_ahead: ReadAhead, nursery: trio.Nursery, chunks: range, depth: int,
                 read: Callable[[int], Awaitable[Chunk]], cached: Callable[[int], bool]) -> None:
        self._read_ahead = read_ahead
        self._nursery = nursery
        self._last = chunks[-1]
        self._depth = depth
        self._read = read
        self._cached = cached
        self._ahead: deque[Ahead] = deque()
        self._next = chunks[0] + 1  # the first index not asked for yet
        self._fill(chunks[0])

    async def take(self, index: int) -> Chunk:
        """Chunk `index`, the caller's to release: read ahead, or read now."""
        ahead = self._ahead
        while ahead and ahead[0].index < index:
            ahead.popleft().drop()
        if ahead and ahead[0].index == index:
            page = await ahead.popleft().take()
        else:
            page = await self._read(index)
        self._fill(index)
        return page

    def _fill(self, current: int) -> None:
        """Start reading the uncached chunks up to `depth` after `current`, budget allowing."""
        index = max(self._next, current + 1)
        until = min(current + self._depth, self._last)
        while index <= until:
            if not self._cached(index):
                started = self._read_ahead.start(
                    self._nursery, index, functools.partial(self._read, index))
                if started is None:
                    break
                self._ahead.append(started)
            index += 1
        self._next = index

    def close(self) -> None:
        while self._ahead:
            self._ahead.popleft().drop()
