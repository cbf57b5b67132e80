"""Opening tracks: verified manifests and unwrapped keys, kept in a bounded LRU.

Opening a track costs a signature check and an RSA or HPKE unwrap; both happen once per track
and the result is kept until evicted, a reload brings new keys, or no copy of one of its chunks
can be read (it may have been sealed again). Concurrent first plays share one open.

Rollback protection needs the newest manifest version this node ever accepted for a track;
where that is kept (the catalogue) is not storage's business, so it comes as two blocking
callbacks, run in a worker thread under the limiter of whatever they wait on. A version that
cannot be read refuses the track (it cannot be checked); one that cannot be recorded (a full
disk under the catalogue) does not: the manifest was checked against the version on record,
and the next open records it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import structlog
import trio

from segue.metrics import Metrics
from segue.seal.errors import SealError
from segue.seal.keyring import EdgeKeys
from segue.seal.track import OpenedTrack, open_track
from segue.storage.errors import TrackUnavailable
from segue.storage.flight import Flight, single_flight
from segue.storage.replicas import Replicas
from segue.threads import in_thread

log = structlog.get_logger("segue.storage.tracks")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
AcceptedVersion = Callable[[str], int | None]
AcceptVersion = Callable[[str, int], None]


class Tracks:
    """The tracks this node has opened, most recently used last."""

    def __init__(
        self,
        replicas: Replicas,
        keys: EdgeKeys,
        *,
        capacity: int,
        metrics: Metrics,
        accepted_version: AcceptedVersion,
        accept_version: AcceptVersion,
        versions_limiter: trio.CapacityLimiter,
        versions_timeout_s: float,
    ) -> None:
        """`accepted_version(track_id)` and `accept_version(track_id, version)` read and raise
        the newest accepted manifest version; they block, and run under `versions_limiter`
        with `versions_timeout_s`."""
        self._replicas = replicas
        self._keys = keys
        self._capacity = capacity
        self._metrics = metrics
        self._accepted_version = accepted_version
        self._accept_version = accept_version
        self._versions_limiter = versions_limiter
        self._versions_timeout = versions_timeout_s
        self._opened: OrderedDict[str, OpenedTrack] = OrderedDict()
        self._opening: dict[str, Flight] = {}  # track id -> its open in flight
        # Bumped by set_keys: an open that began under older keys and trust is never cached.
        self._generation = 0

    async def open(self, track_id: str) -> OpenedTrack:
        """The verified, unwrapped track; raises TrackNotFound or TrackUnavailable."""
        while (opening := self._opening.get(track_id)) is not None:
            # Another player's request is opening it: share that outcome, good or bad.
            self._metrics.child(self._metrics.open_tracks, "hit").inc()
            opened: OpenedTrack | None = await opening.result()
            if opened is not None:
                return opened  # None: that request went away first; open it here
        found = self._opened.get(track_id)
        if found is not None:
            self._opened.move_to_end(track_id)
            self._metrics.child(self._metrics.open_tracks, "hit").inc()
            return found
        self._metrics.child(self._metrics.open_tracks, "miss").inc()
        generation = self._generation
        opened = await single_flight(self._opening, track_id,
                                     functools.partial(self._open, track_id),
                                     f"track {track_id}: the open was abandoned")
        if generation != self._generation:
            return opened  # the requests that began before the reload finish with it
        self._opened[track_id] = opened
        while len(self._opened) > self._capacity:
            self._opened.popitem(last=False)
        return opened

    async def _open(self, track_id: str) -> OpenedTrack:
        accepted = await self._versions(track_id, self._accepted_version, track_id)
        opened = await self._replicas.manifest(
            track_id, functools.partial(self._verify, track_id, self._keys, accepted))
        if accepted != opened.manifest.version:
            try:
                await self._versions(track_id, self._accept_version, track_id,
                                     opened.manifest.version)
            except TrackUnavailable:
                raise
            except Exception as e:  # the store's failure (a full disk): see the docstring
                log.error("manifest version not recorded; the next open records it",
                          track=track_id, version=opened.manifest.version,
                          error=f"{type(e).__name__}: {e}")
        return opened

    async def _versions(self, track_id: str, call: Callable[[*Ts], T], *args: *Ts) -> T:
        """`call(*args)`, one of the version callbacks, in a thread under their limiter."""
        try:
            return await in_thread(call, *args, limiter=self._versions_limiter,
                                   timeout_s=self._versions_timeout)
        except trio.TooSlowError:
            raise TrackUnavailable(f"track {track_id}: the accepted manifest versions are "
                                   f"not answering") from None

    @staticmethod
    def _verify(track_id: str, keys: EdgeKeys, accepted: int | None,
                data: bytes) -> OpenedTrack:
        """Verify, refuse a rollback, unwrap (in the share's worker thread)."""
        opened = open_track(data, keys.trusted_packagers, keys.private, accepted)
        if opened.manifest.track_id != track_id:
            raise SealError(f"the manifest is for track {opened.manifest.track_id}")
        return opened

    def forget(self, track_id: str) -> None:
        """Open the track afresh next time (its chunks could not be read: re-packed?)."""
        self._opened.pop(track_id, None)

    def set_keys(self, keys: EdgeKeys) -> None:
        """Use new keys and trust (after a reload); tracks are opened again with them.

        Opens in flight were verified under the old trust (a packager key just removed, say):
        their outcome goes to the requests that asked for it and is not cached, and a request
        from now on starts an open of its own instead of joining one of them.
        """
        self._keys = keys
        self._generation += 1
        self._opening = {}
        self._opened.clear()
