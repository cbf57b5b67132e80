"""Chunks the kernel holds are read on the event loop; everything else still goes to a thread.

The event loop may read a chunk only when that cannot wait (segue.storage.cached_read). These
tests hold it to that: what it reads is the same as what a thread reads, anything unusual is
left to the thread (which reports it), and a copy that fails verification is never served.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import trio

from conftest import MP3, Node, make_tone
from segue import config, wiring
from segue.metrics import Metrics
from segue.storage import cached_read, layout
from segue.storage.errors import StoreError
from segue.storage.local import LocalStore
from segue.storage.pages import Chunk, Page
from segue.storage.probe import probe_all
from segue.wiring import Serving


class ThreadOnly:
    """Wraps a store so that every chunk read goes to a worker thread."""

    def __init__(self, store: object) -> None:
        self._store = store

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def plaintext(chunk: Chunk) -> bytes:
    try:
        if isinstance(chunk, Page):
            return chunk.read(0, chunk.length)
        with chunk.view(0, chunk.length) as view:
            return bytes(view)
    finally:
        chunk.release()


def read_all(app: Serving, track_id: str) -> list[bytes]:
    async def main() -> list[bytes]:
        opened = await app.library.open(track_id)
        return [plaintext(await app.library.chunk(opened, i))
                for i in range(opened.manifest.chunk_count)]
    return trio.run(main, strict_exception_groups=True)


def in_loop(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(
        "segue_chunk_reads_in_loop_total", {"share": "local"}) or 0


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Node, str]:
    node = Node.init(tmp_path / "edge")
    (track,) = node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=60))
    return node, track


@pytest.mark.parametrize("cache_bytes", [0, None])
def test_chunks_in_the_page_cache_are_read_without_a_thread_and_are_the_same(
        packed: tuple[Node, str], cache_bytes: int | None) -> None:
    node, track = packed
    settings = config.load(node.conf)
    if cache_bytes is not None:
        settings = dataclasses.replace(
            settings, cache=dataclasses.replace(settings.cache, bytes=cache_bytes))
    thread_metrics = Metrics()
    threaded = wiring.build(settings, thread_metrics)
    share = threaded.library.shares.shares[0]
    assert share.name == "local"
    share.store = ThreadOnly(share.store)  # type: ignore[assignment]
    expected = read_all(threaded, track)
    assert in_loop(thread_metrics) == 0

    metrics = Metrics()
    app = wiring.build(settings, metrics)
    trio.run(probe_all, app.library.shares, 5.0)  # as a node does before it is ready
    got = read_all(app, track)
    assert got == expected
    assert len(expected) > 2
    # Every chunk file was just written (and read by the threads): all in the page cache.
    assert in_loop(metrics) == (len(expected) if local_filesystem(node.root) else 0)
    assert metrics.registry.get_sample_value(
        "segue_store_reads_total", {"share": "local", "outcome": "ok"}) == len(expected)


def local_filesystem(path: Path) -> bool:
    fd = os.open(path, os.O_PATH)
    try:
        return cached_read.filesystem_type(fd) in cached_read.LOCAL_FILESYSTEMS
    finally:
        os.close(fd)


def test_what_needs_a_thread_is_left_to_it(packed: tuple[Node, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    node, track = packed
    store = LocalStore(node.root / "store")
    buf = bytearray(1 << 20)
    first = store.root / layout.chunk_path(track, 0)
    size = first.stat().st_size
    assert store.read_chunk_cached(track, 0, buf) is None  # the share not probed yet
    store.read_marker()
    if not local_filesystem(node.root):  # an overlay, say: always a thread
        assert store.read_chunk_cached(track, 0, buf) is None
        return
    assert store.read_chunk_cached(track, 0, buf) == size
    assert store.read_chunk_cached(track, 0, bytearray(size)) is None  # too large for it
    assert store.read_chunk_cached(track, 10_000, buf) is None  # missing
    # Something other than a regular file where a chunk should be: a FIFO would block a
    # read for ever, a folder cannot be read.
    fifo = store.root / layout.chunk_path(track, 1)
    fifo.unlink()
    os.mkfifo(fifo)
    assert store.read_chunk_cached(track, 1, buf) is None
    fifo.unlink()
    fifo.mkdir()
    assert store.read_chunk_cached(track, 1, buf) is None
    # A root on a filesystem not known to be local (NFS, FUSE, CIFS...): never.
    monkeypatch.setattr(cached_read, "LOCAL_FILESYSTEMS", {})
    store.read_marker()
    assert store.read_chunk_cached(track, 0, buf) is None
    monkeypatch.undo()
    store.read_marker()
    assert store.read_chunk_cached(track, 0, buf) == size
    # A probe that fails (the marker gone: an unmounted share's empty folder, say): off until
    # one passes again.
    marker = store.root / layout.MARKER_PATH
    kept = marker.read_bytes()
    marker.unlink()
    with pytest.raises(StoreError):
        store.read_marker()
    assert store.read_chunk_cached(track, 0, buf) is None
    marker.write_bytes(kept)
    store.read_marker()
    assert store.read_chunk_cached(track, 0, buf) == size


def resident_bytes(path: Path) -> int:
    return int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                               str(path)], capture_output=True, text=True, check=True).stdout)


def test_a_chunk_not_in_the_page_cache_is_left_to_a_thread_without_reading_ahead(
        packed: tuple[Node, str]) -> None:
    """preadv2(RWF_NOWAIT) alone would start read-ahead from the event loop on a miss."""
    node, track = packed
    store = LocalStore(node.root / "store")
    store.read_marker()
    if not local_filesystem(node.root):
        assert not store.read_chunk_cached(track, 0, bytearray(1 << 20))
        return
    chunk = store.root / layout.chunk_path(track, 0)
    fd = os.open(chunk, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert resident_bytes(chunk) == 0
    assert store.read_chunk_cached(track, 0, bytearray(1 << 20)) is None
    assert resident_bytes(chunk) == 0  # nothing was read for it, not even ahead


def test_a_tampered_copy_read_in_the_loop_is_refused_and_counted(
        packed: tuple[Node, str]) -> None:
    node, track = packed
    settings = config.load(node.conf)
    metrics = Metrics()
    app = wiring.build(settings, metrics)
    trio.run(probe_all, app.library.shares, 5.0)
    root = app.library.shares.shares[0].store.root
    assert isinstance(root, Path)
    chunk = root / layout.chunk_path(track, 2)
    sealed = bytearray(chunk.read_bytes())
    sealed[100] ^= 1
    chunk.write_bytes(sealed)  # in the page cache as soon as it is written

    async def main() -> None:
        opened = await app.library.open(track)
        plaintext(await app.library.chunk(opened, 1))
        with pytest.raises(Exception, match="no readable copy"):
            await app.library.chunk(opened, 2)

    trio.run(main, strict_exception_groups=True)
    assert in_loop(metrics) == (2 if local_filesystem(node.root) else 0)  # 1, tampered 2
    assert metrics.registry.get_sample_value("segue_chunk_auth_failures_total") == 1
    assert metrics.registry.get_sample_value(
        "segue_store_reads_total", {"share": "local", "outcome": "corrupt"}) == 1


def test_a_share_marked_down_is_read_in_threads(packed: tuple[Node, str]) -> None:
    node, track = packed
    metrics = Metrics()
    app = wiring.build(config.load(node.conf), metrics)
    trio.run(probe_all, app.library.shares, 5.0)
    app.library.shares.shares[0].failed("a test says so")
    assert len(read_all(app, track)) > 2
    assert in_loop(metrics) == 0
