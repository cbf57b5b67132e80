"""The library: concurrent first plays share one open (and its failure), concurrent reads of a
chunk one read, and a stream's next chunks are read while it sends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import trio

from conftest import MP3, Node, make_tone
from segue import config, wiring
from segue.storage.errors import NotInStoreError


class SlowMissingManifests:
    """Wraps a node's store: every manifest read takes 0.3 s and finds nothing."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.reads = 0
        self._lock = threading.Lock()

    def read_manifest(self, track_id: str) -> bytes:
        with self._lock:
            self.reads += 1
        time.sleep(0.3)
        raise NotInStoreError(f"no manifest for {track_id}")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_concurrent_opens_of_a_missing_track_fail_together(tmp_path: Path) -> None:
    players = 6
    node = Node.init(tmp_path / "edge")
    app = wiring.build(config.load(node.conf))
    share = app.library.shares.shares[0]
    slow = SlowMissingManifests(share.store)
    share.store = slow  # type: ignore[assignment]
    outcomes: list[tuple[str, float]] = []

    async def play(started: float) -> None:
        try:
            await app.library.open("0123456789abcdef")
        except Exception as e:
            outcomes.append((type(e).__name__, trio.current_time() - started))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(players):
                nursery.start_soon(play, trio.current_time())

    trio.run(main, strict_exception_groups=True)
    assert slow.reads == 1  # one open for every player, not one each
    assert [name for name, _ in outcomes] == ["TrackNotFound"] * players
    assert max(seconds for _, seconds in outcomes) < 1.0  # nobody waited for a second try


class SlowMissingChunks:
    """Wraps a node's store: every chunk read takes 0.3 s and finds nothing."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.reads = 0
        self._lock = threading.Lock()

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int:
        with self._lock:
            self.reads += 1
        time.sleep(0.3)
        raise NotInStoreError(f"no chunk {index} of {track_id}")

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> None:
        return None  # a share that makes its readers wait is never read on the event loop

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_concurrent_reads_of_a_lost_chunk_fail_together(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "edge")
    (track,) = node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=3))
    app = wiring.build(config.load(node.conf))
    share = app.library.shares.shares[0]
    outcomes: list[str] = []

    async def play(opened: object) -> None:
        try:
            await app.library.chunk(opened, 0)  # type: ignore[arg-type]
        except Exception as e:
            outcomes.append(type(e).__name__)

    async def main() -> None:
        opened = await app.library.open(track)
        share.store = slow  # type: ignore[assignment]
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(play, opened)

    slow = SlowMissingChunks(share.store)
    started = time.monotonic()
    trio.run(main, strict_exception_groups=True)
    assert outcomes == ["TrackUnavailable"] * 6
    assert slow.reads == 1
    assert time.monotonic() - started < 3


class SlowChunks:
    """Wraps a node's store: every chunk read takes 0.2 s more (in its worker thread)."""

    def __init__(self, store: object) -> None:
        self._store = store

    def read_chunk_into(self, track_id: str, index: int, buf: bytearray) -> int:
        time.sleep(0.2)
        return self._store.read_chunk_into(track_id, index, buf)  # type: ignore[attr-defined]

    def read_chunk_cached(self, track_id: str, index: int, buf: bytearray) -> None:
        return None

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_read_whose_request_went_away_is_read_again_for_those_waiting(tmp_path: Path) -> None:
    """A browser aborts a range and asks for it again at once: the second request waited on the
    first one's read of the chunk, and must get the chunk, not the first one's cancellation."""
    node = Node.init(tmp_path / "edge")
    source = make_tone(tmp_path / "t.mp3", MP3, seconds=3)
    (track,) = node.pack(source)
    app = wiring.build(config.load(node.conf))
    share = app.library.shares.shares[0]
    got: list[bytes] = []

    async def main() -> None:
        opened = await app.library.open(track)
        share.store = SlowChunks(share.store)  # type: ignore[assignment]
        async with trio.open_nursery() as nursery:
            aborted = trio.CancelScope()

            async def first() -> None:
                with aborted:
                    await app.library.chunk(opened, 0)

            async def again() -> None:
                page = await app.library.chunk(opened, 0)
                got.append(page.read(0, page.length))
                page.release()

            nursery.start_soon(first)
            await trio.sleep(0.05)  # its read is under way
            nursery.start_soon(again)
            await trio.sleep(0.05)  # waiting on that read
            aborted.cancel()

    trio.run(main, strict_exception_groups=True)
    assert len(got) == 1 and got[0] and source.read_bytes().startswith(got[0])


def test_a_cold_stream_reads_its_next_chunks_while_it_sends(tmp_path: Path) -> None:
    node = Node.init(tmp_path / "edge")
    (track,) = node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=100))  # 7 chunks
    with node.conf.open("a") as f:
        f.write("\n[cache]\nbytes = 0\nread_ahead_chunks = 2\n")
    app = wiring.build(config.load(node.conf))
    share = app.library.shares.shares[0]
    budget = app.library._read_ahead.free
    original = node.tracks[track].read_bytes()

    async def stream(stop_after: int) -> tuple[bytes, float]:
        opened = await app.library.open(track)
        chunks = opened.chunk_range(0, opened.manifest.size - 1)
        assert len(chunks) == 7
        share.store = SlowChunks(share.store)  # type: ignore[assignment]
        got = bytearray()
        started = trio.current_time()
        first = await app.library.chunk(opened, 0)
        async with trio.open_nursery() as nursery:
            window = app.library.window(nursery, opened, chunks)
            chunk = first
            for index in chunks[:stop_after]:
                if index:
                    chunk = await window.take(index)
                got += chunk.view(0, chunk.length)  # type: ignore[union-attr]
                chunk.release()
                await trio.sleep(0.2)  # sending it to a player
            window.close()
            nursery.cancel_scope.cancel()
        share.store = share.store._store  # type: ignore[attr-defined]
        return bytes(got), trio.current_time() - started

    got, seconds = trio.run(stream, 7)
    assert got == original
    # Reads (0.2 s each) overlap the sends (0.2 s each): one read, then about one step each.
    assert seconds < 7 * 0.2 + 0.2 + 0.6, seconds
    assert app.library._read_ahead.free == budget  # every chunk read ahead was taken or freed

    got, _ = trio.run(stream, 3)  # a player that leaves early
    assert got == original[:len(got)] and len(got) == 3 * 262144
    assert app.library._read_ahead.free == budget
