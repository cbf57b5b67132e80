"""Read-ahead: warm the chunk cache with the chunks a sequential stream will ask for next.

A service of its own (`run`, started by the node in its services nursery) fed through a
bounded channel: asking never waits, and when the channel is full the request is skipped and
counted, so streams never pay for read-ahead. It reads under its own limiter, half the worker
threads, so that it never starves the reads players are waiting for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from segue.metrics import Metrics
from segue.seal.track import OpenedTrack
from segue.storage.errors import TrackUnavailable

log = structlog.get_logger("segue.storage.read_ahead")


class ReadAhead:
    """Runs `fetch(track, index)` for requested chunks, a bounded number at a time."""

    def __init__(self, fetch: Callable[[OpenedTrack, int], Awaitable[None]], *,
                 worker_threads: int, metrics: Metrics) -> None:
        self._fetch = fetch
        self._metrics = metrics
        self._limiter = trio.CapacityLimiter(max(1, worker_threads // 2))
        # As many waiting as may run: more would only be read after they are needed.
        self._send, self._receive = trio.open_memory_channel[tuple[OpenedTrack, int]](
            int(self._limiter.total_tokens))

    def request(self, track: OpenedTrack, index: int) -> bool:
        """Ask for chunk `index` to be read ahead; False (counted as skipped) when full."""
        try:
            self._send.send_nowait((track, index))
        except trio.WouldBlock:
            self._metrics.child(self._metrics.read_ahead, "skipped").inc()
            return False
        self._metrics.child(self._metrics.read_ahead, "started").inc()
        return True

    async def run(self) -> None:
        """Serve requests until cancelled."""
        async with trio.open_nursery() as nursery:
            async for track, index in self._receive:
                token = object()
                await self._limiter.acquire_on_behalf_of(token)
                nursery.start_soon(self._one, track, index, token)

    async def _one(self, track: OpenedTrack, index: int, token: object) -> None:
        try:
            await self._fetch(track, index)
        except TrackUnavailable:
            pass  # the stream that needs this chunk reports it, if it still does
        except Exception:  # a read-ahead is an optimisation: it must never stop the node
            log.exception("read-ahead failed", track=track.manifest.track_id, chunk=index)
        finally:
            self._limiter.release_on_behalf_of(token)
