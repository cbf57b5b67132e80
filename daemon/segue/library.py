"""The tracks this node can open: verified manifests and unwrapped keys (cached), and chunks
read and decrypted in worker threads.

Opening a track costs a signature check and an RSA or HPKE unwrap; both happen once per track
and the result is kept in a bounded LRU. Reading a chunk is one worker-thread hop that reads the
file and verifies and decrypts it, so no unverified byte ever reaches the event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import structlog
import trio

from segue.buffers import BufferPool, Lease
from segue.catalogue import Catalogue
from segue.metrics import Metrics
from segue.seal.chunks import TAG_BYTES
from segue.seal.errors import ChunkAuthenticationError, SealError
from segue.seal.keyring import EdgeKeys
from segue.seal.track import OpenedTrack, open_track
from segue.storage.errors import NotInStoreError, StoreError
from segue.storage.local import LocalStore

log = structlog.get_logger("segue.library")


class TrackUnavailable(Exception):
    """The track exists but cannot be served now (no valid manifest, chunk or key)."""


class TrackNotFound(Exception):
    """No such track on this node."""


class Library:
    """Opens tracks and reads their plaintext chunks for the HTTP layer."""

    def __init__(
        self,
        store: LocalStore,
        catalogue: Catalogue,
        keys: EdgeKeys,
        limiter: trio.CapacityLimiter,
        *,
        open_tracks: int,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._catalogue = catalogue
        self._keys = keys
        self._limiter = limiter
        self._capacity = open_tracks
        self._opened: OrderedDict[str, OpenedTrack] = OrderedDict()
        self._metrics = metrics
        self._pools: dict[int, BufferPool] = {}
        self._keep_buffers = 4 * int(limiter.total_tokens)
        self._thread = threading.local()

    async def open(self, track_id: str) -> OpenedTrack:
        """The verified, unwrapped track; raises TrackNotFound or TrackUnavailable."""
        opened = self._opened.get(track_id)
        if opened is not None:
            self._opened.move_to_end(track_id)
            self._metrics.open_tracks.labels("hit").inc()
            return opened
        self._metrics.open_tracks.labels("miss").inc()
        opened = await trio.to_thread.run_sync(self._open_blocking, track_id, limiter=self._limiter)
        self._opened[track_id] = opened
        while len(self._opened) > self._capacity:
            self._opened.popitem(last=False)
        return opened

    def _open_blocking(self, track_id: str) -> OpenedTrack:
        try:
            data = self._store.read_manifest(track_id)
        except NotInStoreError:
            raise TrackNotFound(track_id) from None
        except StoreError as e:
            log.error("manifest unreadable", track=track_id, error=str(e))
            raise TrackUnavailable(str(e)) from None
        accepted = self._catalogue.accepted_version(track_id)
        try:
            opened = open_track(data, self._keys.trusted_packagers, self._keys.private, accepted)
        except SealError as e:
            log.error("manifest refused", track=track_id, error=str(e))
            raise TrackUnavailable(str(e)) from None
        if opened.manifest.track_id != track_id:
            log.error("manifest names another track", track=track_id,
                      manifest_track=opened.manifest.track_id)
            raise TrackUnavailable(f"manifest at {track_id} is for {opened.manifest.track_id}")
        if accepted != opened.manifest.version:
            self._catalogue.accept_version(track_id, opened.manifest.version)
        return opened

    async def chunk(self, track: OpenedTrack, index: int) -> Lease:
        """Plaintext of chunk `index`, verified, in a pooled buffer the caller must release.

        Raises TrackUnavailable if the chunk cannot be read or fails verification.
        """
        return await trio.to_thread.run_sync(
            self._chunk_blocking, track, index, limiter=self._limiter
        )

    def _pool(self, size: int) -> BufferPool:
        pool = self._pools.get(size)
        if pool is None:
            pool = self._pools.setdefault(size, BufferPool(size, self._keep_buffers))
        return pool

    def _read_buffer(self, size: int) -> bytearray:
        """This worker thread's buffer for sealed chunks; one byte longer than any valid one."""
        buf: bytearray | None = getattr(self._thread, "buf", None)
        if buf is None or len(buf) != size:
            buf = self._thread.buf = bytearray(size)
        return buf

    def _chunk_blocking(self, track: OpenedTrack, index: int) -> Lease:
        track_id = track.manifest.track_id
        chunk_size = track.manifest.chunk_size
        sealed = self._read_buffer(chunk_size + TAG_BYTES + 1)
        try:
            length = self._store.read_chunk_into(track_id, index, sealed)
        except StoreError as e:
            log.error("chunk unreadable", track=track_id, chunk=index, error=str(e))
            raise TrackUnavailable(str(e)) from None
        pool = self._pool(chunk_size)
        plain = pool.take()
        try:
            expected = track.plaintext_length(index)
            if length != expected + TAG_BYTES:
                raise ChunkAuthenticationError(track_id, index)
            size = track.cipher.open_into(index, memoryview(sealed)[:length], plain)
        except ChunkAuthenticationError as e:
            pool.give_back(plain)
            self._metrics.chunk_auth_failures.inc()
            log.error("chunk failed verification", track=track_id, chunk=index,
                      store=str(self._store.root))
            raise TrackUnavailable(str(e)) from None
        return Lease(plain, size, pool)

    def set_keys(self, keys: EdgeKeys) -> None:
        """Use new keys and trust (after a reload); tracks are opened again with them."""
        self._keys = keys
        self._opened.clear()
