"""What the HTTP layer reads tracks through: open a track, get a verified plaintext chunk.

It puts the rooms of storage together: opened tracks (tracks.py), the decrypted-chunk cache
(chunk_cache.py), one read per chunk at a time (flight.py), copies on several shares
(replicas.py) and read-ahead (read_ahead.py, a service the node runs).
"""

from __future__ import annotations

import functools

import trio

from segue.metrics import Metrics
from segue.seal.keyring import EdgeKeys
from segue.seal.track import OpenedTrack
from segue.storage.buffers import Lease
from segue.storage.chunk_cache import ChunkCache, Key
from segue.storage.errors import TrackUnavailable
from segue.storage.flight import Flight, single_flight
from segue.storage.read_ahead import ReadAhead
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
        """See Tracks for the version callbacks; `worker_threads` sizes the buffer pools and
        read-ahead's share of threads."""
        self.shares = shares
        self._replicas = Replicas(shares, metrics, read_timeout_s=read_timeout_s,
                                  keep_buffers=4 * worker_threads)
        self._tracks = Tracks(self._replicas, keys, capacity=open_tracks, metrics=metrics,
                              accepted_version=accepted_version, accept_version=accept_version,
                              versions_limiter=versions_limiter,
                              versions_timeout_s=versions_timeout_s)
        self.cache = ChunkCache(cache_bytes, metrics)
        self._loading: dict[Key, Flight] = {}  # chunk -> its read in flight
        self.read_ahead_chunks = read_ahead_chunks if cache_bytes else 0
        #: The read-ahead service: the node runs `prefetch.run()` in its services nursery.
        self.prefetch = ReadAhead(self._warm, worker_threads=worker_threads, metrics=metrics)

    async def open(self, track_id: str) -> OpenedTrack:
        """The verified, unwrapped track; raises TrackNotFound or TrackUnavailable."""
        return await self._tracks.open(track_id)

    async def chunk(self, track: OpenedTrack, index: int) -> Lease:
        """Plaintext of chunk `index`, verified, in a pooled buffer the caller must release.

        From the cache when it is there; otherwise read once (a second request for a chunk
        being read waits for that read) and cached. Raises TrackUnavailable when no copy can
        be used.
        """
        try:
            if self.cache.capacity == 0:
                return await self._replicas.chunk(track, index)
            key = (track.manifest.track_id, track.manifest.content_version, index)
            while (lease := self.cache.get(key)) is None:
                loading = self._loading.get(key)
                if loading is None:
                    break
                await loading.result()  # then take it from the cache (or read it, if evicted)
            else:
                return lease
            lease = await single_flight(
                self._loading, key, functools.partial(self._replicas.chunk, track, index),
                f"chunk {index} of track {key[0]}: the read was abandoned")
        except TrackUnavailable:
            # The track may have been sealed again (re-packed) since it was opened: the next
            # request opens its manifest afresh instead of failing until eviction.
            self._tracks.forget(track.manifest.track_id)
            raise
        self.cache.put(key, lease)
        return lease

    def read_ahead(self, track: OpenedTrack, after: int, last: int) -> None:
        """Ask for the chunks after `after` (up to read_ahead_chunks, not past `last`) that
        are neither cached nor being read, as far as read-ahead capacity allows; never waits."""
        manifest = track.manifest
        for index in range(after + 1, min(after + self.read_ahead_chunks, last) + 1):
            key = (manifest.track_id, manifest.content_version, index)
            if key in self._loading or self.cache.contains(key):
                continue
            if not self.prefetch.request(track, index):
                return

    async def _warm(self, track: OpenedTrack, index: int) -> None:
        (await self.chunk(track, index)).release()

    def set_keys(self, keys: EdgeKeys) -> None:
        """Use new keys and trust (after a reload); tracks are opened again with them."""
        self._tracks.set_keys(keys)
        self.cache.clear()
