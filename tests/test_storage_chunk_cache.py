"""The decrypted-chunk cache and the reference-counted buffers it holds."""

from __future__ import annotations

from segue.metrics import Metrics
from segue.storage.buffers import BufferPool, Lease
from segue.storage.chunk_cache import ChunkCache


def lease(pool: BufferPool, fill: int, length: int = 100) -> Lease:
    buf = pool.take()
    buf[:length] = bytes([fill]) * length
    return Lease(buf, length, pool)


def test_a_buffer_goes_back_to_the_pool_with_its_last_reference() -> None:
    pool = BufferPool(100, keep=4)
    a = lease(pool, 1)
    b = a.share()
    a.release()
    assert bytes(b.view(0, 100)) == b"\x01" * 100  # still held
    b.release()
    reused = pool.take()
    assert reused[:1] == b"\x01"  # the same buffer came back


def test_the_cache_is_bounded_in_bytes_and_evicts_the_oldest() -> None:
    metrics = Metrics()
    pool = BufferPool(100, keep=8)
    cache = ChunkCache(250, metrics)
    leases = [lease(pool, i) for i in range(3)]
    for i, item in enumerate(leases):
        cache.put(("t", 1, i), item)
        item.release()  # the cache keeps its own reference
    assert cache.size == 200
    assert cache.get(("t", 1, 0)) is None  # evicted first
    hit = cache.get(("t", 1, 2))
    assert hit is not None and bytes(hit.view(0, 100)) == b"\x02" * 100
    cache.clear()
    assert bytes(hit.view(0, 1)) == b"\x02"  # a reader's reference outlives eviction
    hit.release()
    samples = {s.name + str(s.labels): s.value
               for m in metrics.registry.collect() for s in m.samples}
    assert samples["segue_chunk_cache_evictions_total{}"] == 1
    assert samples["segue_chunk_cache_lookups_total{'outcome': 'hit'}"] == 1


def test_a_zero_byte_cache_keeps_nothing() -> None:
    pool = BufferPool(100, keep=2)
    cache = ChunkCache(0, Metrics())
    item = lease(pool, 7)
    cache.put(("t", 1, 0), item)
    assert cache.get(("t", 1, 0)) is None
    item.release()
