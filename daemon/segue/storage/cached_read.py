"""Reading a chunk file only when the kernel holds all of it: no I/O, so no wait.

A chunk on a local filesystem whose bytes are in the page cache takes ~15 us to read and ~30 us
to decrypt, while a worker-thread hop for it costs several hundred microseconds of CPU on a busy
core (the event loop and the worker take turns for the core and for the GIL). So the event loop
reads such chunks itself, and only those:

- the name is resolved with openat2(RESOLVE_CACHED), which fails with EAGAIN unless every
  component of the path is in the kernel's dentry cache and needs no revalidation. A network
  filesystem (CIFS) revalidates its names, so on a CIFS mount this step always fails: a hung
  server can never hold the event loop.
- the bytes are read with preadv2(RWF_NOWAIT), which fails with EAGAIN unless they are all in
  the page cache (and with EOPNOTSUPP where the filesystem cannot promise that).

Anything else (a missing file, something other than a regular file, a short read) answers None,
and the caller reads in a worker thread as before, which is where failures are told apart and
reported. A kernel or a seccomp filter without openat2 or RESOLVE_CACHED turns this off for the
process's life.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

_SYS_OPENAT2 = 437  # one number on every architecture: openat2 came after they were unified
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20
# What says this kernel (or the unit's system-call filter) cannot do it at all.
_UNSUPPORTED = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


# O_NONBLOCK: a FIFO with no writer opens at once (and is then refused as not a regular file).
_HOW = _OpenHow(os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, 0, _RESOLVE_CACHED)


def _load_syscall() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                   ctypes.c_size_t]
    return fn


class CachedReader:
    """Reads whole files that the kernel holds in its caches, on the caller's thread."""

    def __init__(self) -> None:
        self._syscall = _load_syscall() if hasattr(os, "RWF_NOWAIT") else None
        self._how = ctypes.byref(_HOW)

    @property
    def enabled(self) -> bool:
        return self._syscall is not None

    def read(self, path: bytes, buf: bytearray) -> int | None:
        """The length of the regular file at `path`, read whole into `buf`, when that needs
        neither I/O nor a wait; None otherwise, and for a file of len(buf) bytes or more (the
        caller's usual read refuses it)."""
        if self._syscall is None:
            return None
        fd = self._syscall(_SYS_OPENAT2, _AT_FDCWD, path, self._how, ctypes.sizeof(_HOW))
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
