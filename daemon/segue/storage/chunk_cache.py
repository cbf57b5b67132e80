"""The decrypted-chunk cache: verified plaintext chunks kept in memory, bounded in bytes.

A popular track's chunks are read and decrypted once and then served from memory to every
player, with no worker-thread hop. Entries are keyed by track, content version and chunk index,
so a re-encrypted track never meets its old plaintext. Read-ahead fills the same cache, which
is what bounds it: it can never hold more than the cache's byte budget.
"""

from __future__ import annotations

from collections import OrderedDict

from segue.metrics import Metrics
from segue.storage.buffers import Lease

Key = tuple[str, int, int]  # track id, content version, chunk index


class ChunkCache:
    """An LRU of Leases; `capacity` bytes, 0 to keep nothing.

    The bytes counted are the buffers the entries hold (Lease.held), not their plaintext: each
    entry pins a whole pooled chunk buffer, so counting a 1 KiB last chunk as 1 KiB let the
    cache hold hundreds of times its budget.
    """

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.size = 0
        self._entries: OrderedDict[Key, Lease] = OrderedDict()
        self._metrics = metrics

    def get(self, key: Key) -> Lease | None:
        """A new reference to the cached chunk, or None."""
        lease = self._entries.get(key)
        if lease is None:
            self._metrics.child(self._metrics.cache_lookups, "miss").inc()
            return None
        self._entries.move_to_end(key)
        self._metrics.child(self._metrics.cache_lookups, "hit").inc()
        return lease.share()

    def contains(self, key: Key) -> bool:
        return key in self._entries

    def put(self, key: Key, lease: Lease) -> None:
        """Keep a reference to `lease` (the caller keeps its own), evicting the oldest."""
        if lease.held > self.capacity or key in self._entries:
            return
        self._entries[key] = lease.share()
        self.size += lease.held
        while self.size > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.size -= old.held
            old.release()
            self._metrics.cache_evictions.inc()
        self._metrics.cache_bytes.set(self.size)

    def clear(self) -> None:
        for lease in self._entries.values():
            lease.release()
        self._entries.clear()
        self.size = 0
        self._metrics.cache_bytes.set(0)
