"""The decrypted-chunk cache: verified plaintext chunks kept in memfd Pages, bounded in bytes.

A popular track's chunks are read and decrypted once and then served from memory to every
player, with no worker-thread hop. Entries are keyed by track, content version and chunk index,
so a re-encrypted track never meets its old plaintext. Read-ahead fills the same cache, which
is what bounds it: it can never hold more than the cache's byte budget.
"""

from __future__ import annotations

from collections import OrderedDict

from segue.metrics import Metrics
from segue.storage.pages import Page

Key = tuple[str, int, int]  # track id, content version, chunk index


class ChunkCache:
    """An LRU of Pages; `capacity` bytes, 0 to keep nothing.

    The bytes counted are the memory the entries pin (Page.held: whole pages), not their
    plaintext, so that many short last chunks cannot hold more than the budget.

    Evicting closes the entry's reference to its memfd and nothing else: a stream still
    sending the chunk keeps it whole, and its pages are never written again (pages.py).
    """

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.size = 0
        self._entries: OrderedDict[Key, Page] = OrderedDict()
        self._metrics = metrics
        # Looked up once: get() runs for every chunk of every stream.
        self._hits = metrics.cache_lookups.labels("hit")
        self._misses = metrics.cache_lookups.labels("miss")

    def get(self, key: Key) -> Page | None:
        """A new reference to the cached chunk, or None."""
        page = self._entries.get(key)
        if page is None:
            self._misses.inc()
            return None
        self._entries.move_to_end(key)
        self._hits.inc()
        return page.share()

    def contains(self, key: Key) -> bool:
        return key in self._entries

    def put(self, key: Key, page: Page) -> None:
        """Keep a reference to `page` (the caller keeps its own), evicting the oldest."""
        if page.held > self.capacity or key in self._entries:
            return
        self._entries[key] = page.share()
        self.size += page.held
        while self.size > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.size -= old.held
            old.release()
            self._metrics.cache_evictions.inc()
        self._metrics.cache_bytes.set(self.size)

    def clear(self) -> None:
        for page in self._entries.values():
            page.release()
        self._entries.clear()
        self.size = 0
        self._metrics.cache_bytes.set(0)
