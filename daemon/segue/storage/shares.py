"""Several shares as one store: placement of chunks, health of each share, failover order.

A share that fails a read is marked unhealthy and is then probed with exponential backoff
until it answers again. Readers try a chunk's healthy copies first, in placement order, and the
unhealthy ones last, so a share that is down costs nothing while a healthy copy exists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from segue.config import ConfigError, Settings, ShareSettings
from segue.health import Health
from segue.seal.errors import KeyFileError
from segue.seal.keys import read_secret
from segue.storage.local import LocalStore
from segue.storage.placement import placement
from segue.storage.smb import SmbStore, SmbUrl
from segue.storage.store import ChunkStore

PROBE_BACKOFF_START_S = 0.5
PROBE_BACKOFF_MAX_S = 30.0


@dataclass
class Share:
    """One named share and what the node knows of its health."""

    name: str
    store: ChunkStore
    # Reads of this share run under its own limiter: threads stuck on a hung share (they can
    # only be abandoned, not stopped) use up this share's capacity and no other's.
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(8))
    healthy: bool = True
    last_error: str = ""
    next_probe: float = 0.0
    backoff: float = PROBE_BACKOFF_START_S
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, error: str) -> None:
        """Record a failed read or probe (from any thread) and schedule the next probe."""
        with self._lock:
            if self.healthy:
                self.backoff = PROBE_BACKOFF_START_S
            else:
                self.backoff = min(self.backoff * 2, PROBE_BACKOFF_MAX_S)
            self.healthy = False
            self.last_error = error
            self.next_probe = time.monotonic() + self.backoff

    def answered(self) -> None:
        with self._lock:
            self.healthy = True
            self.last_error = ""
            self.backoff = PROBE_BACKOFF_START_S

    def due_for_probe(self, now: float) -> bool:
        return not self.healthy and now >= self.next_probe


class ShareSet:
    """The shares of a node and the replica count of new chunks."""

    def __init__(self, shares: Sequence[Share], replicas: int) -> None:
        if not shares:
            raise ValueError("a node needs at least one share")
        self.shares = list(shares)
        self.replicas = max(1, min(replicas, len(self.shares)))
        self._by_name = {s.name: s for s in self.shares}

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.shares]

    def get(self, name: str) -> Share | None:
        return self._by_name.get(name)

    def placement_doc(self) -> dict:
        """What a manifest records so that any reader finds the copies of each chunk."""
        return {"shares": self.names, "replicas": self.replicas}

    def holders(self, track_id: str, index: int, placement_doc: dict | None) -> list[Share]:
        """The shares that should hold a chunk, healthy ones first, each group in rank order."""
        names = self.names
        if placement_doc:
            try:
                names = [n for n in placement(placement_doc["shares"],
                                              int(placement_doc["replicas"]), track_id, index)
                         if n in self._by_name] or self.names
            except (KeyError, TypeError, ValueError):
                names = self.names
        ordered = [self._by_name[n] for n in names]
        return [s for s in ordered if s.healthy] + [s for s in ordered if not s.healthy]

    def in_health_order(self) -> list[Share]:
        return [s for s in self.shares if s.healthy] + [s for s in self.shares if not s.healthy]

    def health(self) -> Health:
        """degraded while any share is down; failing when none can be read."""
        down = [s for s in self.shares if not s.healthy]
        if not down:
            return Health.ok()
        reasons = "; ".join(f"share {s.name} down: {s.last_error}" for s in down)
        if len(down) == len(self.shares):
            return Health("failing", f"no share can be read: {reasons}")
        return Health("degraded", reasons)


def open_shares(settings: Settings) -> ShareSet:
    """The shares named in [store] (or the single [store] path); raises ConfigError."""
    errors: list[str] = []
    shares: list[Share] = []
    configured = settings.store.shares or (
        ShareSettings("local", str(settings.store.path), None, False, True),)
    for share in configured:
        key = "store.path" if not settings.store.shares else f"store.shares {share.name}"
        if share.is_smb:
            try:
                url = SmbUrl.parse(share.url)
                assert share.password_file is not None
                password = read_secret(share.password_file)
            except (ValueError, KeyFileError) as e:
                errors.append(f"{settings.path}: {key}: {e}")
                continue
            shares.append(Share(share.name, SmbStore(url, password, encrypt=share.encrypt,
                                                     require_signing=share.require_signing),
                                trio.CapacityLimiter(settings.limits.worker_threads)))
        else:
            path = Path(share.url)
            if not path.is_dir():
                errors.append(f"{settings.path}: {key}: {path} is not a directory")
                continue
            shares.append(Share(share.name, LocalStore(path),
                                trio.CapacityLimiter(settings.limits.worker_threads)))
    if errors:
        raise ConfigError(errors)
    return ShareSet(shares, settings.store.replicas)
