"""What the HTTP layer reads tracks through: open a track, get a verified plaintext chunk.

It puts the rooms of storage together: opened tracks (tracks.py), the decrypted-chunk cache
(chunk_cache.py), one read per chunk at a time (flight.py), copies on several shares
(replicas.py), plaintext in write-once pages (pages.py) and each stream's read-ahead
(read_ahead.py).
"""

from __future__ import annotations

import functools

import trio

from segue.metrics import Metrics
from segue.seal.keyring import EdgeKeys
from segue.seal.track import OpenedTrack
from segue.storage.chunk_cache import ChunkCache, Key
from segue.storage.errors import TrackUnavailable
from segue.storage.flight import Flight, single_flight
from segue.storage.pages import Chunk
from segue.storage.read_ahead import ReadAhead, Window
from segue.storage.replicas import Replicas
from segue.storage.shares import ShareSet
from segue.storage.tracks import AcceptedVersion, AcceptVersion, Tracks


class Library:
    """Opens tracks and reads their plaintext chunks for the HTTP layer."""

    def __init__(
        self,
        shares: ShareSet,
        keys: EdgeKeys,
        *,
        accepted_version: AcceptedVersion,
        accept_version: AcceptVersion,
        versions_limiter: trio.CapacityLimiter,
        versions_timeout_s: float,
        worker_threads: int,
        open_tracks: int,
        metrics: Metrics,
        read_timeout_s: float,
        cache_bytes: int = 0,
        read_ahead_chunks: int = 0,
    ) -> None:
        """See Tracks for the version callbacks; `worker_threads` sizes the budget of chunks
        read ahead (read_ahead_chunks for each of 4 x worker_threads streams at once)."""
        self.shares = shares
        self._replicas = Replicas(shares, metrics, read_timeout_s=read_timeout_s,
                                  keep_buffers=4 * worker_threads)
        self._tracks = Tracks(self._replicas, keys, capacity=open_tracks, metrics=metrics,
                              accepted_version=accepted_version, accept_version=accept_version,
                              versions_limiter=versions_limiter,
                              versions_timeout_s=versions_timeout_s)
        self.cache = ChunkCache(cache_bytes, metrics)
        self._loading: dict[Key, Flight] = {}  # chunk -> its read in flight
        self.read_ahead_chunks = read_ahead_chunks
        self._read_ahead = ReadAhead(read_ahead_chunks * 4 * worker_threads, metrics)

    async def open(self, track_id: str) -> OpenedTrack:
        """The verified, unwrapped track; raises TrackNotFound or TrackUnavailable."""
        return await self._tracks.open(track_id)

    async def chunk(self, track: OpenedTrack, index: int) -> Chunk:
        """Plaintext of chunk `index`, verified, which the caller must release.

        From the cache when it is there; otherwise read once (a second request for a chunk
        being read waits for that read) and cached. Raises TrackUnavailable when no copy can
        be used.
        """
        try:
            if self.cache.capacity == 0:
                return await self._replicas.chunk(track, index, kept=False)
            key = (track.manifest.track_id, track.manifest.content_version, index)
            while (page := self.cache.get(key)) is None:
                loading = self._loading.get(key)
                if loading is None:
                    break
                await loading.result()  # then from the cache (or read here: evicted, cancelled)
            else:
                return page
            read = functools.partial(self._replicas.chunk, track, index, kept=True)
            page = await single_flight(self._loading, key, read,
                                       f"chunk {index} of track {key[0]}: the read was abandoned")
        except TrackUnavailable:
            # The track may have been sealed again (re-packed) since it was opened: the next
            # request opens its manifest afresh instead of failing until eviction.
            self._tracks.forget(track.manifest.track_id)
            raise
        self.cache.put(key, page)
        return page

    def window(self, nursery: trio.Nursery, track: OpenedTrack, chunks: range) -> Window:
        """A stream's read-ahead over `chunks`, whose first the stream holds already: the
        next read_ahead_chunks are read (in `nursery`, the stream's) while it sends."""
        manifest = track.manifest

        def cached(index: int) -> bool:
            return self.cache.contains((manifest.track_id, manifest.content_version, index))

        return Window(self._read_ahead, nursery, chunks, self.read_ahead_chunks,
                      functools.partial(self.chunk, track), cached)

    def set_keys(self, keys: EdgeKeys) -> None:
        """Use new keys and trust (after a reload); tracks are opened again with them."""
        self._tracks.set_keys(keys)
        self.cache.clear()
