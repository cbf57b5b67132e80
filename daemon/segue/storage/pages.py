"""Verified plaintext in write-once pages: one sealed memfd per chunk, sent with sendfile.

The worker thread that read a chunk decrypts it into its own buffer and, once the tag verified,
writes the plaintext once into a new memfd, which it seals against writing, shrinking and
growing (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW) before it hands it to the event loop. A
chunk whose tag fails never reaches a memfd. (Decrypting into a mapping of the memfd instead
saves the write's copy but not its page allocation, and the mmap, faults and munmap made it
slower here: 390 against 185 us a 256 KiB chunk, decryption included.)

Only chunks the cache keeps become Pages. A fresh memfd costs the kernel a page allocation (and
later a free) for every 4 KiB, about 100 us a 256 KiB chunk on the 2-core VM of issue 15, while
sendfile from it cost as much CPU as copying the same bytes into the socket: for a chunk sent
once, with the cache off, that made every cold request dearer. Those go out from a reused
buffer by copy (buffers.py), which is safe to reuse for that very reason.

Why this makes zero-copy sending safe: `sendfile` to a TCP socket leaves the kernel holding
references to the file's pages until the peer acknowledges the bytes, so a page that was
rewritten meanwhile would go out with its new contents (another track's plaintext). These pages
are never written again after they are verified: the seal makes the kernel refuse any write,
and eviction does not reuse them, it closes the memfd. Closing drops the file's references;
the pages still referenced by segments in flight stay as they are until the kernel lets go of
them, and new chunks always get new pages. docs/security.md says the same for reviewers.

A Page is shared by reference count, as the cache and every stream sending it hold it at once;
the memfd is closed with the last reference, never before, so its descriptor number cannot be
reused for another file under a stream still sending from it.
"""

from __future__ import annotations

import fcntl
import mmap
import os

from segue.storage.buffers import Lease

#: Seals that make a verified page immutable for as long as it exists.
_WRITE_ONCE = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_MEMFD_FLAGS = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING


class Page:
    """`length` bytes of verified plaintext in a sealed memfd (`fd`), by reference count.

    `held` is the memory the page pins: its length rounded up to whole pages (a short last
    chunk pins its own few pages, never a whole chunk's buffer).
    """

    __slots__ = ("_refs", "fd", "held", "length")

    def __init__(self, fd: int, length: int) -> None:
        self.fd = fd
        self.length = length
        self.held = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
        self._refs = 1

    def share(self) -> Page:
        if self._refs <= 0:
            raise ValueError("page already released")
        self._refs += 1
        return self

    def release(self) -> None:
        """Give one reference back; the memfd closes with the last one."""
        if self._refs <= 0:
            return
        self._refs -= 1
        if self._refs == 0:
            os.close(self.fd)

    def read(self, start: int, stop: int) -> bytes:
        """A copy of bytes start..stop (for TLS, which encrypts in user space, and tests)."""
        if self._refs <= 0:
            raise ValueError("page already released")
        return os.pread(self.fd, min(stop, self.length) - start, start)


#: A verified chunk as the event loop gets it: a write-once Page when the cache keeps it, a
#: pooled buffer (buffers.Lease) when it is sent once and forgotten.
Chunk = Page | Lease


def write_once(plaintext: memoryview) -> Page:
    """A sealed Page holding a copy of `plaintext`, which must be verified already.

    Blocking (the kernel allocates the pages): call it in a worker thread.
    """
    fd = os.memfd_create("segue-chunk", _MEMFD_FLAGS)
    try:
        written = 0
        while written < len(plaintext):
            written += os.write(fd, plaintext[written:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _WRITE_ONCE)
    except BaseException:
        os.close(fd)
        raise
    return Page(fd, written)
