"""The decrypted-chunk cache, the write-once pages it holds, and the reused buffers of chunks
that are sent once."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

import pytest

from segue.metrics import Metrics
from segue.storage.buffers import BufferPool, Lease
from segue.storage.chunk_cache import ChunkCache
from segue.storage.pages import Page, write_once

PAGE = mmap.PAGESIZE


def page(fill: int, length: int = 100) -> Page:
    return write_once(memoryview(bytes([fill]) * length))


def contents(item: Page) -> bytes:
    return os.pread(item.fd, item.length, 0)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def test_a_buffer_goes_back_to_the_pool_with_its_last_reference() -> None:
    pool = BufferPool(100, keep=4)
    buf = pool.take()
    buf[:] = b"\x01" * 100
    a = Lease(buf, 100, pool)
    b = a.share()
    a.release()
    assert bytes(b.view(0, 100)) == b"\x01" * 100  # still held
    b.release()
    assert pool.take() is buf  # the same buffer came back


def test_a_page_closes_its_memfd_with_its_last_reference() -> None:
    a = page(1)
    b = a.share()
    a.release()
    assert contents(b) == b"\x01" * 100  # still held
    b.release()
    assert not is_open(a.fd)
    b.release()  # one release too many is harmless
    with pytest.raises(ValueError):
        a.share()


def test_a_verified_page_can_never_be_written_again() -> None:
    item = page(3, 5000)
    assert item.held == 2 * PAGE  # what it pins: whole pages, not a whole chunk
    with pytest.raises(PermissionError):
        os.pwrite(item.fd, b"other track", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(item.fd, 0)
    with pytest.raises(PermissionError):
        mmap.mmap(item.fd, item.length, flags=mmap.MAP_SHARED, prot=mmap.PROT_WRITE)
    with pytest.raises(PermissionError):
        fcntl.fcntl(item.fd, fcntl.F_ADD_SEALS, 0)  # and the seals stay
    assert contents(item) == b"\x03" * 5000
    item.release()


def test_the_cache_is_bounded_in_bytes_and_evicts_the_oldest() -> None:
    metrics = Metrics()
    cache = ChunkCache(2 * PAGE + PAGE // 2, metrics)
    pages = [page(i) for i in range(3)]
    for i, item in enumerate(pages):
        cache.put(("t", 1, i), item)
        item.release()  # the cache keeps its own reference
    assert cache.size == 2 * PAGE  # a 100-byte chunk pins one page
    assert cache.get(("t", 1, 0)) is None  # evicted first
    assert not is_open(pages[0].fd)  # and its memfd closed with its last reference
    hit = cache.get(("t", 1, 2))
    assert hit is not None and contents(hit) == b"\x02" * 100
    cache.clear()
    assert contents(hit)[:1] == b"\x02"  # a reader's reference outlives eviction
    hit.release()
    samples = {s.name + str(s.labels): s.value
               for m in metrics.registry.collect() for s in m.samples}
    assert samples["segue_chunk_cache_evictions_total{}"] == 1
    assert samples["segue_chunk_cache_lookups_total{'outcome': 'hit'}"] == 1


def test_a_zero_byte_cache_keeps_nothing() -> None:
    cache = ChunkCache(0, Metrics())
    item = page(7)
    cache.put(("t", 1, 0), item)
    assert cache.get(("t", 1, 0)) is None
    item.release()
