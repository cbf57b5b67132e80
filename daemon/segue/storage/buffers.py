"""Reusable chunk-sized buffers, for chunks that are sent once and not kept.

Allocating a fresh 256 KiB object per chunk costs more than decrypting it (the allocator maps
and faults in new pages every time), so with the chunk cache off chunks are decrypted into
buffers that are handed back and reused. Reuse is safe here because these bytes reach the
socket by copy (sendmsg), never by reference; chunks the cache keeps go into write-once pages
instead (pages.py), which are sent by reference. Worker threads take buffers and the event
loop returns them; deque's append and pop are atomic, so no lock is needed.
"""

from __future__ import annotations

from collections import deque


class BufferPool:
    """Hands out bytearrays of one size; keeps at most `keep` returned ones for reuse."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self._free: deque[bytearray] = deque(maxlen=keep)

    def take(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.size)

    def give_back(self, buf: bytearray) -> None:
        if len(buf) == self.size:
            self._free.append(buf)


class Lease:
    """`length` bytes of plaintext in a pooled buffer, shared by reference count.

    Whoever holds a Lease holds one reference: `share` takes another (the chunk cache and each
    stream sending the chunk hold one each) and `release` gives one back. The buffer returns to
    its pool with the last reference. References are counted on the event loop's thread only;
    a worker thread creates the Lease (one reference) and hands it over.

    `held` is the size of the buffer, which is what holding the Lease costs in memory: a short
    last chunk still pins a whole chunk-sized buffer.
    """

    __slots__ = ("_buf", "_pool", "_refs", "held", "length")

    def __init__(self, buf: bytearray, length: int, pool: BufferPool) -> None:
        self._buf: bytearray | None = buf
        self.length = length
        self.held = len(buf)
        self._pool = pool
        self._refs = 1

    def view(self, start: int, stop: int) -> memoryview:
        if self._buf is None:
            raise ValueError("buffer already released")
        return memoryview(self._buf)[start:min(stop, self.length)]

    def share(self) -> Lease:
        if self._buf is None:
            raise ValueError("buffer already released")
        self._refs += 1
        return self

    def release(self) -> None:
        """Give one reference back; the caller must hold no view of the buffer any more."""
        if self._buf is None:
            return
        self._refs -= 1
        if self._refs == 0:
            self._pool.give_back(self._buf)
            self._buf = None
