"""Reading a chunk file only when the kernel holds all of it: no I/O, so no wait.

A chunk on a local filesystem whose bytes are in the page cache takes ~15 us to read and ~30 us
to decrypt, while a worker-thread hop for it costs several hundred microseconds of CPU on a busy
core (the event loop and the worker take turns for the core and for the GIL). So the event loop
reads such chunks itself, and only those:

- the store's root must be on a local filesystem (ext4, XFS, Btrfs, tmpfs, F2FS, ZFS,
  bcachefs), told by fstatfs in a thread whenever the share is probed (follow()); on a network
  filesystem an open() itself may ask the server, and on FUSE a daemon, either of which can hang.
- the file is opened below that root with openat2(RESOLVE_NO_XDEV | RESOLVE_CACHED): the path may
  not cross into another mount (a share mounted further down), and every component of it must
  be in the kernel's dentry cache with no need of revalidation (else EAGAIN).
- the bytes are read with preadv2(RWF_NOWAIT), which fails with EAGAIN unless they are all in
  the page cache.

Anything else (a missing file, something other than a regular file, a short read) answers None,
and the caller reads in a worker thread as before, which is where failures are told apart and
reported. A kernel or a seccomp filter without openat2 or these flags turns this off for good.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

_SYS_OPENAT2 = 437  # one number on every architecture: openat2 came after they were unified
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_CACHED = 0x20
# What says this kernel (or the unit's system-call filter) cannot do it at all.
_UNSUPPORTED = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG}
#: statfs f_type of the filesystems whose open() and cached reads never leave the machine.
LOCAL_FILESYSTEMS = {
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
    0xF2F52010: "f2fs", 0x2FC12FC1: "zfs", 0xCA451A4E: "bcachefs",
}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


# O_NONBLOCK: a FIFO with no writer opens at once (and is then refused as not a regular file).
_HOW = _OpenHow(os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, 0,
                _RESOLVE_NO_XDEV | _RESOLVE_CACHED)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _openat2(libc: ctypes.CDLL | None) -> Callable[..., int] | None:
    fn = getattr(libc, "syscall", None)
    if fn is None or not hasattr(os, "RWF_NOWAIT"):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                   ctypes.c_size_t]
    return fn


def filesystem_type(fd: int) -> int | None:
    """The statfs f_type of the filesystem `fd` is on (blocking on a network filesystem)."""
    libc = _libc()
    fstatfs = getattr(libc, "fstatfs", None)
    if fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs, f_type (a C long) first
    if fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class CachedReader:
    """Reads whole files below one root that the kernel holds in its caches, on the caller's
    thread; off until follow() has found the root on a local filesystem. Holds one O_PATH
    descriptor of the root from then on (a share's store lives as long as its node)."""

    def __init__(self) -> None:
        self._syscall = _openat2(_libc())
        self._how = ctypes.byref(_HOW)
        self._lock = threading.Lock()  # the root's descriptor: read on the loop, set in threads
        self._root = -1

    @property
    def enabled(self) -> bool:
        return self._root >= 0 and self._syscall is not None

    def follow(self, root: Path) -> None:
        """Read below what `root` is now (the share's probe, in a thread: this may wait): a
        share mounted on it since the last call is seen, and a network one turns reads off."""
        try:
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0 and filesystem_type(fd) not in LOCAL_FILESYSTEMS:
            os.close(fd)
            fd = -1
        with self._lock:
            old, self._root = self._root, fd
        if old >= 0:  # no read uses it any more: they take the lock
            os.close(old)

    def read(self, rel: bytes, buf: bytearray) -> int | None:
        """The length of the regular file at `rel` below the root, read whole into `buf`, when
        that needs neither I/O nor a wait; None otherwise, and for a file of len(buf) bytes or
        more (the caller's usual read refuses it)."""
        if self._syscall is None:
            return None
        with self._lock:
            if self._root < 0:
                return None
            fd = self._syscall(_SYS_OPENAT2, self._root, rel, self._how, ctypes.sizeof(_HOW))
        if fd < 0:
            if ctypes.get_errno() in _UNSUPPORTED:
                self._syscall = None
            return None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode) or size >= len(buf):
                return None
            length = os.preadv(fd, (buf,), 0, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not all in the page cache; EOPNOTSUPP: cannot tell
            return None
        finally:
            os.close(fd)
        return length if length == size else None
