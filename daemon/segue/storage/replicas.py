"""Reading one copy of a manifest or chunk from whichever share can give a good one.

Every read of a share that may wait is one worker-thread hop under that share's limiter and the
[store] read deadline (segue.threads.in_thread): a hung share uses up its own threads and no one
else's, and whoever waits gives up on it after the deadline and tries the next copy. The thread
also verifies (and for chunks decrypts) what it read, so the whole of a chunk's blocking work is
one hop. A chunk whose file the kernel holds (a local file in the page cache) is read, verified
and decrypted on the event loop instead, since it cannot wait (segue.storage.cached_read).
Either way no unverified byte goes further than the buffer it was read into: a chunk comes out
as a sealed write-once Page, or in a pooled buffer when it is sent once and not kept
(segue.storage.pages). A copy that cannot be read (share down, file missing, too slow) or fails
verification is skipped for the next copy; the player never notices while one good copy exists.

A share that errors as a whole (its root cannot be listed, its server is away) or times out is
marked down (the probe service brings it back); so is one whose copy is missing while the share
fails its probe (an unmounted share: its empty mount point). A copy that is missing, corrupt,
malformed or unreadable on a share that answers (BadCopyError) is skipped without blaming its
share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import structlog
import trio

from segue.metrics import Metrics
from segue.seal.chunks import TAG_BYTES
from segue.seal.errors import ChunkAuthenticationError, SealError
from segue.seal.track import OpenedTrack
from segue.storage.buffers import BufferPool, Lease
from segue.storage.errors import (
    BadCopyError,
    NotInStoreError,
    StoreError,
    TrackNotFound,
    TrackUnavailable,
)
from segue.storage.pages import Chunk, write_once
from segue.storage.shares import Share, ShareSet
from segue.threads import in_thread

log = structlog.get_logger("segue.storage.replicas")

T = TypeVar("T")


class _CopyFailed(Exception):
    """One copy could not be used; the next copy may be."""


class Replicas:
    """Reads verified manifests and chunks from the shares, failing over between copies."""

    def __init__(self, shares: ShareSet, metrics: Metrics, *, read_timeout_s: float,
                 keep_buffers: int) -> None:
        """`keep_buffers`: plaintext buffers kept for reuse per chunk size (about what the
        threads and streams hold at once), for chunks that are not kept."""
        self.shares = shares
        self._metrics = metrics
        self._timeout = read_timeout_s
        self._pools: dict[int, BufferPool] = {}
        self._keep_buffers = keep_buffers
        self._thread = threading.local()

    async def manifest(self, track_id: str, verify: Callable[[bytes], T]) -> T:
        """`verify(data)` of the first copy of the track's manifest, in share-health order,
        that it accepts (it raises SealError for one it refuses; it runs in the thread).

        Raises TrackNotFound when no share has the track, else TrackUnavailable when no copy
        could be read and verified. A share marked down that says "no such file" is not
        believed (an unmounted share is an empty folder): the track may be there, so 503.
        """
        missing = 0
        problems = []
        for share in self.shares.in_health_order():
            try:
                return await in_thread(self._verified_manifest, share, track_id, verify,
                                       limiter=share.limiter, timeout_s=self._timeout)
            except trio.TooSlowError:
                await self._timed_out(share, f"manifest read timed out after {self._timeout:g} s")
                problems.append(f"{share.name}: timed out")
            except NotInStoreError:
                if share.healthy:
                    missing += 1
                else:
                    problems.append(f"{share.name}: down ({share.last_error})")
            except _CopyFailed as e:
                problems.append(f"{share.name}: {e}")
        if missing == len(self.shares.shares):
            raise TrackNotFound(track_id)
        raise TrackUnavailable(f"track {track_id}: no usable manifest ({'; '.join(problems)})")

    def _verified_manifest(self, share: Share, track_id: str, verify: Callable[[bytes], T]) -> T:
        """Read and verify one copy of a manifest (in a worker thread)."""
        try:
            data = share.store.read_manifest(track_id)
        except NotInStoreError:
            self._blame_share_if_down(share)
            raise
        except BadCopyError as e:
            log.error("manifest refused", track=track_id, share=share.name, error=str(e))
            raise _CopyFailed(str(e)) from None
        except StoreError as e:
            share.failed(str(e))
            raise _CopyFailed(str(e)) from None
        try:
            return verify(data)
        except SealError as e:
            log.error("manifest refused", track=track_id, share=share.name, error=str(e))
            raise _CopyFailed(str(e)) from None

    async def chunk(self, track: OpenedTrack, index: int, *, kept: bool) -> Chunk:
        """Plaintext of chunk `index`, verified, which the caller must release: each copy in
        turn; raises TrackUnavailable when none can be used. `kept`: the chunk will be cached
        (so shared and sent by reference): a write-once Page, else a pooled buffer."""
        track_id = track.manifest.track_id
        tried = []
        for attempt, share in enumerate(
            self.shares.holders(track_id, index, track.manifest.extra.get("placement"))
        ):
            if attempt:
                self._metrics.failovers.inc()
            try:
                page = self._cached_copy(share, track, index, kept)
                if page is None:
                    page = await in_thread(self._read_copy, share, track, index, kept,
                                           limiter=share.limiter, timeout_s=self._timeout)
            except trio.TooSlowError:
                await self._timed_out(share, f"read timed out after {self._timeout:g} s")
                self._metrics.child(self._metrics.store_reads, share.name, "timeout").inc()
                tried.append(f"{share.name} (timed out)")
                continue
            except _CopyFailed as e:
                tried.append(f"{share.name} ({e})")
                continue
            self._metrics.child(self._metrics.store_reads, share.name, "ok").inc()
            return page
        log.error("no readable copy of a chunk", track=track_id, chunk=index, tried=tried)
        raise TrackUnavailable(f"chunk {index} of track {track_id}: no readable copy")

    @staticmethod
    def _blame_share_if_down(share: Share) -> None:
        """A copy is missing (in the worker thread): ask the share itself. When its probe
        fails (an unmounted CIFS share leaves an empty folder, in which every file is missing)
        the share is marked down and the copy counts as unreadable, not as missing: a track is
        "not found" only if shares that answer lack it."""
        try:
            share.store.probe()
        except StoreError as e:
            share.failed(str(e))
            raise _CopyFailed(f"share down: {e}") from None

    async def _timed_out(self, share: Share, reason: str) -> None:
        """Mark a share that missed the deadline down and drop its stuck connections (the next
        read or probe connects afresh; for SMB, closing them frees the abandoned threads)."""
        share.failed(reason)
        # Not under the share's limiter: its threads may all be stuck, which is what this
        # unsticks.
        with trio.move_on_after(self._timeout):
            await trio.to_thread.run_sync(share.store.reset, abandon_on_cancel=True)

    def _pool(self, size: int) -> BufferPool:
        pool = self._pools.get(size)
        if pool is None:
            pool = self._pools.setdefault(size, BufferPool(size, self._keep_buffers))
        return pool

    def _buffers(self, chunk_size: int) -> tuple[bytearray, bytearray]:
        """This worker thread's buffers for a sealed chunk (one byte longer than any valid one)
        and its plaintext, before the plaintext is verified and goes into its Page."""
        bufs: tuple[bytearray, bytearray] | None = getattr(self._thread, "bufs", None)
        if bufs is None or len(bufs[1]) != chunk_size:
            bufs = self._thread.bufs = (bytearray(chunk_size + TAG_BYTES + 1),
                                        bytearray(chunk_size))
        return bufs

    def _cached_copy(self, share: Share, track: OpenedTrack, index: int,
                     kept: bool) -> Chunk | None:
        """The copy read, verified and decrypted on the event loop, when its share can read it
        without I/O or a wait (a local file in the page cache: segue.storage.cached_read);
        None when it cannot (or the share is marked down), and the copy is read in a thread."""
        if not share.healthy:
            return None
        sealed, _ = self._buffers(track.manifest.chunk_size)
        length = share.store.read_chunk_cached(track.manifest.track_id, index, sealed)
        if length is None:
            return None
        self._metrics.child(self._metrics.store_reads_in_loop, share.name).inc()
        return self._opened(share, track, index, memoryview(sealed)[:length], kept)

    def _read_copy(self, share: Share, track: OpenedTrack, index: int, kept: bool) -> Chunk:
        """Read, verify, decrypt one copy of a chunk and, if `kept`, write it into a Page (in a
        worker thread: the whole of a chunk's blocking work is one hop)."""
        track_id = track.manifest.track_id
        sealed, _ = self._buffers(track.manifest.chunk_size)
        try:
            length = share.store.read_chunk_into(track_id, index, sealed)
        except NotInStoreError:
            self._blame_share_if_down(share)
            self._metrics.child(self._metrics.store_reads, share.name, "missing").inc()
            log.warning("chunk copy missing", track=track_id, chunk=index, share=share.name)
            raise _CopyFailed("missing") from None
        except BadCopyError as e:
            self._metrics.child(self._metrics.store_reads, share.name, "corrupt").inc()
            log.error("chunk copy refused", track=track_id, chunk=index, share=share.name,
                      error=str(e))
            raise _CopyFailed("bad copy") from None
        except StoreError as e:
            share.failed(str(e))
            self._metrics.child(self._metrics.store_reads, share.name, "error").inc()
            log.warning("share read failed", track=track_id, chunk=index, share=share.name,
                        error=str(e))
            raise _CopyFailed("unreadable") from None
        return self._opened(share, track, index, memoryview(sealed)[:length], kept)

    def _opened(self, share: Share, track: OpenedTrack, index: int, sealed: memoryview,
                kept: bool) -> Chunk:
        """The plaintext of a sealed copy, verified: in a write-once Page if `kept`, else in a
        pooled buffer; _CopyFailed if it does not authenticate."""
        track_id = track.manifest.track_id
        chunk_size = track.manifest.chunk_size
        pool = None if kept else self._pool(chunk_size)
        plain = self._buffers(chunk_size)[1] if pool is None else pool.take()
        try:
            if len(sealed) != track.plaintext_length(index) + TAG_BYTES:
                raise ChunkAuthenticationError(track_id, index)
            size = track.cipher.open_into(index, sealed, plain)
        except ChunkAuthenticationError:
            if pool is not None:
                pool.give_back(plain)
            self._metrics.chunk_auth_failures.inc()
            self._metrics.child(self._metrics.store_reads, share.name, "corrupt").inc()
            log.error("chunk failed verification", track=track_id, chunk=index,
                      share=share.name)
            raise _CopyFailed("failed verification") from None
        finally:
            sealed.release()
        if pool is not None:
            return Lease(plain, size, pool)
        with memoryview(plain) as verified:
            return write_once(verified[:size])
