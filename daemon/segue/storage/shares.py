"""Several shares as one store: each share's store, limiter and health; failover order.

A share that fails a read is marked down; `segue.storage.probe` then probes it with
exponential backoff until it answers again. Readers try a chunk's healthy copies first, in
placement order, and the ones marked down last, so a share that is down costs nothing while a
healthy copy exists.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from segue.health import Health
from segue.storage.placement import placement
from segue.storage.store import ChunkStore


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, error: str) -> None:
        """Mark the share down after a failed read or probe (from any thread)."""
        with self._lock:
            self.healthy = False
            self.last_error = error

    def answered(self) -> None:
        with self._lock:
            self.healthy = True
            self.last_error = ""


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
        """degraded while any share is down; failing when none can be read. The reason names
        the shares; their errors (paths, smb:// URLs) are the detail."""
        down = [s for s in self.shares if not s.healthy]
        if not down:
            return Health.ok()
        detail = "; ".join(f"share {s.name} down: {s.last_error}" for s in down)
        if len(down) == len(self.shares):
            return Health("failing", "no share can be read", f"no share can be read: {detail}")
        return Health("degraded", "; ".join(f"share {s.name} down" for s in down), detail)

