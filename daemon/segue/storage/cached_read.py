"""Reading a chunk file only when the kernel holds all of it: no I/O, so no wait.

A chunk on a local filesystem whose bytes are in the page cache takes ~15 us to read and ~30 us
to decrypt, while a worker-thread hop for it costs several hundred microseconds of CPU on a busy
core (the event loop and the worker take turns for the core and for the GIL). So the event loop
reads such chunks itself, and only those. Each step below exists because without it the loop
could wait on a disk, a server or a daemon:

- The share's probe (in a thread, at start and every few seconds: follow()) finds the root on
  a local filesystem (ext4, XFS, Btrfs, F2FS, bcachefs; on NFS, FUSE or CIFS even open() may ask
  a server) and tries the whole read below on the store marker it has just read (tmpfs and ZFS,
  for instance, refuse RWF_NOWAIT). It remembers the root's mount id; a failed probe, or a
  share marked down, turns the reads off.
- Each read opens the root with O_PATH (no filesystem code runs for that) and
  openat2(RESOLVE_CACHED), and checks with statx(AT_STATX_DONT_SYNC) that it is still that
  mount (its unique mount id from Linux 6.8; before, an id the next mount may reuse):
  something mounted on the root since the probe (a network share) is never opened. No
  descriptor is held between reads, so the node never keeps a disk from being unmounted.
- The chunk is opened below it with openat2(RESOLVE_NO_XDEV | RESOLVE_CACHED): no crossing into
  another mount, and every name already in the dentry cache with no need of revalidation (else
  EAGAIN). O_NOATIME, unless the mount has noatime: an atime update is an inode write, which
  can wait on the journal. Not the owner of the file (EPERM): a thread reads it.
- cachestat(2) must show every page of the file in the page cache: preadv2(RWF_NOWAIT) alone
  returns EAGAIN on a miss, but only after starting read-ahead I/O from the caller's thread.
- The bytes are read with preadv2(RWF_NOWAIT). A file unlinked since (a track packed again) is
  closed in a thread: its last close frees the inode, which is I/O.

Anything else (a missing file, something other than a regular file, a short read) answers None,
and the caller reads in a worker thread as before, which is where failures are told apart and
reported.
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
import platform
import stat
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

log = structlog.get_logger("segue.storage.cached_read")

# openat2 and cachestat came after the system-call tables were unified: these numbers hold on
# every architecture but alpha, MIPS and ia64, where reads without a thread stay off.
_SYS_OPENAT2 = 437
_SYS_CACHESTAT = 451
_OTHER_NUMBERS = ("alpha", "mips", "ia64")
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_STATX_DONT_SYNC = 0x4000
_STATX_MNT_ID = 0x1000
_STATX_MNT_ID_UNIQUE = 0x4000  # Linux 6.8: never given to another mount (the other is reused)
_STATX_MNT_ID_OFFSET = 144  # of the u64 stx_mnt_id in struct statx
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_CACHED = 0x20
#: statfs f_type of the filesystems whose open() and cached reads never leave the machine.
LOCAL_FILESYSTEMS = {
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0xF2F52010: "f2fs",
    0xCA451A4E: "bcachefs",
}
# What says the kernel (or the unit's system-call filter) cannot do a step at all.
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class Unsupported(Exception):
    """Reads without a thread cannot be done here (the kernel, the filesystem, a system-call
    filter or the files' owner), and why."""


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _function(name: str, argtypes: list, restype: type = ctypes.c_int) -> Callable[..., int] | None:
    fn = getattr(_LIBC, name, None)
    if fn is None or not hasattr(os, "RWF_NOWAIT") or \
            platform.machine().startswith(_OTHER_NUMBERS):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


_syscall = _function("syscall", [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_size_t], ctypes.c_long)
_statx = _function("statx", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                             ctypes.c_void_p])
_fstatfs = _function("fstatfs", [ctypes.c_int, ctypes.c_void_p])


def filesystem_type(fd: int) -> int | None:
    """The statfs f_type of the filesystem `fd` is on (this may wait on a network one)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs, f_type (a C long) first
    if _fstatfs is None or _fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _how(flags: int, resolve: int) -> _OpenHow:
    return _OpenHow(flags | os.O_CLOEXEC, 0, resolve)


_ROOT_HOW = _how(os.O_PATH | os.O_DIRECTORY, _RESOLVE_CACHED)


def _openat2(dirfd: int, path: bytes, how: _OpenHow) -> int:
    """A descriptor, or -1 (errno in ctypes); Unsupported for a kernel or filter without it.
    (`how` is only read, by the kernel: one may serve every thread.)"""
    assert _syscall is not None
    fd = _syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        # EPERM is a system-call filter, or with O_NOATIME a file this user does not own.
        if err in _UNSUPPORTED or (err == errno.EPERM and not how.flags & os.O_NOATIME):
            raise Unsupported(f"openat2: {os.strerror(err)}")
    return fd


def _mount_id(fd: int) -> int:
    """The mount `fd` is on, from the inode's cached attributes (no server is asked)."""
    assert _statx is not None
    buf = ctypes.create_string_buffer(256)
    if _statx(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC,
              _STATX_MNT_ID | _STATX_MNT_ID_UNIQUE, buf) != 0:
        raise Unsupported(f"statx: {os.strerror(ctypes.get_errno())}")
    # The unique id where the kernel has it: the small one goes to the next mount made, so a
    # network share mounted on the root between two probes could otherwise pass for the disk.
    if not ctypes.c_uint32.from_buffer(buf).value & (_STATX_MNT_ID | _STATX_MNT_ID_UNIQUE):
        raise Unsupported("statx gives no mount id")
    return ctypes.c_uint64.from_buffer(buf, _STATX_MNT_ID_OFFSET).value


def _all_cached(fd: int, size: int) -> bool:
    assert _syscall is not None
    got = _CacheStat()
    if _syscall(_SYS_CACHESTAT, fd, ctypes.byref(_Range(0, size)), ctypes.byref(got), 0) != 0:
        raise Unsupported(f"cachestat: {os.strerror(ctypes.get_errno())}")
    return got.nr_cache >= math.ceil(size / mmap.PAGESIZE)


class CachedReader:
    """Reads whole files below `root` that the kernel holds in its caches, on the caller's
    thread; off until follow() has found the root able to."""

    def __init__(self, root: Path) -> None:
        self._root = os.fsencode(root)
        self._mount: int | None = None  # the root's mount, while reads may go on
        self._file_how = self._chunk_how(os.O_NOATIME)
        self._off_because = ""

    def follow(self, sample: bytes, size: int) -> None:
        """Look at the root as it is now (the share's probe, in a thread: this may wait), and
        read `sample` (a file of `size` bytes below it that was just read) the way chunks
        will be read: reads go on only if that works."""
        try:
            self._mount, why = self._examine(sample, size), ""
        except Unsupported as e:
            self._mount, why = None, str(e)
        self._say(why)

    def _examine(self, sample: bytes, size: int) -> int:
        """The root's mount id, once `sample` was read below it as chunks will be; Unsupported,
        saying why, when reads without a thread cannot be done there."""
        if _syscall is None or _statx is None:
            raise Unsupported("this platform lacks openat2, statx or RWF_NOWAIT")
        try:
            fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise Unsupported(f"cannot open the root: {e.strerror}") from None
        try:
            kind = filesystem_type(fd)
            if kind not in LOCAL_FILESYSTEMS:
                raise Unsupported(f"not a local filesystem (statfs type {kind or 0:#x})")
            noatime = os.fstatvfs(fd).f_flag & os.ST_NOATIME
            self._file_how = self._chunk_how(0 if noatime else os.O_NOATIME)
            mount = _mount_id(fd)
        finally:
            os.close(fd)
        if self._read(mount, sample, bytearray(size + 1)) != size:
            why = "the store marker could not be read this way"
            if not noatime and os.geteuid() != 0:
                why += " (O_NOATIME needs the files to be this user's; or mount with noatime)"
            raise Unsupported(why)
        return mount

    def stop(self) -> None:
        """The share failed its probe: no reads without a thread until one passes."""
        self._mount = None

    def read(self, rel: bytes, buf: bytearray) -> int | None:
        """The length of the regular file at `rel` below the root, read whole into `buf`, when
        that needs neither I/O nor a wait; None otherwise, and for a file of len(buf) bytes or
        more (the caller's usual read refuses it)."""
        mount = self._mount
        if mount is None:
            return None
        try:
            return self._read(mount, rel, buf)
        except Unsupported as e:
            self._mount = None
            self._say(str(e))
            return None

    def _read(self, mount: int, rel: bytes, buf: bytearray) -> int | None:
        root = _openat2(_AT_FDCWD, self._root, _ROOT_HOW)
        if root < 0:
            return None
        try:
            if _mount_id(root) != mount:
                return None
            return self._read_below(root, rel, buf)
        finally:
            os.close(root)  # an O_PATH descriptor: closing it runs no filesystem code

    def _read_below(self, root: int, rel: bytes, buf: bytearray) -> int | None:
        fd = _openat2(root, rel, self._file_how)
        if fd < 0:
            return None
        unlinked = False
        try:
            st = os.fstat(fd)
            unlinked = st.st_nlink == 0
            size = st.st_size
            if unlinked or not stat.S_ISREG(st.st_mode) or size >= len(buf) or \
                    not _all_cached(fd, size):
                return None
            length = os.preadv(fd, (buf,), 0, os.RWF_NOWAIT)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                raise Unsupported(f"preadv2 RWF_NOWAIT: {e.strerror}") from None
            return None  # EAGAIN: evicted since cachestat
        finally:
            if unlinked:
                trio.lowlevel.start_thread_soon(lambda: os.close(fd), lambda _: None)
            else:
                os.close(fd)
        return length if length == size else None

    @staticmethod
    def _chunk_how(atime_flag: int) -> _OpenHow:
        # O_NONBLOCK: a FIFO with no writer opens at once (and is refused as not a file).
        return _how(os.O_RDONLY | os.O_NONBLOCK | atime_flag, _RESOLVE_NO_XDEV | _RESOLVE_CACHED)

    def _say(self, why: str) -> None:
        """Log when reads without a thread turn off or on again, not at every probe."""
        if why != self._off_because:
            if why:
                log.info("chunk reads without a thread off", root=os.fsdecode(self._root),
                         reason=why)
            else:
                log.info("chunk reads without a thread on", root=os.fsdecode(self._root))
            self._off_because = why
