"""The tracks this node can open: verified manifests and unwrapped keys (cached), and chunks
read from a healthy copy, verified and decrypted in worker threads.

Opening a track costs a signature check and an RSA or HPKE unwrap; both happen once per track
and the result is kept in a bounded LRU. Reading a chunk is one worker-thread hop per copy
tried: the thread reads the file and verifies and decrypts it, so no unverified byte reaches the
event loop. A copy that cannot be read (share down, file missing, too slow) or fails
verification is skipped for the next copy; the player never notices while one good copy exists.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from segue.buffers import BufferPool, Lease
from segue.catalogue import Catalogue
from segue.chunk_cache import ChunkCache, Key
from segue.metrics import Metrics
from segue.seal.chunks import TAG_BYTES
from segue.seal.errors import ChunkAuthenticationError, SealError
from segue.seal.keyring import EdgeKeys
from segue.seal.track import OpenedTrack, open_track
from segue.storage.errors import NotInStoreError, StoreError
from segue.storage.shares import Share, ShareSet

log = structlog.get_logger("segue.library")


class TrackUnavailable(Exception):
    """The track exists but cannot be served now (no valid manifest, chunk or key)."""


class TrackNotFound(Exception):
    """No such track on this node."""


class _CopyFailed(Exception):
    """One copy of a chunk could not be used; the next copy may be."""


class _Flight:
    """A read in flight (a track's open, a chunk's read) whose outcome others wait for.

    Those who asked meanwhile share its failure rather than each trying again in turn.
    """

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: Exception | None = None

    def succeed(self, value: Any = None) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._done.set()

    async def result(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            # A fresh exception each: one instance raised in many tasks would pile up their
            # tracebacks.
            raise type(self._error)(*self._error.args)
        return self._value

    async def run(self, read: Callable[[], Awaitable[Any]], abandoned: str) -> Any:
        """Run `read` as this flight: its outcome is the waiters' too."""
        try:
            value = await read()
        except (TrackNotFound, TrackUnavailable) as e:
            self.fail(e)
            raise
        except BaseException:
            self.fail(TrackUnavailable(abandoned))
            raise
        self.succeed(value)
        return value


class Library:
    """Opens tracks and reads their plaintext chunks for the HTTP layer."""

    def __init__(
        self,
        shares: ShareSet,
        catalogue: Catalogue,
        keys: EdgeKeys,
        limiter: trio.CapacityLimiter,
        *,
        open_tracks: int,
        metrics: Metrics,
        read_timeout_s: float,
        cache_bytes: int = 0,
        read_ahead_chunks: int = 0,
    ) -> None:
        self.shares = shares
        self._catalogue = catalogue
        self._keys = keys
        self._limiter = limiter
        self._capacity = open_tracks
        self._opened: OrderedDict[str, OpenedTrack] = OrderedDict()
        self._metrics = metrics
        self._read_timeout = read_timeout_s
        self._pools: dict[int, BufferPool] = {}
        self._keep_buffers = 4 * int(limiter.total_tokens)
        self._thread = threading.local()
        self.cache = ChunkCache(cache_bytes, metrics)
        self._loading: dict[Key, _Flight] = {}  # chunk -> its read in flight
        self._opening: dict[str, _Flight] = {}  # track id -> its open in flight
        self.read_ahead_chunks = read_ahead_chunks if cache_bytes else 0
        # Read-ahead may use half the worker threads at most, so that it never starves the
        # reads players are waiting for.
        self._prefetch_limiter = trio.CapacityLimiter(max(1, int(limiter.total_tokens) // 2))
        self._prefetch_nursery: trio.Nursery | None = None

    async def open(self, track_id: str) -> OpenedTrack:
        """The verified, unwrapped track; raises TrackNotFound or TrackUnavailable.

        Players that ask for a track while it is being opened wait for that open instead of
        verifying and unwrapping it again (a new release brings many first plays at once).
        """
        opening = self._opening.get(track_id)
        if opening is not None:
            # Another player's request is opening it: share that outcome, good or bad.
            self._metrics.child(self._metrics.open_tracks, "hit").inc()
            return await opening.result()
        opened = self._opened.get(track_id)
        if opened is not None:
            self._opened.move_to_end(track_id)
            self._metrics.child(self._metrics.open_tracks, "hit").inc()
            return opened
        self._metrics.child(self._metrics.open_tracks, "miss").inc()
        self._opening[track_id] = _Flight()
        try:
            opened = await self._opening[track_id].run(
                functools.partial(self._open_in_thread, track_id),
                f"track {track_id}: the open was abandoned")
        finally:
            del self._opening[track_id]
        self._opened[track_id] = opened
        while len(self._opened) > self._capacity:
            self._opened.popitem(last=False)
        return opened

    async def _open_in_thread(self, track_id: str) -> OpenedTrack:
        try:
            with trio.fail_after(self._read_timeout * len(self.shares.shares)):
                return await trio.to_thread.run_sync(
                    self._open_blocking, track_id, limiter=self._limiter, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise TrackUnavailable(f"track {track_id}: manifest reads timed out") from None

    def _open_blocking(self, track_id: str) -> OpenedTrack:
        """The first copy of the manifest, in share-health order, that verifies."""
        accepted = self._catalogue.accepted_version(track_id)
        missing = 0
        problems = []
        for share in self.shares.in_health_order():
            try:
                data = share.store.read_manifest(track_id)
            except NotInStoreError:
                missing += 1
                continue
            except StoreError as e:
                share.failed(str(e))
                problems.append(f"{share.name}: {e}")
                continue
            try:
                opened = open_track(data, self._keys.trusted_packagers, self._keys.private,
                                    accepted)
                if opened.manifest.track_id != track_id:
                    raise SealError(f"the manifest is for track {opened.manifest.track_id}")
            except SealError as e:
                log.error("manifest refused", track=track_id, share=share.name, error=str(e))
                problems.append(f"{share.name}: {e}")
                continue
            if accepted != opened.manifest.version:
                self._catalogue.accept_version(track_id, opened.manifest.version)
            return opened
        if missing == len(self.shares.shares):
            raise TrackNotFound(track_id)
        raise TrackUnavailable(f"track {track_id}: no usable manifest ({'; '.join(problems)})")

    def start_read_ahead(self, nursery: trio.Nursery) -> None:
        """Run read-ahead tasks in `nursery` (the node's service nursery)."""
        self._prefetch_nursery = nursery

    def read_ahead(self, track: OpenedTrack, after: int, last: int) -> None:
        """Warm the cache with the chunks after `after` (up to read_ahead_chunks, not past
        `last`), as far as read-ahead capacity allows; never waits."""
        if self._prefetch_nursery is None:
            return
        manifest = track.manifest
        for index in range(after + 1, min(after + self.read_ahead_chunks, last) + 1):
            key = (manifest.track_id, manifest.content_version, index)
            if key in self._loading or self.cache.contains(key):
                continue
            token = object()
            try:
                self._prefetch_limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                self._metrics.child(self._metrics.read_ahead, "skipped").inc()
                return
            self._metrics.child(self._metrics.read_ahead, "started").inc()
            self._prefetch_nursery.start_soon(self._prefetch, track, index, token)

    async def _prefetch(self, track: OpenedTrack, index: int, token: object) -> None:
        try:
            (await self.chunk(track, index)).release()
        except TrackUnavailable:
            pass  # the stream that needs this chunk reports it, if it still does
        except Exception:  # a read-ahead is an optimisation: it must never stop the node
            log.exception("read-ahead failed", track=track.manifest.track_id, chunk=index)
        finally:
            self._prefetch_limiter.release_on_behalf_of(token)

    async def chunk(self, track: OpenedTrack, index: int) -> Lease:
        """Plaintext of chunk `index`, verified, in a pooled buffer the caller must release.

        From the cache when it is there; otherwise read once (a second request for a chunk
        being read waits for that read) and cached. Raises TrackUnavailable when no copy can
        be used.
        """
        if self.cache.capacity == 0:
            return await self._read_any_copy(track, index)
        key = (track.manifest.track_id, track.manifest.content_version, index)
        while (lease := self.cache.get(key)) is None:
            loading = self._loading.get(key)
            if loading is None:
                break
            await loading.result()  # then take it from the cache (or read it, if evicted)
        else:
            return lease
        self._loading[key] = _Flight()
        try:
            lease = await self._loading[key].run(
                functools.partial(self._read_any_copy, track, index),
                f"chunk {index} of track {key[0]}: the read was abandoned")
        finally:
            del self._loading[key]
        self.cache.put(key, lease)
        return lease

    async def _read_any_copy(self, track: OpenedTrack, index: int) -> Lease:
        """Try each copy of the chunk in turn; raises TrackUnavailable when none can be used."""
        track_id = track.manifest.track_id
        tried = []
        for attempt, share in enumerate(
            self.shares.holders(track_id, index, track.manifest.extra.get("placement"))
        ):
            if attempt:
                self._metrics.failovers.inc()
            try:
                with trio.fail_after(self._read_timeout):
                    lease = await trio.to_thread.run_sync(
                        self._read_copy, share, track, index,
                        limiter=share.limiter, abandon_on_cancel=True,
                    )
            except trio.TooSlowError:
                share.failed(f"read timed out after {self._read_timeout:g} s")
                # The stuck connection is dropped; the next read or probe connects afresh.
                await trio.to_thread.run_sync(share.store.reset, abandon_on_cancel=True)
                self._metrics.child(self._metrics.store_reads, share.name, "timeout").inc()
                tried.append(f"{share.name} (timed out)")
                continue
            except _CopyFailed as e:
                tried.append(f"{share.name} ({e})")
                continue
            self._metrics.child(self._metrics.store_reads, share.name, "ok").inc()
            return lease
        log.error("no readable copy of a chunk", track=track_id, chunk=index, tried=tried)
        # The track may have been sealed again (re-packed) since it was opened: the next
        # request opens its manifest afresh instead of failing until eviction.
        self._opened.pop(track_id, None)
        raise TrackUnavailable(f"chunk {index} of track {track_id}: no readable copy")

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

    def _read_copy(self, share: Share, track: OpenedTrack, index: int) -> Lease:
        """Read, verify and decrypt one copy of a chunk (in a worker thread)."""
        track_id = track.manifest.track_id
        chunk_size = track.manifest.chunk_size
        sealed = self._read_buffer(chunk_size + TAG_BYTES + 1)
        try:
            length = share.store.read_chunk_into(track_id, index, sealed)
        except NotInStoreError:
            self._metrics.child(self._metrics.store_reads, share.name, "missing").inc()
            log.warning("chunk copy missing", track=track_id, chunk=index, share=share.name)
            raise _CopyFailed("missing") from None
        except StoreError as e:
            share.failed(str(e))
            self._metrics.child(self._metrics.store_reads, share.name, "error").inc()
            log.warning("share read failed", track=track_id, chunk=index, share=share.name,
                        error=str(e))
            raise _CopyFailed("unreadable") from None
        pool = self._pool(chunk_size)
        plain = pool.take()
        try:
            if length != track.plaintext_length(index) + TAG_BYTES:
                raise ChunkAuthenticationError(track_id, index)
            size = track.cipher.open_into(index, memoryview(sealed)[:length], plain)
        except ChunkAuthenticationError:
            pool.give_back(plain)
            self._metrics.chunk_auth_failures.inc()
            self._metrics.child(self._metrics.store_reads, share.name, "corrupt").inc()
            log.error("chunk failed verification", track=track_id, chunk=index,
                      share=share.name)
            raise _CopyFailed("failed verification") from None
        return Lease(plain, size, pool)

    def set_keys(self, keys: EdgeKeys) -> None:
        """Use new keys and trust (after a reload); tracks are opened again with them."""
        self._keys = keys
        self._opened.clear()
        self.cache.clear()
